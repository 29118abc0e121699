"""The ``pair-classifier`` head: a classifier over the features of two separately encoded sentences.

InferSent (Conneau, Kiela, Schwenk, Barrault & Bordes 2017, "Supervised Learning of Universal
Sentence Representations from Natural Language Inference Data", section 3.1) classifies a
sentence pair from ``[u; v; |u - v|; u * v]``, u and v being the two sentence embeddings,
through a multilayer perceptron (one hidden layer of 512 units); Sentence-BERT (Reimers &
Gurevych 2019, "Sentence-BERT", section 3, classification objective) uses
``softmax(W [u; v; |u - v|])`` (``pair = ["u", "v", "abs-diff"]``, no hidden layer) and reports
that adding ``u * v`` did not help on NLI. ``|u - v|`` and ``u * v`` are what let a linear layer
express similarity: on ``[u; v]`` alone its score is ``f(u) + g(v)``.

Options and defaults:

* ``pair = ["u", "v", "abs-diff", "product"]``: the views, in order;
* ``hidden = []``: hidden layer sizes (InferSent: ``[512]``); ``activation = "relu"`` after each
  (``relu``, ``leaky_relu``, ``gelu``, ``tanh``), ``dropout = 0.1`` before each Linear layer
  (one number or one per layer);
* ``pooling = "mean"``: how each sentence becomes a vector (masked mean, ``cls``, ``pooler``);
* ``class_weights``: per-class weights of a classification loss.

The output follows the task's label kind (``C`` logits, one logit, or one score with MSE).
Only sentence pairs encoded separately (``input = "separate-pair"``) qualify: concatenated
pairs are one sequence (use ``linear`` or ``mlp``) and single sentences have no pair.
"""

from __future__ import annotations

from typing import Any

import attrs
from torch import nn

from mtbert.api import (
    Activation, Features, InputFormat, PairPart, Pooling, TaskHeadModule, build_mlp, check_class_weights,
    check_dropout, check_pair_views, hookimpl, option, pair_features, pool,
)


class PairClassifierModule(TaskHeadModule):
    def __init__(self, options: "PairClassifierHead", hidden_size: int, task: Any, input_format: InputFormat):
        super().__init__(task, options.class_weights)
        self.pooling = options.pooling
        self.pair = list(options.pair)
        self.mlp = build_mlp(hidden_size * len(self.pair), options.hidden, self.out_features, options.activation,
                             options.dropout)
        self.init_output(self.mlp[-1])

    def forward(self, features: Features):
        if features.num_sequences != 2:
            raise ValueError("the pair-classifier head needs two separately encoded sentences (input = \"separate-pair\")")
        x = pair_features(pool(features, 0, self.pooling), pool(features, 1, self.pooling), self.pair)
        return self.squeeze_output(self.mlp(x))


@attrs.define
class PairClassifierHead:
    """InferSent / Sentence-BERT pair classifier over [u; v; |u-v|; u*v] of two sentence embeddings."""

    pair: list[PairPart] = option(
        factory=lambda: ["u", "v", "abs-diff", "product"], help="pair views concatenated, in order")
    hidden: list[int] = option(factory=list, help="hidden layer sizes (InferSent: [512]; [] = one linear layer)", min=1)
    activation: Activation = option("relu", help="activation after each hidden layer: relu, leaky_relu, gelu or tanh")
    dropout: float | list[float] = option(
        0.1, help="dropout before each Linear layer: one number, or one per layer (len(hidden) + 1)", min=0, max=1)
    pooling: Pooling = option("mean", help="mean (masked mean of tokens), pooler (BERT's tanh pooler) or cls ([CLS] state)")
    class_weights: list[float] | None = option(None, help="per-class loss weights (classification tasks)")

    def check(self, task: Any, input_format: InputFormat | None) -> str | None:
        if task.input_kind != "pair":
            return "the pair-classifier head needs sentence pairs; this task has single sentences (use linear or mlp)"
        if input_format is not None and input_format.num_sequences != 2:
            return (f"the pair-classifier head combines two separately encoded sentences (an input format giving two "
                    f"sequences, such as input = \"separate-pair\"); this one gives {input_format.num_sequences}: "
                    f"use linear or mlp")
        return (check_pair_views(self.pair, input_format) or check_dropout(self.dropout, self.hidden)
                or check_class_weights(task, self.class_weights))

    def build(self, hidden_size: int, task: Any, input_format: InputFormat) -> nn.Module:
        return PairClassifierModule(self, hidden_size, task, input_format)


@hookimpl
def mtbert_register_heads(register):
    register("pair-classifier", PairClassifierHead)
