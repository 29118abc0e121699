"""Ensembles (``train.ensemble = N``): N complete runs of one recipe, predicting with their mean output.

Why: one fine-tuned encoder's dev scores move by several thousandths from seed to seed
(RESULTS.md); the mean of the raw outputs (logits, scores) of models fine-tuned from different
seeds averages much of that variance away. It costs N times the training and prediction.

The ensemble's run folder (README.md, "Ensembles"):

* ``members/<k>/`` (k = 1..N): each a complete run folder (run.json, metrics, TensorBoard,
  checkpoints, its own predictions). Member 1 trains with the recipe's seed, so it *is* the
  single run of that seed; member k > 1 with ``derive_seed(seed, "ensemble", k)``.
* ``recipe.toml`` (resolved, with ``train.ensemble``), ``run.json`` (status, times, the data
  files, each member's seed and best dev scores), ``metrics.json`` and ``metrics.jsonl`` (the
  ensemble's dev evaluation, stage ``ensemble``), ``predictions/`` (dev and test, from the
  mean output) and TensorBoard scalars ``ensemble/<metric>``.

``mtbert resume RUN`` keeps finished members, resumes an interrupted one and starts the rest.
``mtbert eval`` / ``predict`` / ``compare`` read RUN as one model (the mean of the members' best
checkpoints: :class:`mtbert.engine.restore.EnsembleModel`); ``mtbert export`` takes one member.
Members train one after another in one process; under torchrun the recipe is refused.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import attrs

from mtbert.engine.evaluate import evaluate
from mtbert.engine.restore import load_splits, member_folders, restore_run
from mtbert.engine.run_records import RunLog, data_hashes, is_resumable, now, run_status, same_recipe
from mtbert.engine.runfolder import RunLock, claim_run_folder, folder_holds_files, set_aside
from mtbert.engine.seeding import derive_seed
from mtbert.errors import MtbertError, RecipeError, RunInterrupted
from mtbert.files import WriteError, atomic_write_json, atomic_write_text
from mtbert.version import __version__

RunSingle = Callable[..., tuple[Path, dict[str, Any]]]


def member_seed(seed: int, index: int) -> int:
    """Member 1 keeps the recipe's seed; the others get seeds derived from it (stable, distinct)."""
    return seed if index == 1 else derive_seed(seed, "ensemble", index)


def member_recipe(recipe: Any, index: int) -> Any:
    """The recipe member ``index`` trains: one model (``train.ensemble = 1``) with its own seed."""
    return attrs.evolve(recipe, seed=member_seed(recipe.seed, index), train=attrs.evolve(recipe.train, ensemble=1))


