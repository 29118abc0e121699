"""The ``cosent`` regularizer: the CoSENT ranking loss on a regression task's scores (STS).

Su (2022), "CoSENT: a more efficient sentence vector scheme than Sentence-BERT"; used as the
ranking term of AnglE (Li and Li 2023, "AnglE-optimized Text Embeddings"). STS is scored by
correlation, i.e. by the ORDER of the predicted similarities, while mean squared error
also spends effort on their absolute values. CoSENT penalises every pair of examples in a
batch that is ranked the wrong way round:

    L_cosent = log(1 + sum_{(i, j): y_i > y_j} exp(scale * (s_j - s_i)))

where ``s`` are the predictions normalised to the cosine's range,
``s = 2 (prediction - low) / (high - low) - 1`` for a task with labels in ``[low, high]``
(STS: 0..5), and ``scale`` is the paper's lambda (20). The term is added to the task's own loss
(the head's MSE keeps the scores on the label scale; CoSENT sharpens their order), weighted by
``weight``; it works with any regression head (linear on [u; v; |u-v|; u*v], cosine, MLP).
Computed in fp32 with ``logsumexp`` (the ``1`` is the ``exp(0)`` term), so it is stable at any
scale; a batch without two different labels adds 0.

Options: ``weight`` (default 1.0), ``scale`` (default 20, the paper's), ``tasks`` (default:
every regression task of the recipe; classification tasks are left alone).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from mtbert.api import hookimpl, option, unconfigured_task


def cosent(scores: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """``log(1 + sum_{y_i > y_j} exp(scale (s_j - s_i)))`` over the pairs of one batch."""
    s = scores.float().reshape(-1)
    y = labels.float().reshape(-1)
    differences = scale * (s[None, :] - s[:, None])  # [i, j] = scale * (s_j - s_i)
    wrong_way = y[:, None] > y[None, :]  # pairs where i should score above j
    terms = differences[wrong_way]
    zero = torch.zeros(1, device=s.device, dtype=s.dtype)
    return torch.logsumexp(torch.cat([zero, terms]), dim=0)


class CoSentState:
    def __init__(self, options: "CoSent"):
        self.options = options

    def setup(self, model: Any) -> None:
        pass

    def penalty(self, context: Any) -> torch.Tensor | None:
        opts = self.options
        head = context.model.heads[context.task]
        if head.label_kind != "regression" or (opts.tasks is not None and context.task not in opts.tasks):
            return None
        low, high = head.label_range
        with torch.autocast(device_type=context.predictions.device.type, enabled=False):
            scores = 2.0 * (context.predictions.float() - low) / (high - low) - 1.0
            term = opts.weight * cosent(scores, context.batch.labels, opts.scale)
        return term

    def logs(self) -> dict[str, float]:
        return {}  # the engine logs each task's term as train/<name>/<task>


@attrs.define
class CoSent:
    """CoSENT ranking loss on regression scores (Su 2022; AnglE's ranking term), added to the task loss."""

    weight: float = option(1.0, help="weight of the CoSENT term", min=0)
    scale: float = option(20.0, help="lambda: how sharply a wrongly ordered pair is penalised (paper: 20)", min=0, min_exclusive=True)
    tasks: list[str] | None = option(None, help="regression tasks to add it to (default: every regression task)")

    def check_tasks(self, task_names: list[str]) -> str | None:
        return unconfigured_task(self.tasks, task_names)

    def build(self) -> CoSentState:
        return CoSentState(self)


@hookimpl
def mtbert_register_regularizers(register):
    register("cosent", CoSent)
