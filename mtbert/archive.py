"""``mtbert archive SOURCE... DEST``: the evidence of finished runs, without their checkpoints.

A run folder holds hundreds of megabytes of checkpoints next to a few hundred kilobytes that
``mtbert compare`` reads and that say how to reproduce the run:
``run.json`` (recipe, seed, versions, data files and their SHA-1), ``recipe.toml``,
``metrics.json``/``metrics.jsonl`` and the dev predictions in ``predictions/``. An archive
copies exactly those, so a campaign's results can be committed, mailed or kept after the run
folders are deleted, and ``mtbert compare`` still gives its intervals from the archive (the dev
labels come from the data files ``run.json`` names, or from ``$MTBERT_DATA_DIR``).

Each SOURCE is a run folder or a folder holding run folders (a sweep's ``--out``, a campaign);
it lands as ``DEST/<SOURCE's name>/...`` with its inner layout kept. Files already in DEST are
never overwritten unless ``force``; checkpoints, TensorBoard events (unless ``tensorboard``),
locks and temporary files are left out.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any, Callable

from mtbert.errors import MtbertError

#: Files of a run folder's top level an archive keeps.
RUN_FILES = ("run.json", "recipe.toml", "metrics.json", "metrics.jsonl", "eval.json", "evals.jsonl")
#: Files of a sweep folder's top level an archive keeps (its plan and summary).
SWEEP_FILES = ("sweep.json", "compare.md", "pbt.json")


def find_runs(source: Path) -> list[Path]:
    """The run folders (folders with a ``run.json``) at or under ``source``, sorted; an
    ensemble's (``train.ensemble``) with its members."""
    if (source / "run.json").is_file():
        members = source / "members"
        return [source] + (sorted(p.parent for p in members.glob("*/run.json")) if members.is_dir() else [])
    return sorted(p.parent for p in source.rglob("run.json") if "checkpoints" not in p.parts)


def test_prediction_files(run: Path, registry: Any) -> set[str]:
    """The names the run's tasks give their test predictions (their specs name them; a task no
    installed plugin knows names none, so its files are kept)."""
    try:
        tasks = tomllib.loads((run / "recipe.toml").read_text(encoding="utf-8")).get("tasks") or {}
    except (OSError, tomllib.TOMLDecodeError):
        return set()
    names = set()
    for task in tasks:
        component = registry.find("task", task) if registry is not None else None
        if component is not None:
            names.add(component.factory.prediction_filename("test"))
    return names


def _evidence(run: Path, *, tensorboard: bool, test_predictions: bool, registry: Any) -> list[Path]:
    files = [run / name for name in RUN_FILES if (run / name).is_file()]
    predictions = run / "predictions"
    if predictions.is_dir():
        left_out = set() if test_predictions else test_prediction_files(run, registry)
        files += sorted(p for p in predictions.iterdir()
                        if p.is_file() and not p.name.startswith(".") and p.name not in left_out)
    if tensorboard:
        files += sorted(run.glob("events.out.tfevents.*"))
    return files


def plan_archive(sources: list[Path], dest: Path, *, tensorboard: bool = False, test_predictions: bool = False,
                 registry: Any = None) -> list[tuple[Path, Path]]:
    """``(file, its copy)`` for every file the archive of ``sources`` holds (``registry``: the
    installed plugins, which name each task's test-prediction file)."""
    plan: list[tuple[Path, Path]] = []
    for source in sources:
        if not source.is_dir():
            raise MtbertError(f"{source}: not a folder")
        runs = find_runs(source)
        if not runs:
            raise MtbertError(f"{source}: no run folder (no run.json) at or under it")
        root = dest / source.resolve().name
        for run in runs:
            for path in _evidence(run, tensorboard=tensorboard, test_predictions=test_predictions, registry=registry):
                plan.append((path, root / path.relative_to(source)))
        for name in SWEEP_FILES:  # a sweep's own plan and summary, where it has them
            for path in sorted(source.rglob(name)):
                if "checkpoints" not in path.parts and not (path.parent / "run.json").is_file():
                    plan.append((path, root / path.relative_to(source)))
    return plan


def archive_runs(sources: list[Path], dest: Path, *, tensorboard: bool = False, test_predictions: bool = False,
                 force: bool = False, registry: Any = None, say: Callable[[str], None] = lambda line: None) -> list[Path]:
    """Copy the evidence of the runs in ``sources`` into ``dest``; returns the run folders archived.

    Checks every destination before copying anything, so a refused archive writes nothing.
    """
    plan = plan_archive(sources, dest, tensorboard=tensorboard, test_predictions=test_predictions, registry=registry)
    if not force:
        clash = [copy for _, copy in plan if copy.exists()]
        if clash:
            more = f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""
            raise MtbertError(f"{clash[0]}: exists{more}; archive into another folder or pass --force to overwrite")
    runs: list[Path] = []
    for path, copy in plan:
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        if path.name == "run.json":
            runs.append(copy.parent)
            say(f"archived {path.parent} -> {copy.parent}")
    return runs
