"""Bootstrap intervals of compare's changes: the vectorised scores, known shifts, n = 1, speed."""

from __future__ import annotations

import time

import pytest
import torch

from mtbert.bootstrap import TaskRuns, delta_intervals, linear_score
from mtbert.data.tasks import TaskSpec


def spec(kind: str, name: str = "t", classes: int | None = None, main: bool = True) -> TaskSpec:
    return TaskSpec(name=name, description="synthetic", text_columns=("a",), label_column="y", label_kind=kind,
                    num_classes=classes, label_range=(0.0, 5.0) if kind == "regression" else None,
                    files={"dev": "x.csv"}, metric_key=f"{name}_{'r' if kind == 'regression' else 'acc'}", main=main,
                    prediction_header="P", prediction_file="t-{split}.csv")


def full_set(score_spec: TaskSpec, key: str, predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """The vectorised score with every example counted once (no resampling)."""
    score = linear_score(score_spec, key)
    stats = score.statistics(predictions.unsqueeze(0), labels)  # [1, N, K]
    return float(score.finish(stats.sum(1), float(labels.numel()))[0])


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_scores_equal_the_task_metrics(seed):
    g = torch.Generator().manual_seed(seed)
    cls = spec("multiclass", "sst", classes=5)
    labels = torch.randint(5, (300,), generator=g).double()
    predictions = torch.where(torch.rand(300, generator=g) < 0.6, labels, torch.randint(5, (300,), generator=g).double())
    expected = cls.metrics(predictions, labels)
    for key in ("sst_acc", "sst_macro_f1", "sst_balanced_acc", "sst_acc_class0", "sst_acc_class4"):
        assert full_set(cls, key, predictions, labels) == pytest.approx(expected[key], abs=1e-12), key
    reg = spec("regression", "sts")
    y = torch.rand(200, generator=g, dtype=torch.float64) * 5
    x = y + torch.randn(200, generator=g, dtype=torch.float64)
    expected = reg.metrics(x, y)
    assert full_set(reg, "sts_r", x, y) == pytest.approx(expected["sts_r"], abs=1e-10)
    assert full_set(reg, "sts_mse", x, y) == pytest.approx(expected["sts_mse"], abs=1e-10)
    assert linear_score(reg, "sts_spearman") is None  # ranks: recomputed per resample instead


def synthetic(correct: torch.Tensor) -> torch.Tensor:
    """Binary predictions that are right exactly where ``correct`` is, for labels 0101..."""
    labels = (torch.arange(correct.numel()) % 2).double()
    return torch.where(correct, labels, 1 - labels)


def test_identical_predictions_give_an_interval_around_zero():
    g = torch.Generator().manual_seed(0)
    task = spec("binary", "para", classes=2)
    labels = (torch.arange(1000) % 2).double()
    runs = torch.stack([synthetic(torch.rand(1000, generator=g) < p) for p in (0.70, 0.74, 0.72)])
    row = {"para": TaskRuns(task, labels, runs)}
    base = {"para": TaskRuns(task, labels, runs.clone())}
    low, high = delta_intervals(row, base, ["para_acc", "mean"], resamples=2000, seed=1)["para_acc"]
    assert low < 0 < high  # the seeds differ by a few points, so the interval is not degenerate
    assert abs(low + high) < 0.01  # ... and centred on 0


def test_a_five_point_shift_on_a_thousand_examples_excludes_zero_and_is_covered():
    task = spec("binary", "para", classes=2)
    labels = (torch.arange(1000) % 2).double()
    base_correct = torch.arange(1000) < 700  # 70.0% right
    row_correct = torch.arange(1000) < 750  # the same and 50 more: +5 points
    base = {"para": TaskRuns(task, labels, synthetic(base_correct).unsqueeze(0))}
    row = {"para": TaskRuns(task, labels, synthetic(row_correct).unsqueeze(0))}
    low, high = delta_intervals(row, base, ["para_acc"], resamples=10_000, seed=0)["para_acc"]
    assert 0 < low < 0.05 < high
    # paired: only the 50 changed examples vary: sd = sqrt(0.05 * 0.95 / 1000) ~ 0.0069, so +-~0.0135
    assert high - low == pytest.approx(2 * 1.96 * (0.05 * 0.95 / 1000) ** 0.5, rel=0.15)
    # the same shift without pairing would be about three times wider: pairing is what makes it measurable
    assert high - low < 0.03


def test_n_equal_one_rows_resample_the_examples_only_and_seed_spread_widens_the_interval():
    g = torch.Generator().manual_seed(3)
    task = spec("binary", "para", classes=2)
    labels = (torch.arange(1000) % 2).double()
    base = {"para": TaskRuns(task, labels, synthetic(torch.arange(1000) < 700).unsqueeze(0))}
    one = {"para": TaskRuns(task, labels, synthetic(torch.arange(1000) < 750).unsqueeze(0))}
    spread = torch.stack([synthetic(torch.rand(1000, generator=g) < p) for p in (0.68, 0.75, 0.82)])
    three = {"para": TaskRuns(task, labels, spread)}
    lo1, hi1 = delta_intervals(one, base, ["para_acc"], resamples=4000, seed=0)["para_acc"]
    lo3, hi3 = delta_intervals(three, base, ["para_acc"], resamples=4000, seed=0)["para_acc"]
    assert hi3 - lo3 > 3 * (hi1 - lo1)  # seeds 7 points apart: the seed resampling shows in the interval
    # same seed, same interval
    assert delta_intervals(three, base, ["para_acc"], resamples=4000, seed=0)["para_acc"] == (lo3, hi3)


def test_mean_uses_the_main_tasks_and_recomputed_metrics_get_intervals_too():
    g = torch.Generator().manual_seed(5)
    sst, sts = spec("multiclass", "sst", classes=5), spec("regression", "sts")
    cfimdb = spec("binary", "cfimdb", classes=2, main=False)
    y5 = torch.randint(5, (200,), generator=g).double()
    ys = torch.rand(150, generator=g, dtype=torch.float64) * 5
    y2 = torch.randint(2, (50,), generator=g).double()

    def world(noise: float) -> dict[str, TaskRuns]:
        return {"sst": TaskRuns(sst, y5, torch.where(torch.rand(2, 200, generator=g) < noise, 0.0, y5)),
                "sts": TaskRuns(sts, ys, ys + noise * torch.randn(2, 150, generator=g, dtype=torch.float64)),
                "cfimdb": TaskRuns(cfimdb, y2, (1 - y2).expand(2, 50).clone())}

    found = delta_intervals(world(0.2), world(0.6), ["sst_acc", "sts_r", "sts_spearman", "mean"], resamples=200, seed=0)
    assert set(found) == {"sst_acc", "sts_r", "sts_spearman", "mean"}
    for key in found:
        assert found[key][0] > 0, key  # less noise is better on every score, with either method
    # cfimdb (not a main task, always wrong) does not pull mean down: mean's change sits between its parts'
    assert min(found["sst_acc"][0], found["sts_r"][0]) <= found["mean"][0] <= max(found["sst_acc"][1], found["sts_r"][1])


def test_ten_thousand_resamples_of_the_three_dev_sets_take_seconds():
    g = torch.Generator().manual_seed(0)
    sizes = {"sst": (1101, 5), "para": (40_429, 2), "sts": (863, None)}  # the full CS224N dev sets

    def world() -> dict[str, TaskRuns]:
        out = {}
        for name, (n, classes) in sizes.items():
            s = spec("regression" if classes is None else ("binary" if classes == 2 else "multiclass"), name, classes)
            y = torch.rand(n, generator=g, dtype=torch.float64) * 5 if classes is None else torch.randint(classes, (n,), generator=g).double()
            runs = y + torch.randn(3, n, generator=g, dtype=torch.float64) if classes is None else \
                torch.where(torch.rand(3, n, generator=g) < 0.3, 0.0, y)
            out[name] = TaskRuns(s, y, runs)
        return out

    start = time.perf_counter()
    found = delta_intervals(world(), world(), ["sst_acc", "para_acc", "sts_r", "mean"], resamples=10_000, seed=0)
    seconds = time.perf_counter() - start
    assert set(found) == {"sst_acc", "para_acc", "sts_r", "mean"}
    assert seconds < 120, f"{seconds:.1f} s"  # 26 s on the shared 2-core CPU while others installed packages
