"""Evaluation metrics in plain torch (float64), so mtbert needs no sklearn, scipy or numpy.

Every function takes predictions and targets as 1-D sequences or tensors of equal, non-zero
length (anything else is a ValueError: evaluating on nothing is a bug, not a score) and returns
a Python float, except :func:`confusion_matrix` and :func:`per_class_accuracy`.

Edge cases are defined rather than NaN, so a degenerate model during early training logs a
number: :func:`pearson` and :func:`spearman` return 0.0 when either side is constant (the
correlation is undefined there; "no linear relation" is the useful reading). Non-finite inputs
(a diverged regression head) propagate as NaN. Class metrics follow sklearn's conventions:
per-class scores cover the classes that occur (in the targets for recall-based scores, in
targets or predictions for macro F1), and a class with no true positives scores 0.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

Values = Union[Sequence[float], Sequence[int], torch.Tensor]


def _vector(values: Values, name: str, dtype: torch.dtype) -> torch.Tensor:
    """A 1-D CPU tensor; ``[N, 1]`` head outputs are flattened, other shapes are refused."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach().cpu().to(dtype)
    else:
        tensor = torch.as_tensor([float(v) for v in values], dtype=dtype)
    if tensor.dim() != 1:
        if tensor.dim() == 0 or sum(size != 1 for size in tensor.shape) > 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {tuple(tensor.shape)}")
        tensor = tensor.reshape(-1)
    return tensor


def _pair(predictions: Values, targets: Values, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    p = _vector(predictions, "predictions", dtype)
    t = _vector(targets, "targets", dtype)
    if p.numel() != t.numel():
        raise ValueError(f"predictions and targets differ in length: {p.numel()} vs {t.numel()}")
    if p.numel() == 0:
        raise ValueError("cannot compute a metric over zero examples")
    return p, t


def _classes(predictions: Values, labels: Values, num_classes: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    p, t = _pair(predictions, labels, torch.float64)
    if not (torch.equal(p, p.round()) and torch.equal(t, t.round())):
        raise ValueError("class predictions and labels must be integers")
    p, t = p.long(), t.long()
    low = int(min(p.min(), t.min()))
    high = int(max(p.max(), t.max()))
    if low < 0:
        raise ValueError(f"class ids must be >= 0, found {low}")
    if num_classes is None:
        num_classes = high + 1
    elif high >= num_classes:
        raise ValueError(f"class id {high} is outside 0..{num_classes - 1}")
    return p, t, num_classes


def accuracy(predictions: Values, labels: Values) -> float:
    """Fraction of predictions equal to their label."""
    p, t = _pair(predictions, labels, torch.float64)
    return float((p == t).double().mean())


def confusion_matrix(predictions: Values, labels: Values, num_classes: int | None = None) -> torch.Tensor:
    """Counts ``[true class, predicted class]`` as an int64 ``[C, C]`` tensor.

    ``num_classes`` defaults to one more than the largest class id seen.
    """
    p, t, c = _classes(predictions, labels, num_classes)
    return torch.bincount(t * c + p, minlength=c * c).reshape(c, c)


def per_class_accuracy(predictions: Values, labels: Values, num_classes: int | None = None) -> dict[int, float]:
    """Recall of each class that occurs in ``labels`` (absent classes have no accuracy)."""
    matrix = confusion_matrix(predictions, labels, num_classes).double()
    support = matrix.sum(dim=1)
    return {c: float(matrix[c, c] / support[c]) for c in range(matrix.shape[0]) if support[c] > 0}


def balanced_accuracy(predictions: Values, labels: Values, num_classes: int | None = None) -> float:
    """Mean per-class recall over the classes that occur in ``labels`` (sklearn's definition)."""
    recalls = per_class_accuracy(predictions, labels, num_classes)
    return sum(recalls.values()) / len(recalls)


def macro_f1(predictions: Values, labels: Values, num_classes: int | None = None) -> float:
    """Unweighted mean F1 over classes that occur in labels or predictions (F1 = 2TP/(2TP+FP+FN))."""
    matrix = confusion_matrix(predictions, labels, num_classes).double()
    tp = matrix.diagonal()
    predicted = matrix.sum(dim=0)
    actual = matrix.sum(dim=1)
    present = (predicted + actual) > 0
    f1 = 2 * tp[present] / (predicted[present] + actual[present])
    return float(f1.mean())


def pearson(predictions: Values, targets: Values) -> float:
    """Pearson correlation, computed in float64; 0.0 when either side is constant."""
    x, y = _pair(predictions, targets, torch.float64)
    if bool(x.max() == x.min()) or bool(y.max() == y.min()):
        return 0.0
    x = x - x.mean()
    y = y - y.mean()
    r = (x * y).sum() / (x.square().sum().sqrt() * y.square().sum().sqrt())
    return float(r.clamp(-1.0, 1.0)) if torch.isfinite(r) else float(r)


def average_ranks(values: Values) -> torch.Tensor:
    """1-based ranks with ties sharing the mean of their positions (as ``scipy.stats.rankdata``)."""
    x = _vector(values, "values", torch.float64)
    ordered, order = torch.sort(x, stable=True)
    _, group, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).double()
    mean_rank = last - (counts.double() - 1) / 2
    ranks = torch.empty_like(x)
    ranks[order] = mean_rank[group]
    return ranks


def spearman(predictions: Values, targets: Values) -> float:
    """Spearman rank correlation: Pearson of average ranks; 0.0 when either side is constant."""
    x, y = _pair(predictions, targets, torch.float64)
    return pearson(average_ranks(x), average_ranks(y))


def mse(predictions: Values, targets: Values) -> float:
    """Mean squared error."""
    p, t = _pair(predictions, targets, torch.float64)
    return float((p - t).square().mean())
