"""The ``weights`` loss combiner: fixed per-task loss weights from the recipe.

``total = sum_i w_i * L_i`` with ``w_i`` taken from the recipe's ``weights`` table, e.g.::

    loss_combiner = { name = "weights", weights = { sst = 1.0, para = 0.5 } }

Options: ``weights`` maps task names to non-negative weights (a name that is not one of the
recipe's tasks is a recipe error, with a suggestion); ``default`` (1.0) is the weight of every
task the table does not name. A weight of 0 keeps a task's batches in the loop (and its
head untrained through this loss) without letting it move the encoder. The weights are
constant: for learned weights see ``uncertainty`` and ``gradnorm``.
"""

from __future__ import annotations


import attrs
import torch

from mtbert.api import Combined, MtbertError, StatelessCombiner, did_you_mean, hookimpl, option


class WeightsCombiner(StatelessCombiner):
    def __init__(self, weights: dict[str, float]):
        self.weights = dict(weights)

    def combine(self, losses: dict[str, torch.Tensor]) -> Combined:
        return Combined(
            weighted={t: loss * self.weights[t] for t, loss in losses.items()},
            weights={t: self.weights[t] for t in losses},
        )


@attrs.define
class Weights:
    """Fixed per-task loss weights: total = sum_i w_i * L_i."""

    weights: dict[str, float] = option(factory=dict, help="per-task loss weight, e.g. { sst = 1.0, para = 0.5 }")
    default: float = option(1.0, help="weight of the tasks that `weights` does not name", min=0)

    requires_step_mode = None

    def check_tasks(self, task_names: list[str]) -> str | None:
        """One line naming the first problem of ``weights`` against the recipe's tasks, or None."""
        for task, weight in self.weights.items():
            if task not in task_names:
                return (f"weights names task '{task}', which the recipe does not configure"
                        f"{did_you_mean(task, task_names)} (tasks: {', '.join(task_names)})")
            if not weight >= 0:  # also refuses NaN
                return f"the weight of task '{task}' must be >= 0, got {weight}"
        return None

    def build(self, task_names: list[str], model: torch.nn.Module) -> WeightsCombiner:
        reason = self.check_tasks(list(task_names))
        if reason:
            raise MtbertError(f"loss_combiner 'weights': {reason}")
        return WeightsCombiner({t: float(self.weights.get(t, self.default)) for t in task_names})


@hookimpl
def mtbert_register_loss_combiners(register):
    register("weights", Weights)
