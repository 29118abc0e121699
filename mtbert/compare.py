"""``mtbert compare``: the seeds' ablation table, built from run folders.

One row per run: its name, the recipe values that differ between the compared runs, the best
dev scores (the primary metric of every task the runs train, plugin tasks included, then
``mean``; or the metrics named with ``--metric``), their deltas against a baseline run, and
the wall time. Folders that cannot be read or have no evaluation yet are
listed under the table rather than stopping the command.

Which recipe values get a column: every key (``optim.lr``, ``sampler.step``,
``gradient_transforms[0].name``) whose value is not the same in all rows, a key a run lacks
counting as its own value. The options of a component (the keys beside a ``name``, such as
``gradient_transforms[0].reduction``) get a column only where runs using the same component
differ in them: a run that adds PCGrad shows ``gradient_transforms[0].name = pcgrad``, not
every PCGrad default. A baseline given with ``--baseline`` that is not among the compared
folders is added as the first row.
"""

from __future__ import annotations

import csv
import io
import json
import tomllib
from pathlib import Path
from typing import Any, Sequence

import attrs

MAIN_METRICS = ("sst_acc", "para_acc", "sts_pearson", "mean")
HEADERS = {"sst_acc": "SST acc", "para_acc": "Para acc", "sts_pearson": "STS r", "mean": "mean",
           "cfimdb_acc": "CFIMDB acc"}


@attrs.define
class RunRecord:
    folder: Path
    name: str
    recipe: dict[str, Any]
    best: dict[str, Any] | None
    history: list[dict[str, Any]]
    seconds: float | None
    status: str


def _flatten(table: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(table, dict):
        for key, value in table.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    elif isinstance(table, list) and any(isinstance(v, dict) for v in table):
        for i, value in enumerate(table):
            out.update(_flatten(value, f"{prefix}[{i}]"))
    elif isinstance(table, list) and not table:
        pass  # an empty list reads as absent: "no gradient transforms" is shown as "—"
    else:
        out[prefix] = table
    return out


def read_run(folder: Path) -> RunRecord:
    """A run folder's recipe, best evaluation, history and time; ValueError when unreadable."""
    recipe_path = folder / "recipe.toml"
    if not recipe_path.is_file():
        raise ValueError("no recipe.toml (not a run folder)")
    try:
        recipe = tomllib.loads(recipe_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"unreadable recipe.toml ({exc})") from None
    summary: dict[str, Any] = {}
    if (folder / "metrics.json").is_file():
        try:
            summary = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"unreadable metrics.json ({exc})") from None
    history = []
    if (folder / "metrics.jsonl").is_file():
        for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                history.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash: the others still count
    info: dict[str, Any] = {}
    if (folder / "run.json").is_file():
        try:
            info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        except ValueError:
            info = {}
    return RunRecord(folder=folder, name=folder.name, recipe=recipe, best=summary.get("best"), history=history,
                     seconds=info.get("train_seconds"), status=info.get("status", "unknown"))


def differing_keys(records: list[RunRecord]) -> list[str]:
    """Recipe keys whose values are not the same in every compared run (the name excluded)."""
    flats = [_flatten(r.recipe) for r in records]
    keys = sorted(set().union(*flats)) if flats else []
    ignore = {"name", "description", "train.progress", "train.keep_last", "data.dir", "data.cache", "train.device", "train.threads"}

    def differ(rows: list[dict[str, Any]], key: str) -> bool:
        return len({json.dumps(f.get(key), sort_keys=True) for f in rows}) > 1

    def component(key: str) -> str | None:
        """The component table holding option ``key`` (the longest prefix with a ``name``)."""
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut])
            if any(f"{prefix}.name" in f for f in flats):
                return prefix
        return None

    shown = []
    for key in keys:
        if key in ignore or not differ(flats, key):
            continue
        prefix = component(key)
        if prefix is not None and key != f"{prefix}.name":
            groups: dict[str, list[dict[str, Any]]] = {}
            for f in flats:
                if f.get(f"{prefix}.name") is not None:
                    groups.setdefault(json.dumps(f[f"{prefix}.name"]), []).append(f)
            if not any(len(g) > 1 and differ(g, key) for g in groups.values()):
                continue  # differs only because the component differs: its name column says so
        shown.append(key)
    return shown


def primary_metric(task: str, records: list[RunRecord], registry: Any = None) -> str | None:
    """A task's primary dev metric: its ``TaskSpec.metric_key`` when the task's plugin is installed,
    else the first ``<task>_...`` metric of the runs (a task's metrics start with its primary one)."""
    component = registry.find("task", task) if registry is not None else None
    key = getattr(getattr(component, "factory", None), "metric_key", None)
    if key:
        return key
    for record in records:
        for metric in (record.best or {}).get("dev") or {}:
            if metric.startswith(f"{task}_"):
                return metric
    return None


