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

The output and loss follow the task's label kind (:class:`mtbert.api.TaskHeadModule`):
``C`` logits and cross-entropy, one logit and binary cross-entropy, or one score and MSE.
"""

from __future__ import annotations

from typing import Any

import attrs
from torch import nn

from mtbert.api import (
    Activation, Features, InputFormat, PairPart, Pooling, TaskHeadModule, build_mlp, check_class_weights,
    check_dropout, check_pair_views, hookimpl, input_width, option, pooled_input,
)

class MLPHeadModule(TaskHeadModule):
    def __init__(self, options: "MLPHead", hidden_size: int, task: Any, input_format: InputFormat):
        super().__init__(task, options.class_weights)
        self.pooling = options.pooling
        self.pair = list(options.pair)
        width = input_width(hidden_size, input_format.num_sequences, self.pair)
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

    def check(self, task: Any, input_format: InputFormat | None) -> str | None:
        return (check_pair_views(self.pair, input_format) or check_dropout(self.dropout, self.hidden)
                or check_class_weights(task, self.class_weights))

    def build(self, hidden_size: int, task: Any, input_format: InputFormat) -> nn.Module:
        return MLPHeadModule(self, hidden_size, task, input_format)


@hookimpl
def mtbert_register_heads(register):
    register("mlp", MLPHead)
