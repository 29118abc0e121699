"""The ``cosine`` head: cosine similarity of two sentence embeddings, scaled to the label range.

Sentence-BERT's regression objective (Reimers & Gurevych 2019, "Sentence-BERT: Sentence
Embeddings using Siamese BERT-Networks", section 3): each sentence of a pair is encoded on its
own, mean-pooled over its real tokens (the padding mask excluded), and the score is the
cosine of the two embeddings, trained with a mean squared error against the gold similarity.
Seed 000 put one linear layer and an activation before the cosine ("Baseline & Cosine"),
seed 002 used the plain cosine of the two [CLS] states with labels mapped onto [-1, 1].

Options and defaults:

* ``pooling = "mean"``: masked mean of token states (``cls``: [CLS] state, ``pooler``: BERT's
  tanh pooler);
* ``projection = []``: sizes of Linear layers applied to each embedding before the cosine
  (the same weights for both sentences); seed 000 is ``projection = [H]`` with an activation;
* ``activation = "tanh"``: after each projection layer (``none`` for purely linear ones).
  Beware ``relu``: non-negative vectors have a cosine in [0, 1], so under ``scale = "affine"``
  the head can never predict below the middle of the label range;
* ``dropout = 0.0``: dropout on the pooled embeddings before the projection and cosine;
* ``scale = "affine"``: how the cosine becomes a score in the task's range [low, high]:

  - ``affine``: [-1, 1] onto [low, high], ``score = low + (cos + 1) / 2 * (high - low)``
    (seed 002: labels normalised to the cosine's range);
  - ``positive``: [0, 1] onto [low, high], ``score = low + cos * (high - low)``. This is
    Sentence-BERT's ``CosineSimilarityLoss`` (MSE between the cosine and ``label / 5``):
    negative cosines are left as they are in the loss, so they keep their gradient towards
    the label, and clamped to ``low`` by ``predict``.

The loss is the mean squared error of the score in label units (the task's regression loss),
which is ``(high - low)**2 / 4`` times the MSE on [-1, 1] labels for ``affine`` and
``(high - low)**2`` (25 on STS) times Sentence-BERT's MSE on ``label / 5`` for ``positive``:
the same minimiser, a larger gradient (mind the learning rate when comparing). ``predict``
clamps scores to the label range. The cosine is computed in fp32 with ``eps = 1e-8``.
Only regression tasks whose input format encodes the two sentences apart (``num_sequences = 2``,
as ``separate-pair``) qualify; ``check`` refuses others.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mtbert.api import Features, InputFormat, Pooling, TaskHeadModule, activation_module, hookimpl, option, pool

ProjectionActivation = Literal["tanh", "relu", "leaky_relu", "gelu", "none"]


def scale_cosine(cos: torch.Tensor, low: float, high: float, how: str) -> torch.Tensor:
    """Map a cosine onto the label range [low, high] (see the module docstring)."""
    if how == "affine":
        return low + (cos + 1.0) * (0.5 * (high - low))
    if how == "positive":
        return low + cos * (high - low)
    raise ValueError(f"unknown scale {how!r}")


class CosineHeadModule(TaskHeadModule):
    def __init__(self, options: "CosineHead", hidden_size: int, task: Any, input_format: InputFormat):
        super().__init__(task)
        self.pooling = options.pooling
        self.scale = options.scale
        self.dropout = nn.Dropout(options.dropout)
        layers: list[nn.Module] = []
        width = hidden_size
        for size in options.projection:
            layers.append(nn.Linear(width, size))
            if options.activation != "none":
                layers.append(activation_module(options.activation))
            width = size
        self.projection = nn.Sequential(*layers)

    def embed(self, features: Features, index: int) -> torch.Tensor:
        return self.projection(self.dropout(pool(features, index, self.pooling)))

    def cosine(self, features: Features) -> torch.Tensor:
        u, v = self.embed(features, 0), self.embed(features, 1)
        return F.cosine_similarity(u.float(), v.float(), dim=-1, eps=1e-8)

    def forward(self, features: Features) -> torch.Tensor:
        if features.num_sequences != 2:
            raise ValueError("the cosine head needs two separately encoded sentences (input = \"separate-pair\")")
        low, high = self.label_range
        return scale_cosine(self.cosine(features), low, high, self.scale)


@attrs.define
class CosineHead:
    """Cosine similarity of the two sentence embeddings, scaled to the label range (Sentence-BERT)."""

    pooling: Pooling = option("mean", help="mean (masked mean of tokens), pooler (BERT's tanh pooler) or cls ([CLS] state)")
    projection: list[int] = option(factory=list, help="Linear layer sizes applied to each embedding before the cosine", min=1)
    activation: ProjectionActivation = option("tanh", help="activation after each projection layer (none: linear)")
    dropout: float = option(0.0, help="dropout on the pooled embeddings", min=0, max=1)
    scale: Literal["affine", "positive"] = option(
        "affine", help="affine: cosine [-1, 1] onto the label range; positive: [0, 1] onto it (Sentence-BERT)")

    def check(self, task: Any, input_format: InputFormat | None) -> str | None:
        if task.label_kind != "regression":
            return f"the cosine head scores similarity for regression tasks (like sts); this task is {task.label_kind}"
        if task.input_kind != "pair":
            return "the cosine head compares two sentences; this task has single sentences"
        if input_format is not None and input_format.num_sequences != 2:
            return (f"the cosine head needs each sentence encoded on its own (an input format giving two sequences, "
                    f"such as input = \"separate-pair\"); this one gives {input_format.num_sequences}")
        return None

    def build(self, hidden_size: int, task: Any, input_format: InputFormat) -> nn.Module:
        return CosineHeadModule(self, hidden_size, task, input_format)


@hookimpl
def mtbert_register_heads(register):
    register("cosine", CosineHead)