def default_metrics(records: list[RunRecord], registry: Any = None) -> list[str]:
    """Every compared task's primary metric (in the order the recipes list the tasks), then ``mean``."""
    tasks: list[str] = []
    for record in records:
        for task in record.recipe.get("tasks") or {}:
            if task not in tasks:
                tasks.append(task)
    metrics = [m for m in (primary_metric(t, records, registry) for t in tasks) if m]
    return list(dict.fromkeys([*metrics, "mean"]))


def available_metrics(records: list[RunRecord]) -> list[str]:
    """Every dev metric any compared run's best evaluation has, in first-seen order."""
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys((record.best or {}).get("dev") or {}))
    return list(seen)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@attrs.define
class Table:
    """Markdown cells (``headers``/``rows``) and, for CSV, the same columns as values (``values``:
    numbers as numbers, no value as ``None``, wall time in seconds under ``csv_headers``)."""

    headers: list[str]
    rows: list[list[str]]
    skipped: list[str]
    values: list[list[Any]] = attrs.field(factory=list)
    csv_headers: list[str] = attrs.field(factory=list)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.headers) + " |", "| " + " | ".join("---" for _ in self.headers) + " |"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
        if self.skipped:
            lines.append("")
            lines += [f"- skipped {s}" for s in self.skipped]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(self.csv_headers or self.headers)
        writer.writerows([["" if v is None else v for v in row] for row in self.values] if self.values else self.rows)
        return out.getvalue()


def compare(folders: list[Path], baseline: Path | None = None, metrics: Sequence[str] | None = None, *,
            registry: Any = None) -> tuple[Table, list[RunRecord]]:
    """The table of ``folders``; ``metrics`` default to :func:`default_metrics` (``registry`` names
    the tasks' primary metrics; without it they are read off the runs' metrics)."""
    records: list[RunRecord] = []
    skipped: list[str] = []
    for folder in folders:
        try:
            record = read_run(folder)
        except ValueError as exc:
            skipped.append(f"{folder}: {exc}")
            continue
        if record.best is None:
            skipped.append(f"{folder}: no evaluation yet (status {record.status})")
            continue
        records.append(record)
    base = None
    if baseline is not None:
        base = next((r for r in records if r.folder.resolve() == baseline.resolve()), None)
        if base is None:
            try:
                base = read_run(baseline)
            except ValueError as exc:
                skipped.append(f"baseline {baseline}: {exc}")
            else:
                if base.best is None:
                    skipped.append(f"baseline {baseline}: no evaluation yet (status {base.status}); no deltas")
                    base = None
                else:
                    records.insert(0, base)
    keys = differing_keys(records)
    if metrics is None:
        metrics = default_metrics(records, registry)
    elif records:
        have = available_metrics(records)
        missing = [m for m in metrics if m not in have]
        if missing:
            from mtbert.errors import MtbertError

            raise MtbertError(f"--metric {missing[0]}: no compared run has this dev metric; they have: {', '.join(have)}")
    shown = [m for m in metrics if any(m in r.best["dev"] for r in records)]
    deltas = base is not None and base.best is not None
    headers = ["run", *keys, *(HEADERS.get(m, m) for m in shown)]
    csv_headers = ["run", *keys, *shown]
    if deltas:
        headers += [f"Δ {HEADERS.get(m, m)}" for m in shown]
        csv_headers += [f"delta_{m}" for m in shown]
    headers += ["best epoch", "wall time", "status"]
    csv_headers += ["best_epoch", "wall_seconds", "status"]
    rows, values = [], []
    for r in records:
        flat = _flatten(r.recipe)
        dev = r.best["dev"]
        scores = [dev.get(m) for m in shown]
        changes = []
        if deltas:
            bdev = base.best["dev"]
            changes = [dev[m] - bdev[m] if m in dev and m in bdev else None for m in shown]
        row = [r.name, *(_fmt(flat.get(k)) for k in keys)]
        row += ["—" if v is None else f"{v:.3f}" for v in scores]
        row += ["—" if v is None else f"{v:+.3f}" for v in changes]
        row += [str(r.best.get("epoch", "—")), _clock(r.seconds), r.status]
        rows.append(row)
        recipe_values = [None if flat.get(k) is None else (_fmt(flat[k]) if isinstance(flat[k], list) else flat[k])
                         for k in keys]
        values.append([r.name, *recipe_values, *scores, *changes, r.best.get("epoch"), r.seconds, r.status])
    return Table(headers=headers, rows=rows, skipped=skipped, values=values, csv_headers=csv_headers), records


def plot(records: list[RunRecord], path: Path, metric: str = "mean") -> None:
    """Dev ``metric`` per epoch of each run, as a PNG (needs matplotlib: pip install 'mtbert[plot]')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for record in records:
        points = [(i + 1, h["metrics"][metric]) for i, h in enumerate(record.history) if metric in h.get("metrics", {})]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=record.name)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # evaluations are counted, never fractional
    ax.set_xlabel("evaluation (epoch)")
    ax.set_ylabel(f"dev {metric}")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
