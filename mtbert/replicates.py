"""Replicates: runs of one recipe with different seeds, pooled into one row of ``mtbert compare``.

Two finished runs are replicates when their resolved recipes are equal except for ``seed`` (and
the keys that never change what a run computes: names, ``data.dir``, device, threads,
progress). A run that has not finished (interrupted, failed) is always a row of its own: its
scores are not final. A row's score is the mean over its runs with the sample standard deviation
beside it; its interval against a baseline comes from :mod:`mtbert.bootstrap`, reading the dev
predictions each run folder keeps (``predictions/``) and the gold labels of the dev files
``run.json`` names.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import attrs

from mtbert.recipe.keys import RESULT_NEUTRAL_KEYS

#: Recipe keys that do not tell replicates apart (``seed`` is what varies between them).
NOT_COMPARED = RESULT_NEUTRAL_KEYS | {"seed"}


@attrs.define
class Row:
    """One row of the compare table: one run or several replicates of the same recipe."""

    records: list[Any]  # mtbert.compare.RunRecord, in the order given

    @property
    def first(self) -> Any:
        return self.records[0]

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def name(self) -> str:
        """The runs' common name: the folder name without its ``seed=N`` part when all agree.

        Ensemble members (``RUN/members/<k>``) are named by their ensembles, so the members of
        ``best-seed=11711`` and ``best-seed=1`` pool as "best (members)", not "1, 2, 3, 1, 2, 3".
        """
        if self.n == 1:
            return self.first.name
        stripped = {_without_seed(r.name) for r in self.records}
        if len(stripped) == 1:
            return stripped.pop()
        if all(r.folder.parent.name == "members" for r in self.records):
            owners = {_without_seed(r.folder.parent.parent.name) for r in self.records}
            return f"{', '.join(sorted(owners))} (members)"
        return ", ".join(r.name for r in self.records)

    def values(self, metric: str) -> list[float]:
        return [float(r.best["dev"][metric]) for r in self.records if metric in r.best["dev"]]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return sum(values) / len(values) if values else None

    def std(self, metric: str) -> float | None:
        """Sample standard deviation over the runs (None with fewer than two)."""
        values = self.values(metric)
        if len(values) < 2:
            return None
        mean = sum(values) / len(values)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))

    @property
    def seconds(self) -> float | None:
        known = [r.seconds for r in self.records if r.seconds is not None]
        return sum(known) / len(known) if known else None

    @property
    def status(self) -> str:
        statuses = [r.status for r in self.records]
        if len(set(statuses)) == 1:
            return statuses[0]
        return ", ".join(f"{s}×{statuses.count(s)}" for s in dict.fromkeys(statuses))

    @property
    def epochs(self) -> str:
        """Each replicate's best epoch; an ensemble (``train.ensemble``) has none of its own:
        its one evaluation is of the members' mean output, each member at its own best epoch."""
        return ",".join("ensemble" if r.best.get("stage") == "ensemble" else str(r.best.get("epoch", "—"))
                        for r in self.records)


def _without_seed(name: str) -> str:
    """A run folder's name without its ``seed=N`` part (a sweep's ``<variant>-seed=N``)."""
    return re.sub(r"-?seed=\d+", "", name) or name


def _identity(record: Any, flatten: Any) -> str:
    flat = {k: v for k, v in flatten(record.recipe).items() if k not in NOT_COMPARED}
    return json.dumps(flat, sort_keys=True, default=str)


def pool(records: list[Any], flatten: Any) -> list[Row]:
    """Group finished runs whose recipes differ only in ``seed``; rows in the order of first appearance."""
    rows: list[Row] = []
    by_identity: dict[str, Row] = {}
    for record in records:
        if record.status != "finished":
            rows.append(Row([record]))
            continue
        key = _identity(record, flatten)
        if key in by_identity:
            by_identity[key].records.append(record)
        else:
            by_identity[key] = Row([record])
            rows.append(by_identity[key])
    return rows


