"""The ``norm-penalty`` regularizer: weight * ||head weights||_p added to a task's loss.

Report 004 (Aggarwal & Cruz, "Multi-task Learning using BERT", CS224N) added
``0.05 * ||weights||_p`` with p = 1 or infinity to the STS loss and kept the l_inf version in
its final model (dev STS 0.338 -> 0.363 over gradient surgery alone); which weights it
penalised is not stated. Here the choice is explicit: the weight matrices (parameters with two
or more dimensions) of the heads of ``tasks`` (default: every task's head), plus their 1-d
parameters (biases, scales) with ``bias = true``. The encoder is never penalised (l2 on all
parameters is AdamW's ``optim.weight_decay``). When a batch of task t is trained, t's loss gets
``weight * N(head_t)`` with

* ``reduce = "joint"`` (default): N = the p-norm of all chosen parameters of the head taken as
  one vector (l1: sum of |w|; l2: sqrt of the sum of squares; linf: the largest |w|);
* ``reduce = "sum"``: N = the sum of each parameter tensor's p-norm.

The norm is not squared (``norm = "l2"`` is the Euclidean norm, not weight decay's square).
Computed in fp32. Defaults are report 004's final choice: ``norm = "linf"``, ``weight = 0.05``.
Note that l_inf's gradient reaches only the largest weight, so it barely constrains a head
(report 004 observed as much).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch

from mtbert.api import did_you_mean, hookimpl, option, RecipeError, unconfigured_task

NormName = Literal["l1", "l2", "linf"]
_ORD = {"l1": 1.0, "l2": 2.0, "linf": float("inf")}


def chosen_parameters(head: torch.nn.Module, include_bias: bool) -> list[torch.nn.Parameter]:
    return [p for p in head.parameters() if p.requires_grad and (p.dim() >= 2 or include_bias)]


def norm_of(parameters: list[torch.Tensor], norm: NormName, reduce: Literal["joint", "sum"]) -> torch.Tensor:
    """The joint p-norm of the tensors as one vector, or the sum of their p-norms (fp32)."""
    order = _ORD[norm]
    each = torch.stack([torch.linalg.vector_norm(p.float(), ord=order) for p in parameters])
    if reduce == "sum":
        return each.sum()
    return torch.linalg.vector_norm(each, ord=order)


class NormPenaltyState:
    def __init__(self, options: "NormPenalty"):
        self.options = options
        self.parameters: dict[str, list[torch.nn.Parameter]] = {}
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def setup(self, model: Any) -> None:
        names = list(self.options.tasks) if self.options.tasks is not None else list(model.heads.keys())
        for name in names:
            if name not in model.heads:
                raise RecipeError(f"regularizers: norm-penalty task '{name}' has no head{did_you_mean(name, list(model.heads.keys()))}")
            self.parameters[name] = chosen_parameters(model.heads[name], self.options.bias)

    def penalty(self, context: Any) -> torch.Tensor | None:
        params = self.parameters.get(context.task)
        if not params or self.options.weight == 0:
            return None
        value = self.options.weight * norm_of(params, self.options.norm, self.options.reduce)
        key = context.task
        self._sums[key] = self._sums.get(key, 0.0) + float(value.detach())
        self._counts[key] = self._counts.get(key, 0) + 1
        return value

    def logs(self) -> dict[str, float]:
        """Mean penalty per task since the last call."""
        out = {f"penalty/{k}": self._sums[k] / self._counts[k] for k in self._sums}
        self._sums.clear()
        self._counts.clear()
        return out


@attrs.define
class NormPenalty:
    """An l1, l2 or l_inf penalty on task-head weights (report 004)."""

    norm: NormName = option("linf", help="l1, l2 (not squared) or linf (largest absolute weight)")
    weight: float = option(0.05, help="multiplier of the norm (report 004: 0.05)", min=0)
    tasks: list[str] | None = option(None, help="tasks whose heads are penalised (default: all)")
    bias: bool = option(False, help="also penalise the heads' 1-d parameters (biases)")
    reduce: Literal["joint", "sum"] = option("joint", help="joint: one norm of all chosen parameters; sum: sum of per-tensor norms")

    def check_tasks(self, task_names: list[str]) -> str | None:
        if self.tasks is not None and not self.tasks:
            return "tasks: give at least one task, or leave it out for all tasks"
        return unconfigured_task(self.tasks, task_names)

    def build(self) -> NormPenaltyState:
        return NormPenaltyState(self)


@hookimpl
def mtbert_register_regularizers(register):
    register("norm-penalty", NormPenalty)
