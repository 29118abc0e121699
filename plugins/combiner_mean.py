"""The ``mean`` loss combiner: the per-task losses averaged over the tasks of the step.

``total = (1/n) * sum_i L_i`` where ``n`` is the number of tasks that gave a batch in this
step, so every task's weight is ``1/n``. In one-task steps (round-robin and the like) ``n = 1``
and ``mean`` equals ``sum``; in all-tasks steps it scales the summed gradient by ``1/n``, which
keeps the loss (and, for SGD, the step size) independent of the number of tasks. No options.
"""

from __future__ import annotations


import attrs
import torch

from mtbert.api import Combined, StatelessCombiner, hookimpl


class MeanCombiner(StatelessCombiner):
    def __init__(self, task_names: list[str]):
        self.task_names = list(task_names)

    def combine(self, losses: dict[str, torch.Tensor]) -> Combined:
        if not losses:
            raise ValueError("mean: no task losses in this step")
        weight = 1.0 / len(losses)
        return Combined(weighted={t: loss * weight for t, loss in losses.items()}, weights={t: weight for t in losses})


@attrs.define
class Mean:
    """Average the per-task losses of a step (weight 1/n for the n tasks present)."""

    requires_step_mode = None

    def build(self, task_names: list[str], model: torch.nn.Module) -> MeanCombiner:
        return MeanCombiner(task_names)


@hookimpl
def mtbert_register_loss_combiners(register):
    register("mean", Mean)
