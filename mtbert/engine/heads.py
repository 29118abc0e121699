"""Building blocks every head plugin shares: pooling, pair features, MLP layers, task losses.

A head plugin subclasses :class:`TaskHeadModule` and writes only ``forward``; the loss and
the mapping from raw outputs to task labels follow from the task's label kind:

* ``multiclass``: ``C`` logits, cross-entropy (optional class weights), argmax;
* ``binary``: one logit, binary cross-entropy with logits (optional class weights), ``> 0``;
* ``regression``: one score, mean squared error, clamped to the label range for predictions.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtbert.engine.components import Features

Pooling = Literal["pooler", "cls", "mean"]
PairPart = Literal["u", "v", "sum", "abs-diff", "product", "cross"]
Activation = Literal["relu", "leaky_relu", "gelu", "tanh"]


def activation_module(name: str, negative_slope: float = 0.01) -> nn.Module:
    """The activation a head option names."""
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    if name == "gelu":
        return nn.GELU()
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown activation {name!r}")


def dropout_list(dropout: float | Sequence[float], layers: int) -> list[float]:
    """One dropout probability per Linear layer, from one number or a list of ``layers`` numbers."""
    if isinstance(dropout, (int, float)):
        return [float(dropout)] * layers
    values = [float(p) for p in dropout]
    if len(values) != layers:
        raise ValueError(f"dropout needs 1 or {layers} numbers, got {len(values)}")
    return values


def check_dropout(dropout: float | Sequence[float], hidden: Sequence[int]) -> str | None:
    """A reason why ``dropout`` does not fit an MLP with these hidden sizes, or None."""
    if isinstance(dropout, (int, float)):
        return None
    layers = len(hidden) + 1
    if len(dropout) != layers:
        return (f"dropout has {len(dropout)} numbers; give one, or one per Linear layer "
                f"({layers} for hidden = {list(hidden)})")
    return None


def build_mlp(width: int, hidden: Sequence[int], out_features: int, activation: str,
              dropout: float | Sequence[float], negative_slope: float = 0.01) -> nn.Sequential:
    """``dropout -> Linear -> act`` per hidden size, then ``dropout -> Linear(out_features)``."""
    rates = dropout_list(dropout, len(hidden) + 1)
    layers: list[nn.Module] = []
    for size, rate in zip(hidden, rates):
        layers += [nn.Dropout(rate), nn.Linear(width, size), activation_module(activation, negative_slope)]
        width = size
    layers += [nn.Dropout(rates[-1]), nn.Linear(width, out_features)]
    return nn.Sequential(*layers)



def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states of real tokens (padding excluded), as Sentence-BERT pools."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def pool(features: Features, index: int, how: Pooling) -> torch.Tensor:
    """One vector per example for sequence ``index``: BERT's pooler, the [CLS] state, or the mean."""
    if how == "pooler":
        return features.pooled[index]
    if how == "cls":
        return features.hidden[index][:, 0]
    if how == "mean":
        return masked_mean(features.hidden[index], features.masks[index])
    raise ValueError(f"unknown pooling {how!r}")


def pair_features(u: torch.Tensor, v: torch.Tensor, parts: Sequence[str],
                  cross: torch.Tensor | None = None) -> torch.Tensor:
    """Concatenate the chosen views of a sentence pair: u, v, u + v, |u - v|, u * v, cross.

    Sentence-BERT's ``[u; v; |u - v|; u * v]`` is the default. ``u`` and ``v`` alone depend on
    which sentence comes first; ``["sum", "abs-diff", "product"]`` does not, so a head on those
    views gives the same output for (a, b) and (b, a), as paraphrase and similarity labels are.
    ``cross`` is the pooled encoding of the concatenated pair ``[CLS] a [SEP] b [SEP]`` (the
    ``hybrid-pair`` input format's third sequence).
    """
    def cross_view() -> torch.Tensor:
        if cross is None:
            raise ValueError("pair view 'cross' needs the concatenated pair (input = \"hybrid-pair\")")
        return cross

    views = {"u": lambda: u, "v": lambda: v, "sum": lambda: u + v, "abs-diff": lambda: (u - v).abs(),
             "product": lambda: u * v, "cross": cross_view}
    return torch.cat([views[p]() for p in parts], dim=-1)


