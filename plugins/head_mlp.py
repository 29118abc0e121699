"""The ``mlp`` head: a multilayer perceptron on the pooled encoder output.

A feed-forward classifier on the sentence representation is the standard fine-tuning head
(Devlin et al. 2019, "BERT", section 4 uses one layer; the reports add hidden layers). Report 002
("ReLU") used hidden sizes 256 and 64 with ReLU between layers; report 004 an STS head
``Linear -> ReLU -> dropout 0.3 -> Linear`` (one hidden layer) and found LeakyReLU better on
dev. The pair features for separately encoded pairs are Sentence-BERT's
(Reimers & Gurevych 2019, "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks").

Layout, for ``hidden = [h1, ..., hn]``::

    x -> dropout[0] -> Linear(in, h1) -> act -> dropout[1] -> ... -> Linear(hn, out)

Options and defaults:

* ``hidden = [256, 64]``: sizes of the hidden layers (``[]`` is the linear head);
* ``activation = "relu"``: ``relu``, ``leaky_relu`` (slope ``negative_slope``, 0.01),
  ``gelu`` (exact erf GELU) or ``tanh``, after every hidden layer;
* ``dropout = 0.1``: one number for every layer, or a list with one entry per Linear layer
  (``len(hidden) + 1`` numbers), each applied to that layer's input;
* ``pooling = "mean"``: masked mean over real tokens (``cls``: the [CLS] state, ``pooler``:
  BERT's tanh pooler);
* ``pair = ["u", "v", "abs-diff", "product"]``: views concatenated for ``separate-pair``
  input (ignored for single sentences and ``concat-pair``, which are one sequence);
* ``class_weights``: per-class weights of the classification loss (none by default).

The output and loss follow the task's label kind (:class:`mtbert.engine.heads.TaskHeadModule`):
``C`` logits and cross-entropy, one logit and binary cross-entropy, or one score and MSE.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import attrs
from torch import nn

from mtbert import hookimpl
from mtbert.engine.components import Features
from mtbert.engine.heads import (
    PairPart, Pooling, TaskHeadModule, check_class_weights, input_width, pooled_input, sequences_of,
)
from mtbert.schema import option

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


class MLPHeadModule(TaskHeadModule):
    def __init__(self, options: "MLPHead", hidden_size: int, task: Any, input_format: str):
        super().__init__(task, options.class_weights)
        self.pooling = options.pooling
        self.pair = list(options.pair)
        width = input_width(hidden_size, sequences_of(input_format), self.pair)
        self.mlp = build_mlp(width, options.hidden, self.out_features, options.activation, options.dropout,
                             options.negative_slope)
        self.init_output(self.mlp[-1])

    def forward(self, features: Features):
        return self.squeeze_output(self.mlp(pooled_input(features, self.pooling, self.pair)))


@attrs.define
class MLPHead:
    """A multilayer perceptron on the pooled encoder output (hidden sizes, activation, dropout)."""

    hidden: list[int] = option(factory=lambda: [256, 64], help="hidden layer sizes ([] = one linear layer)", min=1)
    activation: Activation = option("relu", help="activation after each hidden layer: relu, leaky_relu, gelu or tanh")
    negative_slope: float = option(0.01, help="slope of leaky_relu for negative inputs", min=0)
    dropout: float | list[float] = option(
        0.1, help="dropout before each Linear layer: one number, or one per layer (len(hidden) + 1)", min=0, max=1)
    pooling: Pooling = option("mean", help="mean (masked mean of tokens), pooler (BERT's tanh pooler) or cls ([CLS] state)")
    pair: list[PairPart] = option(
        factory=lambda: ["u", "v", "abs-diff", "product"], help="pair views concatenated for separately encoded pairs"
    )
    class_weights: list[float] | None = option(None, help="per-class loss weights (classification tasks)")

    def check(self, task: Any, input_format: str | None) -> str | None:
        if not self.pair:
            return "pair needs at least one of u, v, abs-diff, product"
        return check_dropout(self.dropout, self.hidden) or check_class_weights(task, self.class_weights)

    def build(self, hidden_size: int, task: Any, input_format: str) -> nn.Module:
        return MLPHeadModule(self, hidden_size, task, input_format)


@hookimpl
def mtbert_register_heads(register):
    register("mlp", MLPHead)
