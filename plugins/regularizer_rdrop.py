"""The ``rdrop`` regularizer: R-Drop, consistency between two dropout passes.

Liang, Wu, Li, Wang, Meng, Qin, Chen, Zhang and Liu (2021), "R-Drop: Regularized Dropout for
Neural Networks", NeurIPS 2021. Each batch goes through the model twice; dropout makes the two
passes two different sub-models, and the objective pulls their predictions together:

    L = 1/2 (L_1 + L_2) + alpha / 4 * D(P_1, P_2)

with ``L_k`` the task loss of pass ``k`` and ``D`` the symmetric divergence: for
classification ``KL(P_1 || P_2) + KL(P_2 || P_1)`` of the softmax (multiclass) or Bernoulli
(binary: one logit) distributions, for regression the squared difference of the two scores.
The paper's loss (its eq. 3) is ``L_1 + L_2 + alpha * 1/2 * D`` (the NLL of both passes plus
alpha times the mean of the two KLs); ours is exactly that divided by two, so the task term
keeps the scale of the baseline's loss (the learning rate means the same) and ``alpha`` keeps
the paper's meaning. The engine already ran pass 1 (``context.predictions``,
``context.loss``), so the penalty is ``1/2 (L_2 - L_1) + alpha / 4 * D`` and costs one more
forward pass per batch.
Everything is computed in fp32 and averaged over the batch.

Options: ``alpha`` (default 1.0; the paper uses 0.1 to 1.0 on GLUE with BERT-base/RoBERTa),
``tasks`` (default: all). Needs dropout (``model.hidden_dropout`` > 0, MiniLM's default 0.1):
without it both passes agree and the penalty is 0.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F

from mtbert.api import hookimpl, option, unconfigured_task


def symmetric_divergence(label_kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per example: KL(p||q) + KL(q||p) (classes), or (a - b)^2 (regression), in fp32: ``[B]``."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        a, b = a.float(), b.float()
        if label_kind == "multiclass":
            la, lb = F.log_softmax(a, dim=-1), F.log_softmax(b, dim=-1)
            return ((la.exp() - lb.exp()) * (la - lb)).sum(dim=-1)
        if label_kind == "binary":  # the Bernoulli KLs of the two logits sum to (sig(a) - sig(b)) (a - b)
            return (torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)
        return (a - b).square()


class RDropState:
    def __init__(self, options: "RDrop"):
        self.options = options
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def setup(self, model: Any) -> None:
        pass

    def penalty(self, context: Any) -> torch.Tensor | None:
        opts = self.options
        if opts.tasks is not None and context.task not in opts.tasks:
            return None
        head = context.model.heads[context.task]
        second = context.model(context.batch)  # another dropout mask
        loss_2 = head.loss(second, context.batch.labels)
        divergence = symmetric_divergence(head.label_kind, context.predictions, second).mean()
        term = 0.5 * (loss_2 - context.loss) + 0.25 * opts.alpha * divergence
        self._record("divergence", float(divergence.detach()))
        self._record("penalty", float(term.detach()))
        return term

    def _record(self, key: str, value: float) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + value
        self._counts[key] = self._counts.get(key, 0) + 1

    def logs(self) -> dict[str, float]:
        """Means since the last call: the divergence D and the term added to the loss."""
        out = {k: self._sums[k] / self._counts[k] for k in self._sums}
        self._sums.clear()
        self._counts.clear()
        return out


@attrs.define
class RDrop:
    """R-Drop: the symmetric KL between two dropout passes of each batch (Liang et al. 2021)."""

    alpha: float = option(1.0, help="weight of the symmetric divergence (paper: 0.1 to 1.0 on GLUE)", min=0)
    tasks: list[str] | None = option(None, help="tasks to regularize (default: all)")

    def check_tasks(self, task_names: list[str]) -> str | None:
        return unconfigured_task(self.tasks, task_names)

    def build(self) -> RDropState:
        return RDropState(self)


@hookimpl
def mtbert_register_regularizers(register):
    register("rdrop", RDrop)
