"""``mtbert compare``: the reports' ablation table, built from run folders.

One row per recipe: its name, the recipe values that differ between the rows, ``n`` (how many
runs: finished runs whose recipes differ only in ``seed`` are pooled into one row, see
:mod:`mtbert.replicates`), the best dev scores (the primary metric of every task the runs train,
plugin tasks included, then ``mean``; or the metrics named with ``--metric``) as mean ± standard
deviation over those runs, their changes against a baseline row with a
95% bootstrap interval (:mod:`mtbert.bootstrap`, from the dev predictions in the run folders),
and the wall time. Folders that cannot be read or have no evaluation yet are
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

from mtbert.recipe.keys import RESULT_NEUTRAL_KEYS, flatten_recipe
from mtbert.recipe.sections import with_section_defaults
from mtbert.replicates import Row

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


def _flatten(table: Any) -> dict[str, Any]:
    """The recipe by dotted key, an empty list read as absent: "no gradient transforms" shows as "—"."""
    return {key: value for key, value in flatten_recipe(table).items() if value != []}


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
    ran = (info.get("device") or {}).get("precision") if isinstance(info.get("device"), dict) else None
    train = recipe.get("train") if isinstance(recipe.get("train"), dict) else None
    if ran and train is not None and train.get("precision", "auto") == "auto":
        # "auto" resolves per machine: runs that computed in bf16 and in fp32 are no replicates.
        train["precision"] = f"auto ({ran})"
    return RunRecord(folder=folder, name=folder.name, recipe=with_section_defaults(recipe), best=summary.get("best"), history=history,
                     seconds=info.get("train_seconds"), status=info.get("status", "unknown"))


def differing_keys(records: list[RunRecord]) -> list[str]:
    """Recipe keys whose values are not the same in every compared run (the name excluded)."""
    flats = [_flatten(r.recipe) for r in records]
    keys = sorted(set().union(*flats)) if flats else []
    ignore = RESULT_NEUTRAL_KEYS

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
    """The table as Markdown cells (``headers``/``rows``) and as machine-readable ``data`` (CSV, JSON)."""

    headers: list[str]
    rows: list[list[str]]
    skipped: list[str]
    fields: list[str] = attrs.field(factory=list)
    data: list[dict[str, Any]] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.headers) + " |", "| " + " | ".join("---" for _ in self.headers) + " |"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {n}" for n in self.notes]
        if self.skipped:
            lines.append("")
            lines += [f"- skipped {s}" for s in self.skipped]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """Columns ``run``, the differing keys, ``n``, ``<score>``, ``<score>_std``, ``delta_<score>``..."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(self.fields)
        writer.writerows([[_csv_cell(row.get(f)) for f in self.fields] for row in self.data])
        return out.getvalue()

    def json(self) -> str:
        """The CSV's rows as objects (``null`` for no value), with the notes and skipped folders."""
        rows = [{f: row.get(f) for f in self.fields} for row in self.data]
        return json.dumps({"rows": rows, "notes": self.notes, "skipped": self.skipped}, indent=2) + "\n"


def _csv_cell(value: Any) -> Any:
    """No value is an empty cell (never "—"); a list is written as in the Markdown table."""
    if value is None:
        return ""
    return _fmt(value) if isinstance(value, list) else value


def _score(row: Row, metric: str) -> str:
    mean, std = row.mean(metric), row.std(metric)
    if mean is None:
        return "—"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def _delta(change: float, interval: tuple[float, float] | None) -> str:
    if interval is None:
        return f"{change:+.3f}"
    low, high = interval
    text = f"{change:+.3f} [{low:+.3f}, {high:+.3f}]"
    return f"**{text}**" if low > 0 or high < 0 else text  # the interval excludes 0: a measured change


def _read(folders: list[Path], baseline: Path | None, skipped: list[str]) -> tuple[list[RunRecord], RunRecord | None]:
    records: list[RunRecord] = []
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
    return records, base