def run_ensemble(
    recipe: Any, plugins: Any, *, out: Path | None, resume: bool, say: Callable[[str], None],
    warn: Callable[[str], None] | None, allow_data_change: bool, run_single: RunSingle,
) -> tuple[Path, dict[str, Any]]:
    """Train (or finish) every member, then evaluate and predict with their mean output."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise RecipeError("train.ensemble: an ensemble trains its members one after another in one process; "
                          "run it without torchrun, or set train.ensemble = 1")
    locks: list[RunLock] = []
    try:
        folder, _ = claim_run_folder(recipe, plugins, out=out, resume=resume, allow_data_change=allow_data_change,
                                     say=say, warn=warn or say, locks=locks)
        return _train_and_combine(recipe, plugins, folder, resume, say, warn, allow_data_change, run_single)
    finally:
        for lock in locks:
            lock.release()


def _train_and_combine(recipe: Any, plugins: Any, folder: Path, resume: bool, say: Callable[[str], None],
                       warn: Callable[[str], None] | None, allow_data_change: bool,
                       run_single: RunSingle) -> tuple[Path, dict[str, Any]]:
    previous = _read_json(folder / "run.json") if resume else {}
    started = previous.get("started", now())
    count = recipe.train.ensemble
    if not resume:
        atomic_write_text(folder / "recipe.toml", recipe.to_toml())
    info = {"mtbert_version": __version__, "recipe": recipe.name, "recipe_source": recipe.source, "seed": recipe.seed,
            "status": "running", "started": started, "data": data_hashes(recipe),
            "ensemble": {"members": count}, "resumes": int(previous.get("resumes", -1)) + 1 if resume else 0}
    atomic_write_json(folder / "run.json", info)
    t0 = time.perf_counter()
    status = "failed"
    members: list[dict[str, Any]] = []
    info["ensemble"]["runs"] = members  # filled as members finish, so an interrupted run.json shows them
    try:
        for index, member_folder in enumerate(member_folders(folder, count), 1):
            say(f"[ensemble member {index}/{count}] seed {member_seed(recipe.seed, index)} -> {member_folder}")
            members.append(_run_member(member_recipe(recipe, index), plugins, member_folder, say, warn, allow_data_change,
                                       run_single, index, folder))
        summary = _combine(folder, recipe, plugins, say, warn)
        status = "finished"
        return folder, summary
    except RunInterrupted as exc:
        status = "interrupted"
        raise RunInterrupted(f"{exc}; or continue the whole ensemble with: mtbert resume {folder}") from None
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        spent = sum(float(_read_json(m / "run.json").get("train_seconds") or 0) for m in member_folders(folder, count))
        try:
            atomic_write_json(folder / "run.json", {**info, "status": status, "finished": now(), "train_seconds": spent,
                                                    "wall_seconds": float(previous.get("wall_seconds", 0)) + time.perf_counter() - t0})
        except (OSError, WriteError) as exc:  # must not hide the error that ended the ensemble
            (warn or say)(f"warning: cannot write {folder / 'run.json'}: {exc}")


def _run_member(recipe: Any, plugins: Any, folder: Path, say: Callable[[str], None], warn: Callable[[str], None] | None,
                allow_data_change: bool, run_single: RunSingle, index: int, parent: Path) -> dict[str, Any]:
    """Skip a finished member, resume an interrupted one, else train it; what run.json records of it."""
    holds_files = folder_holds_files(folder)
    if holds_files and run_status(folder) == "finished":
        if not same_recipe(folder, recipe, plugins):
            raise MtbertError(f"{folder} holds a finished run of another recipe; remove it or choose another --out "
                              f"than {parent}")
        say(f"  finished earlier: {folder}")
        summary = _read_json(folder / "metrics.json")
    else:
        resume = holds_files and is_resumable(folder)
        if holds_files and not resume:  # it died before its first save: keep what it wrote, start again
            aside = set_aside(folder)
            say(f"  moved the member's unfinished first attempt aside: {aside}")
        try:
            _, summary = run_single(recipe, plugins, out=folder, resume=resume, say=say, warn=warn,
                                    allow_data_change=allow_data_change)
        except RunInterrupted:
            raise
        except MtbertError as exc:
            raise MtbertError(f"ensemble member {index} ({folder}): {exc}") from None
    best = summary.get("best") or {}
    return {"folder": str(folder.relative_to(parent)), "seed": recipe.seed, "best_epoch": best.get("epoch"),
            "dev": best.get("dev")}


def _combine(folder: Path, recipe: Any, plugins: Any, say: Callable[[str], None],
             warn: Callable[[str], None] | None) -> dict[str, Any]:
    """Evaluate the members' mean output on dev; write the metrics, predictions and TensorBoard scalars."""
    restored = restore_run(folder, [], plugins)
    splits = ("dev", "test") if recipe.train.predict else ("dev",)
    load_splits(restored, splits, warn=warn or say, optional=("test",))
    options = dict(device=restored.device, precision=recipe.train.precision, batch_size=recipe.data.eval_batch_size)
    t0 = time.perf_counter()
    metrics, dev_outputs = evaluate(restored.model, restored.tasks, "dev", **options)
    record = {"stage": "ensemble", "stage_index": 0, "epoch": 1, "step": 0, "split": "dev", "time": now(),
              "eval_seconds": round(time.perf_counter() - t0, 3), "members": recipe.train.ensemble, "metrics": metrics}
    atomic_write_text(folder / "metrics.jsonl", json.dumps(record) + "\n")
    best = {"stage": "ensemble", "epoch": 1, "step": 0, "dev": metrics}
    summary = {"best": best, "last": best}
    atomic_write_json(folder / "metrics.json", summary)
    log = RunLog(folder, say)
    try:
        log.scalars("ensemble", metrics, 0)
    finally:
        log.close()
    shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in ("mean",) or k.endswith(("_acc", "_pearson")))
    say(f"[ensemble of {recipe.train.ensemble}] dev {shown}")
    if recipe.train.predict:
        for split in splits:
            outputs = dev_outputs if split == "dev" else evaluate(restored.model, restored.tasks, split, **options)[1]
            for name, (ids, predictions) in outputs.items():
                spec = restored.tasks[name].spec
                spec.write_predictions(folder / "predictions" / spec.prediction_filename(split), ids, predictions)
        say(f"predictions written to {folder / 'predictions'}")
    return summary


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