# --------------------------------------------------------------------------- predictions
def _run_predictions(record: Any, registry: Any) -> dict[str, tuple[Any, dict[str, float]]]:
    """``task -> (spec, {example id: prediction})`` from the run's ``predictions/`` dev files."""
    out: dict[str, tuple[Any, dict[str, float]]] = {}
    for task in (record.recipe.get("tasks") or {}):
        component = registry.find("task", task)
        if component is None:
            continue
        spec = component.factory
        path = record.folder / "predictions" / spec.prediction_filename("dev")
        if not path.is_file():
            continue
        ids, values = spec.read_predictions(path)
        out[task] = (spec, dict(zip(ids, (float(v) for v in values))))
    return out


def dev_file(record_folder: Path, task: str) -> Path | None:
    """The dev file a run's ``run.json`` names for ``task``, or the file of that name and SHA-1 in
    ``$MTBERT_DATA_DIR`` when the recorded path is gone (an archive read on another machine)."""
    from mtbert.files import file_sha1
    from mtbert.recipe.sections import DATA_DIR_ENV

    try:
        info = json.loads((record_folder / "run.json").read_text(encoding="utf-8"))
        entry = info["data"][task]
        path = Path(entry["dev"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if path.is_file():
        return path
    folder = os.environ.get(DATA_DIR_ENV)
    if not folder or not (Path(folder) / path.name).is_file():
        return None
    moved = Path(folder) / path.name
    recorded = entry.get("dev_sha1") if isinstance(entry, dict) else None
    if recorded and file_sha1(moved) != recorded:
        return None  # a file of that name with other rows: its labels would not be this run's
    return moved


def _gold(record: Any, spec: Any, cache: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """The dev labels by example id, from the run's dev file (:func:`dev_file`; None when unreadable)."""
    path = dev_file(record.folder, spec.name)
    if path is None:
        return None
    if str(path) not in cache:
        result = spec.read(path, "dev", warn=lambda message: None)
        cache[str(path)] = {e.id: float(e.label) for e in result.examples if e.label is not None}
    return cache[str(path)]


def load_row_predictions(rows: list[Row], registry: Any) -> tuple[dict[int, dict[str, tuple[Any, dict[str, float], list[dict[str, float]]]]], list[str]]:
    """Per row (by index): ``task -> (spec, gold by id, each run's predictions by id)``; and notes.

    A row keeps a task only when every one of its runs has that task's dev predictions and the
    gold labels can be read; the notes say what was missing.
    """
    cache: dict[str, dict[str, float]] = {}
    out: dict[int, dict[str, Any]] = {}
    notes: list[str] = []
    for index, row in enumerate(rows):
        tasks: dict[str, Any] = {}
        per_run = [_run_predictions(r, registry) for r in row.records]
        names = set.intersection(*(set(p) for p in per_run)) if per_run else set()
        if not names:
            notes.append(f"{row.name}: no dev predictions in predictions/ (train.predict = false?): no interval")
            continue
        for task in sorted(names):
            spec = per_run[0][task][0]
            gold = _gold(row.first, spec, cache)
            if gold is None:
                notes.append(f"{row.name}: dev labels of {task} not readable (the dev file run.json names is gone and $MTBERT_DATA_DIR holds no file of that name and SHA-1): no interval")
                continue
            tasks[task] = (spec, gold, [p[task][1] for p in per_run])
        out[index] = tasks
    return out, notes


def aligned(row: dict[str, Any], base: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``task -> (row TaskRuns, base TaskRuns)`` on the dev examples every run of both rows predicted."""
    import torch

    from mtbert.bootstrap import TaskRuns

    out = {}
    for task in sorted(set(row) & set(base)):
        spec, gold, runs = row[task]
        _, _, base_runs = base[task]
        ids = [i for i in gold if all(i in r for r in runs) and all(i in r for r in base_runs)]
        if not ids:
            continue
        labels = torch.tensor([gold[i] for i in ids], dtype=torch.float64)

        def matrix(predictions: list[dict[str, float]]) -> Any:
            return torch.tensor([[p[i] for i in ids] for p in predictions], dtype=torch.float64)

        out[task] = (TaskRuns(spec, labels, matrix(runs)), TaskRuns(spec, labels, matrix(base_runs)))
    return out