def compare(folders: list[Path], baseline: Path | None = None, metrics: Sequence[str] | None = None, *,
            plugins: Any = None, registry: Any = None, resamples: int = 10_000,
            seed: int = 0) -> tuple[Table, list[RunRecord]]:
    """The compare table: replicates pooled into rows, deltas with bootstrap intervals against ``baseline``.

    ``metrics`` default to :func:`default_metrics` (``registry``, or ``plugins``' registry, names the
    tasks' primary metrics; without either they are read off the runs' metrics).
    """
    from mtbert.replicates import pool

    skipped: list[str] = []
    records, base = _read(folders, baseline, skipped)
    if registry is None and plugins is not None:
        registry = plugins.registry
    if metrics is None:
        metrics = default_metrics(records, registry)
    elif records:
        have = available_metrics(records)
        missing = [m for m in metrics if m not in have]
        if missing:
            from mtbert.errors import MtbertError

            raise MtbertError(f"--metric {missing[0]}: no compared run has this dev metric; they have: {', '.join(have)}")
    rows = pool(records, _flatten)
    base_row = next((r for r in rows if base is not None and base in r.records), None)
    keys = [k for k in differing_keys([r.first for r in rows]) if k != "seed"]
    shown = [m for m in metrics if any(m in r.best["dev"] for r in records)]
    intervals, notes = _intervals(rows, base_row, shown, plugins, resamples, seed) if base_row else ({}, [])
    headers = ["run", *keys, "n", *(HEADERS.get(m, m) for m in shown)]
    fields = ["run", *keys, "n", *(f for m in shown for f in (m, f"{m}_std"))]
    if base_row is not None:
        headers += [f"Δ {HEADERS.get(m, m)}" for m in shown]
        fields += [f for m in shown for f in (f"delta_{m}", f"delta_{m}_ci_low", f"delta_{m}_ci_high")]
        fields += ["ci_resampled"]
    headers += ["best epoch", "wall time", "status"]
    fields += ["best_epoch", "wall_seconds", "status"]
    cells, data = [], []
    for index, row in enumerate(rows):
        flat = _flatten(row.first.recipe)
        line = [row.name, *(_fmt(flat.get(k)) for k in keys), str(row.n), *(_score(row, m) for m in shown)]
        item: dict[str, Any] = {"run": row.name, **{k: flat.get(k) for k in keys}, "n": row.n}
        for m in shown:
            item[m], item[f"{m}_std"] = row.mean(m), row.std(m)
        if base_row is not None:
            found = intervals.get(index, {})
            for m in shown:
                mean, base_mean = row.mean(m), base_row.mean(m)
                change = None if mean is None or base_mean is None else mean - base_mean
                interval = found.get(m)
                line.append("—" if change is None else _delta(change, interval))
                item[f"delta_{m}"] = change
                item[f"delta_{m}_ci_low"], item[f"delta_{m}_ci_high"] = interval if interval else (None, None)
            item["ci_resampled"] = (None if not found else
                                    "dev examples" if row.n == 1 and base_row.n == 1 else "seeds and dev examples")
        line += [row.epochs, _clock(row.seconds), row.status]
        item.update(best_epoch=row.epochs, wall_seconds=row.seconds, status=row.status)
        cells.append(line)
        data.append(item)
    return Table(headers=headers, rows=cells, skipped=skipped, fields=fields, data=data, notes=notes), records


def _intervals(rows: list[Row], base_row: Row, metrics: list[str], plugins: Any, resamples: int,
               seed: int) -> tuple[dict[int, dict[str, tuple[float, float]]], list[str]]:
    """Bootstrap 95% intervals of every row's change against ``base_row``, and notes on how they were made."""
    from mtbert.bootstrap import delta_intervals
    from mtbert.plugins import get_plugins
    from mtbert.replicates import aligned, load_row_predictions

    registry = (plugins or get_plugins()).registry
    predictions, notes = load_row_predictions(rows, registry)
    base_index = rows.index(base_row)
    out: dict[int, dict[str, tuple[float, float]]] = {}
    if base_index not in predictions or not predictions[base_index]:
        return out, notes
    for index, row in enumerate(rows):
        if index == base_index or not predictions.get(index):
            continue
        pairs = aligned(predictions[index], predictions[base_index])
        if not pairs:
            notes.append(f"{row.name}: no dev examples in common with the baseline: no interval")
            continue
        out[index] = delta_intervals({t: p[0] for t, p in pairs.items()}, {t: p[1] for t, p in pairs.items()},
                                     metrics, resamples=resamples, seed=seed)
    single = [rows[i].name for i in out if rows[i].n == 1]
    if out:
        notes.insert(0, f"Δ: change against {base_row.name} with a 95% bootstrap interval ({resamples} resamples of "
                        "the seeds of each row and the shared dev examples); **bold**: the interval excludes 0")
    if base_row.n == 1 or single:
        names = ", ".join(dict.fromkeys(([base_row.name] if base_row.n == 1 else []) + single))
        notes.append(f"n = 1 ({names}): one seed, so its interval resamples the dev examples only "
                     "(run more seeds: mtbert sweep RECIPE --seeds 3)")
    return out, notes


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
