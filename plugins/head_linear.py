"""The ``linear`` head: one linear layer on pooled encoder output (the reports' baseline head).

Single sentences: ``Linear(pool(h))``. Separately encoded pairs: ``Linear([u; v; |u-v|; u*v])``
by default (Sentence-BERT's classification features, Reimers & Gurevych 2019); the reports'
literal baseline ``Linear([u; v])`` is ``pair = ["u", "v"]`` — it cannot express similarity
(its score is f(u) + g(v)), which RESULTS.md measures. Concatenated pairs are one sequence.

Defaults: mean pooling over real tokens (how all-MiniLM-L6-v2 was trained; BERT's tanh pooler
is ``pooling = "pooler"``), dropout 0.1 before the layer, no class weights.
"""

from __future__ import annotations

from typing import Any

import attrs
from torch import nn

from mtbert.api import (
    Features, InputFormat, PairPart, Pooling, TaskHeadModule, check_class_weights, check_pair_views, hookimpl,
    input_width, option, pooled_input,
)


class LinearHeadModule(TaskHeadModule):
    def __init__(self, options: "LinearHead", hidden_size: int, task: Any, input_format: InputFormat):
        super().__init__(task, options.class_weights)
        self.pooling = options.pooling
        self.pair = list(options.pair)
        self.dropout = nn.Dropout(options.dropout)
        width = input_width(hidden_size, input_format.num_sequences, self.pair)
        self.linear = self.init_output(nn.Linear(width, self.out_features))

    def forward(self, features: Features):
        x = pooled_input(features, self.pooling, self.pair)
        return self.squeeze_output(self.linear(self.dropout(x)))


@attrs.define
class LinearHead:
    """One linear layer on the pooled encoder output."""

    default_for = ("single", "pair")  # the head of every task unless a recipe names one

    pooling: Pooling = option("mean", help="mean (masked mean of tokens), pooler (BERT's tanh pooler) or cls ([CLS] state)")
    pair: list[PairPart] = option(
        factory=lambda: ["u", "v", "abs-diff", "product"], help="pair views concatenated for separately encoded pairs"
    )
    dropout: float = option(0.1, help="dropout before the linear layer", min=0, max=1)
    class_weights: list[float] | None = option(None, help="per-class loss weights (classification tasks)")

    def check(self, task: Any, input_format: InputFormat | None) -> str | None:
        return check_pair_views(self.pair, input_format) or check_class_weights(task, self.class_weights)

    def build(self, hidden_size: int, task: Any, input_format: InputFormat) -> nn.Module:
        return LinearHeadModule(self, hidden_size, task, input_format)


@hookimpl
def mtbert_register_heads(register):
    register("linear", LinearHead)
