"""Metrics against straightforward reference formulas (plain Python, float64) and known values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mtbert import metrics

#: Enough examples to find edge cases, few enough to keep this file to a few seconds.
FAST = settings(max_examples=60, deadline=None)

# Well-conditioned reals: hundredths in [-100, 100], so float64 references are exact enough.
reals = st.integers(-10_000, 10_000).map(lambda i: i / 100)


@st.composite
def real_pairs(draw, min_size: int = 2):
    n = draw(st.integers(min_size, 40))
    return draw(st.lists(reals, min_size=n, max_size=n)), draw(st.lists(reals, min_size=n, max_size=n))


@st.composite
def class_pairs(draw, max_classes: int = 6):
    c = draw(st.integers(2, max_classes))
    n = draw(st.integers(1, 60))
    labels = st.lists(st.integers(0, c - 1), min_size=n, max_size=n)
    return draw(labels), draw(labels), c


# ----------------------------------------------------------------------------- references
def ref_pearson(x: list[float], y: list[float]) -> float:
    mx, my = math.fsum(x) / len(x), math.fsum(y) / len(y)
    cov = math.fsum((a - mx) * (b - my) for a, b in zip(x, y))
    vx = math.fsum((a - mx) ** 2 for a in x)
    vy = math.fsum((b - my) ** 2 for b in y)
    return cov / math.sqrt(vx * vy)


def ref_ranks(x: list[float]) -> list[float]:
    return [1 + sum(b < a for b in x) + (sum(b == a for b in x) - 1) / 2 for a in x]


def ref_f1_and_recall(pred: list[int], true: list[int]) -> tuple[float, float]:
    f1s, recalls = [], []
    for c in sorted(set(pred) | set(true)):
        tp = sum(p == t == c for p, t in zip(pred, true))
        fp = sum(p == c != t for p, t in zip(pred, true))
        fn = sum(t == c != p for p, t in zip(pred, true))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        if c in true:
            recalls.append(recall)
    return sum(f1s) / len(f1s), sum(recalls) / len(recalls)


# ----------------------------------------------------------------------------- regression
@FAST
@given(real_pairs())
def test_pearson_matches_reference(pair) -> None:
    x, y = pair
    assume(len(set(x)) > 1 and len(set(y)) > 1)
    r = metrics.pearson(x, y)
    assert -1.0 <= r <= 1.0
    assert r == pytest.approx(ref_pearson(x, y), abs=1e-9)
    assert metrics.pearson(y, x) == pytest.approx(r, abs=1e-12)


@FAST
@given(real_pairs(), st.floats(0.01, 100), st.floats(-100, 100))
def test_pearson_invariant_under_positive_affine_maps(pair, scale, shift) -> None:
    x, y = pair
    assume(len(set(x)) > 1 and len(set(y)) > 1)
    moved = [scale * v + shift for v in x]
    assert metrics.pearson(moved, y) == pytest.approx(metrics.pearson(x, y), abs=1e-9)
    assert metrics.pearson([-v for v in x], y) == pytest.approx(-metrics.pearson(x, y), abs=1e-12)


@FAST
@given(st.lists(reals, min_size=1, max_size=30), reals)
def test_constant_side_gives_zero_not_nan(values, constant) -> None:
    assert metrics.pearson([constant] * len(values), values) == 0.0
    assert metrics.pearson(values, [constant] * len(values)) == 0.0
    assert metrics.spearman(values, [constant] * len(values)) == 0.0


def test_near_constant_rounding_is_still_constant() -> None:
    # the mean of 0.1 three times is not exactly 0.1 in float64; the result must still be 0.0
    assert metrics.pearson([0.1, 0.1, 0.1], [1.0, 2.0, 3.0]) == 0.0


@FAST
@given(real_pairs())
def test_spearman_matches_reference_average_ranks(pair) -> None:
    x, y = pair
    assert metrics.average_ranks(x).tolist() == ref_ranks(x)
    assume(len(set(x)) > 1 and len(set(y)) > 1)
    assert metrics.spearman(x, y) == pytest.approx(ref_pearson(ref_ranks(x), ref_ranks(y)), abs=1e-9)


@FAST
@given(real_pairs())
def test_spearman_invariant_under_monotone_maps(pair) -> None:
    x, y = pair
    monotone = [v**3 + 2 * v for v in x]  # strictly increasing, keeps ties exactly
    assert metrics.spearman(monotone, y) == pytest.approx(metrics.spearman(x, y), abs=1e-9)


def test_spearman_known_value_with_ties() -> None:
    # scipy.stats.spearmanr([1, 2, 2, 3], [1, 3, 2, 4]).statistic == 0.9486832980505138
    assert metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486832980505138, abs=1e-12)


@FAST
@given(real_pairs(min_size=1))
def test_mse_matches_reference(pair) -> None:
    x, y = pair
    expected = math.fsum((a - b) ** 2 for a, b in zip(x, y)) / len(x)
    assert metrics.mse(x, y) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert metrics.mse(x, x) == 0.0


def test_tensor_inputs_and_shapes() -> None:
    pred = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float32)  # a regression head's [N, 1]
    assert metrics.pearson(pred, torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(ref_pearson([1, 2, 4], [1, 2, 3]))
    with pytest.raises(ValueError, match="one-dimensional"):
        metrics.mse(torch.zeros(2, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="differ in length"):
        metrics.accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="zero examples"):
        metrics.pearson([], [])


def test_non_finite_predictions_give_nan() -> None:
    assert math.isnan(metrics.pearson([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0]))
    assert math.isnan(metrics.mse([float("nan")], [1.0]))


# ----------------------------------------------------------------------------- classification
@FAST
@given(class_pairs())
def test_accuracy_matches_reference(pair) -> None:
    pred, true, _ = pair
    acc = metrics.accuracy(pred, true)
    assert 0.0 <= acc <= 1.0
    assert acc == pytest.approx(sum(p == t for p, t in zip(pred, true)) / len(true), abs=1e-12)


@FAST
@given(class_pairs())
def test_confusion_matrix_counts(pair) -> None:
    pred, true, c = pair
    matrix = metrics.confusion_matrix(pred, true, c)
    assert matrix.shape == (c, c) and matrix.dtype == torch.int64
    for i in range(c):
        for j in range(c):
            assert matrix[i, j] == sum(t == i and p == j for p, t in zip(pred, true))
    assert int(matrix.trace()) / len(true) == pytest.approx(metrics.accuracy(pred, true))


@FAST
@given(class_pairs())
def test_macro_f1_and_balanced_accuracy_match_reference(pair) -> None:
    pred, true, c = pair
    f1, balanced = ref_f1_and_recall(pred, true)
    assert metrics.macro_f1(pred, true, c) == pytest.approx(f1, abs=1e-12)
    assert metrics.balanced_accuracy(pred, true, c) == pytest.approx(balanced, abs=1e-12)
    per_class = metrics.per_class_accuracy(pred, true, c)
    assert set(per_class) == set(true)
    assert all(0.0 <= v <= 1.0 for v in per_class.values())


@FAST
@given(class_pairs())
def test_perfect_predictions_score_one(pair) -> None:
    _, true, c = pair
    assert metrics.accuracy(true, true) == 1.0
    assert metrics.macro_f1(true, true, c) == 1.0
    assert metrics.balanced_accuracy(true, true, c) == 1.0
    assert set(metrics.per_class_accuracy(true, true, c).values()) == {1.0}


def test_known_classification_values() -> None:
    # sklearn: f1_score(average="macro") == 0.43333..., balanced_accuracy_score == 0.5
    pred, true = [0, 1, 1, 1, 0], [0, 0, 1, 1, 2]
    assert metrics.macro_f1(pred, true) == pytest.approx(1.3 / 3)
    assert metrics.balanced_accuracy(pred, true) == pytest.approx(0.5)
    assert metrics.per_class_accuracy(pred, true) == {0: 0.5, 1: 1.0, 2: 0.0}
    assert metrics.confusion_matrix(pred, true).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_class_input_errors() -> None:
    with pytest.raises(ValueError, match="integers"):
        metrics.macro_f1([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match=">= 0"):
        metrics.confusion_matrix([-1, 0], [0, 0])
    with pytest.raises(ValueError, match="outside 0..1"):
        metrics.confusion_matrix([2, 0], [0, 1], num_classes=2)