def pooled_input(features: Features, how: Pooling, parts: Sequence[str]) -> torch.Tensor:
    """The head's input vector: one pooled sequence, or the pair features of two (a third
    sequence, the concatenated pair, gives the ``cross`` view)."""
    if features.num_sequences == 1:
        return pool(features, 0, how)
    cross = pool(features, 2, how) if features.num_sequences > 2 and "cross" in parts else None
    return pair_features(pool(features, 0, how), pool(features, 1, how), parts, cross)


def check_pair_views(parts: Sequence[str], input_format: Any | None) -> str | None:
    """Why a head's ``pair`` views do not fit its input format, or None (single-sentence formats
    ignore them)."""
    if not parts:
        return "pair needs at least one of u, v, sum, abs-diff, product, cross"
    sequences = getattr(input_format, "num_sequences", None)
    if sequences == 2 and "cross" in parts:
        return ("pair view 'cross' needs the concatenated pair as a third sequence: set input = \"hybrid-pair\" "
                "for this task, or drop 'cross'")
    if sequences == 3 and "cross" not in parts:
        return ("input \"hybrid-pair\" encodes the concatenated pair for the 'cross' view, which pair does not use: "
                "add \"cross\" to pair, or use input = \"separate-pair\"")
    return None


def input_width(hidden_size: int, num_sequences: int, parts: Sequence[str]) -> int:
    """Width of :func:`pooled_input` for an input format giving ``num_sequences`` feature sets."""
    return hidden_size if num_sequences == 1 else hidden_size * len(parts)


class TaskHeadModule(nn.Module):
    """Base class of heads: the loss and label mapping for the task's label kind."""

    def __init__(self, task: Any, class_weights: Sequence[float] | None = None):
        super().__init__()
        self.label_kind: str = task.label_kind
        self.num_classes: int | None = task.num_classes
        self.label_range: tuple[float, float] | None = task.label_range
        weights = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    @property
    def out_features(self) -> int:
        return self.num_classes if self.label_kind == "multiclass" else 1

    def loss(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        predictions = predictions.float()
        if self.label_kind == "multiclass":
            return F.cross_entropy(predictions, labels.long(), weight=self.class_weights)
        if self.label_kind == "binary":
            target = labels.float()
            if self.class_weights is None:
                return F.binary_cross_entropy_with_logits(predictions, target)
            per_example = F.binary_cross_entropy_with_logits(predictions, target, reduction="none")
            w = self.class_weights[target.long()]
            return (per_example * w).sum() / w.sum()
        return F.mse_loss(predictions, labels.float())

    def predict(self, predictions: torch.Tensor) -> torch.Tensor:
        if self.label_kind == "multiclass":
            return predictions.argmax(dim=-1)
        if self.label_kind == "binary":
            return (predictions > 0).long()
        low, high = self.label_range
        return predictions.float().clamp(low, high)

    def init_output(self, layer: nn.Linear) -> nn.Linear:
        """Start a regression head's output layer at the middle of the label range.

        With the usual zero-centred init a fresh STS head predicts ~0 for labels averaging ~2.7,
        and its first hundred steps go to moving the bias; starting at the midpoint lets the
        weights learn the similarity from the first step (classification heads are untouched).
        """
        if self.label_kind == "regression" and layer.bias is not None:
            low, high = self.label_range
            with torch.no_grad():
                layer.bias.fill_((low + high) / 2)
        return layer

    def squeeze_output(self, out: torch.Tensor) -> torch.Tensor:
        """``[B, 1]`` -> ``[B]`` for binary and regression heads."""
        return out.squeeze(-1) if self.label_kind != "multiclass" else out


def check_class_weights(task: Any, class_weights: Sequence[float] | None) -> str | None:
    """A reason why ``class_weights`` does not fit ``task``, or None."""
    if class_weights is None:
        return None
    if task.label_kind == "regression":
        return "class_weights apply to classification tasks only"
    if len(class_weights) != task.num_classes:
        return f"class_weights needs {task.num_classes} numbers, got {len(class_weights)}"
    if any(w <= 0 for w in class_weights):
        return "class_weights must be positive"
    return None
