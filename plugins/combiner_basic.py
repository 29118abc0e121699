"""The ``sum`` loss combiner: the total loss is the plain sum of the per-task losses.

This is the seeds' baseline. In one-task steps it is simply that task's loss.
"""

from __future__ import annotations


import attrs
import torch

from mtbert.api import Combined, StatelessCombiner, hookimpl


class SumCombiner(StatelessCombiner):
    def __init__(self, task_names: list[str]):
        self.task_names = task_names

    def combine(self, losses: dict[str, torch.Tensor]) -> Combined:
        return Combined(weighted=dict(losses), weights={task: 1.0 for task in losses})


@attrs.define
class Sum:
    """Sum the per-task losses with weight 1."""

    requires_step_mode = None

    def build(self, task_names: list[str], model: torch.nn.Module) -> SumCombiner:
        return SumCombiner(task_names)


@hookimpl
def mtbert_register_loss_combiners(register):
    register("sum", Sum)
