"""Bootstrap confidence intervals for the change of dev scores between two pooled rows.

A row of ``mtbert compare`` is one or more runs of the same recipe with different seeds. Two
sources of noise separate its score from the "true" score of the recipe: which seeds were run
and which examples the dev set happens to hold. Each bootstrap resample therefore draws, for
every row independently, its seeds with replacement (a row of ``n`` runs draws ``n`` of them),
and draws the dev examples with replacement **once for both rows** (they are scored on the same
dev set, so the comparison is paired). The change of a score in that resample is the row's
mean over its drawn runs minus the baseline's; the 95% interval is the 2.5th and 97.5th
percentile of those changes. A row with one run can only resample the dev examples.

Speed: resampling examples with replacement is the same as weighting each example by how
often it was drawn, so every score that is a function of sums over examples (accuracy,
per-class counts and so macro F1 / balanced accuracy, Pearson r, MSE) becomes one matrix
product ``counts [resamples, N] @ statistics [N, K]`` per chunk of resamples: 10,000
resamples of the three CS224N dev sets take seconds on a CPU. Any other score a task reports
(Spearman's rank correlation, a plugin task's own metric) is recomputed with the task's
``metrics()`` on every resample's examples: the same draws, just slower.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
import torch

#: Resamples whose ``[chunk, N]`` count matrix is built at once (memory: chunk * N * 8 bytes).
CHUNK_ELEMENTS = 4_000_000


@attrs.define
class TaskRuns:
    """One task's dev gold labels and every run's predictions of the same examples, in one order."""

    spec: Any  # mtbert.data.tasks.TaskSpec
    labels: torch.Tensor  # [N] float64
    runs: torch.Tensor  # [runs, N] float64


@attrs.define
class LinearScore:
    """A score computed from per-example statistics summed with resampling counts as weights."""

    statistics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (pred [R, N], gold [N]) -> [R, N, K]
    finish: Callable[[torch.Tensor, float], torch.Tensor]  # (sums [..., K], N) -> [...]


def _accuracy() -> LinearScore:
    return LinearScore(statistics=lambda p, y: (p == y).double().unsqueeze(-1),
                       finish=lambda s, n: s[..., 0] / n)


def _pearson_finish(s: torch.Tensor, n: float) -> torch.Tensor:
    sx, sxx, sxy, sy, syy = s.unbind(-1)
    cov = sxy - sx * sy / n
    vx, vy = sxx - sx * sx / n, syy - sy * sy / n
    denominator = (vx * vy).clamp_min(0).sqrt()
    # a constant side has no correlation: 0.0, as mtbert.metrics.pearson defines it
    return torch.where(denominator > 1e-12, cov / denominator.clamp_min(1e-300), torch.zeros_like(cov))


def _pearson() -> LinearScore:
    def statistics(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y.expand_as(p)
        return torch.stack([p, p * p, p * y, y, y * y], dim=-1)

    return LinearScore(statistics=statistics, finish=_pearson_finish)


def _mse() -> LinearScore:
    return LinearScore(statistics=lambda p, y: ((p - y) ** 2).unsqueeze(-1), finish=lambda s, n: s[..., 0] / n)


def _class_counts(classes: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per example and class: [true positive, predicted as c, labelled c] -> [R, N, 3C]."""
    def statistics(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = torch.arange(classes, dtype=torch.float64)
        predicted = (p.unsqueeze(-1) == c).double()
        labelled = (y.unsqueeze(-1) == c).double().expand_as(predicted)
        return torch.cat([predicted * labelled, predicted, labelled], dim=-1)

    return statistics


def _macro_f1(classes: int) -> LinearScore:
    def finish(s: torch.Tensor, n: float) -> torch.Tensor:
        tp, predicted, labelled = s.split(classes, dim=-1)
        present = (predicted + labelled) > 0
        f1 = torch.where(present, 2 * tp / (predicted + labelled).clamp_min(1e-300), torch.zeros_like(tp))
        return f1.sum(-1) / present.sum(-1).clamp_min(1)

    return LinearScore(statistics=_class_counts(classes), finish=finish)


def _balanced_accuracy(classes: int) -> LinearScore:
    def finish(s: torch.Tensor, n: float) -> torch.Tensor:
        tp, _, labelled = s.split(classes, dim=-1)
        present = labelled > 0
        recall = torch.where(present, tp / labelled.clamp_min(1e-300), torch.zeros_like(tp))
        return recall.sum(-1) / present.sum(-1).clamp_min(1)

    return LinearScore(statistics=_class_counts(classes), finish=finish)


def _class_accuracy(classes: int, k: int) -> LinearScore:
    def finish(s: torch.Tensor, n: float) -> torch.Tensor:
        tp, _, labelled = s.split(classes, dim=-1)
        # a class the resample happens to miss has no recall: count it as the full-set's absent case (0)
        return torch.where(labelled[..., k] > 0, tp[..., k] / labelled[..., k].clamp_min(1e-300), torch.zeros_like(tp[..., k]))

    return LinearScore(statistics=_class_counts(classes), finish=finish)


def linear_score(spec: Any, key: str) -> LinearScore | None:
    """The vectorised form of the dev score ``key`` of task ``spec``, or None (then it is recomputed)."""
    name = spec.name
    if spec.is_regression:
        return {spec.metric_key: _pearson, f"{name}_mse": _mse}.get(key, lambda: None)()
    classes = int(spec.num_classes)
    if key == spec.metric_key:
        return _accuracy()
    if key == f"{name}_macro_f1":
        return _macro_f1(classes)
    if key == f"{name}_balanced_acc":
        return _balanced_accuracy(classes)
    prefix = f"{name}_acc_class"
    if key.startswith(prefix) and key[len(prefix):].isdigit() and int(key[len(prefix):]) < classes:
        return _class_accuracy(classes, int(key[len(prefix):]))
    return None


def owner(tasks: dict[str, TaskRuns], key: str) -> str | None:
    """The task whose ``metrics()`` reports ``key``, judged from the key's name and the task's metric key."""
    for task, data in tasks.items():
        if key == data.spec.metric_key or key.startswith(f"{task}_"):
            return task
    return None


def per_run_scores(task: TaskRuns, keys: list[str], resamples: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Each key's score of every run on every resample of the task's examples: ``key -> [resamples, runs]``."""
    n = task.labels.numel()
    runs = task.runs.shape[0]
    linear = {k: linear_score(task.spec, k) for k in keys}
    stats = {k: s.statistics(task.runs, task.labels) for k, s in linear.items() if s is not None}  # [runs, N, K]
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    chunk = max(1, CHUNK_ELEMENTS // max(n, 1))
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        drawn = torch.randint(n, (size, n), generator=generator)
        counts = torch.zeros(size, n, dtype=torch.float64).scatter_add_(1, drawn, torch.ones(size, n, dtype=torch.float64))
        for key, s in linear.items():
            if s is not None:
                k = stats[key].shape[-1]
                sums = counts @ stats[key].permute(1, 0, 2).reshape(n, runs * k)  # [size, runs*K]
                out[key].append(s.finish(sums.reshape(size, runs, k), float(n)))
            else:
                out[key].append(_recomputed(task, key, drawn))
        done += size
    return {k: torch.cat(v) for k, v in out.items()}


def _recomputed(task: TaskRuns, key: str, drawn: torch.Tensor) -> torch.Tensor:
    """A score without a vectorised form, through the task's own ``metrics()`` per resample."""
    values = torch.empty(drawn.shape[0], task.runs.shape[0], dtype=torch.float64)
    labels = task.labels
    for i, rows in enumerate(drawn):
        for r in range(task.runs.shape[0]):
            values[i, r] = float(task.spec.metrics(task.runs[r, rows], labels[rows]).get(key, float("nan")))
    return values


def mean_of(tasks: dict[str, TaskRuns], scores: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor | None:
    """``mean`` per resample and run: the main tasks' primary scores averaged (as the engine's ``mean``)."""
    main = [t for t, d in tasks.items() if d.spec.main] or list(tasks)
    parts = [scores[t][tasks[t].spec.metric_key] for t in main if tasks[t].spec.metric_key in scores.get(t, {})]
    if len(parts) != len(main) or not parts:
        return None
    return torch.stack(parts).mean(0)


def row_draws(runs: int, resamples: int, generator: torch.Generator) -> torch.Tensor:
    """Which runs each resample uses: ``[resamples, runs]`` indices drawn with replacement."""
    if runs == 1:
        return torch.zeros(resamples, 1, dtype=torch.long)
    return torch.randint(runs, (resamples, runs), generator=generator)


def delta_intervals(
    row: dict[str, TaskRuns], base: dict[str, TaskRuns], keys: list[str], *, resamples: int = 10_000,
    seed: int = 0, level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """95% bootstrap interval of ``row - base`` for every key both rows' tasks can score.

    ``row`` and ``base`` map task names to :class:`TaskRuns` whose examples are in the same
    order (the caller aligns them by example id). Keys that neither task owns (nor ``mean``)
    are left out of the result.
    """
    generator = torch.Generator().manual_seed(seed)
    row_runs = next(iter(row.values())).runs.shape[0]
    base_runs = next(iter(base.values())).runs.shape[0]
    pick_row, pick_base = row_draws(row_runs, resamples, generator), row_draws(base_runs, resamples, generator)
    wanted: dict[str, list[str]] = {}
    for key in keys:
        task = owner(row, key)
        if task is not None and task in base:
            wanted.setdefault(task, []).append(key)
    if "mean" in keys:
        for task, data in row.items():
            if task in base and (data.spec.main or not any(d.spec.main for d in row.values())):
                wanted.setdefault(task, [])
                if data.spec.metric_key not in wanted[task]:
                    wanted[task].append(data.spec.metric_key)
    row_scores: dict[str, dict[str, torch.Tensor]] = {}
    base_scores: dict[str, dict[str, torch.Tensor]] = {}
    for task, task_keys in wanted.items():
        both = TaskRuns(spec=row[task].spec, labels=row[task].labels, runs=torch.cat([row[task].runs, base[task].runs]))
        scores = per_run_scores(both, task_keys, resamples, generator)  # one draw of examples for both rows
        row_scores[task] = {k: v[:, :row_runs] for k, v in scores.items()}
        base_scores[task] = {k: v[:, row_runs:] for k, v in scores.items()}
    per_key: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for task, task_keys in wanted.items():
        for key in task_keys:
            if key in keys:
                per_key[key] = (row_scores[task][key], base_scores[task][key])
    if "mean" in keys:
        row_mean, base_mean = mean_of(row, row_scores), mean_of(base, base_scores)
        if row_mean is not None and base_mean is not None:
            per_key["mean"] = (row_mean, base_mean)
    tail = (1.0 - level) / 2
    out: dict[str, tuple[float, float]] = {}
    for key, (r, b) in per_key.items():
        change = r.gather(1, pick_row).mean(1) - b.gather(1, pick_base).mean(1)
        change = change[torch.isfinite(change)]
        if change.numel():
            low, high = torch.quantile(change, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
            out[key] = (low, high)
    return out
