"""The ``in-turn`` sampler: every batch of one task, then every batch of the next (seed 001).

Source: C. Kalicki, "Multiple Strategies to Improve minBERT Multitask Learning"
(Stanford CS224N report, seed 001), Algorithm 1 "Multi-Task Learning: In Turn": each epoch
loops over the tasks and, for each, over *all* its minibatches, one optimizer update per
minibatch. Nothing is down-sampled, so the whole Quora set is used every epoch (the report's
best Para accuracy, 0.806 dev).

Batches per task per epoch: ``n_t`` (task ``t``'s batches in one full pass over its training
data); an epoch has ``sum_t n_t`` steps. Each epoch is exactly one pass over every task, in
the engine stream's freshly shuffled batch order.

Options (defaults in brackets):

* ``shuffle_tasks`` [false]: the task order is the recipe's ``[tasks]`` order; with ``true``
  a new random task order is drawn every epoch from the sampler's seeded generator (the
  report does not state its order).
* ``step`` ["one-task"]: only ``"one-task"`` is accepted. In-turn training has no step that
  holds every task, so ``"all-tasks"`` (what PCGrad and GradNorm need) is refused as a recipe
  error rather than silently turned into another schedule: use ``upsample`` or ``loop`` with
  ``step = "all-tasks"`` instead.

Note: ``train.max_steps_per_epoch`` cuts the plan from its start, so with in-turn a short cut
may never reach the later tasks.
"""

from __future__ import annotations

import attrs

from mtbert.api import SeededSampler, StepMode, hookimpl, one_task_only, option


class InTurnSampler(SeededSampler):
    """Whole tasks one after another: ``n_t`` batches of each task per epoch."""

    def __init__(self, batches: dict[str, int], seed: int, shuffle_tasks: bool):
        super().__init__(batches, seed, "one-task")
        self.shuffle_tasks = shuffle_tasks

    def batches_per_epoch(self) -> dict[str, int]:
        return dict(self.batches)

    def task_order(self) -> list[str]:
        if not self.shuffle_tasks:
            return list(self.tasks)
        return [self.tasks[i] for i in self.permutation(len(self.tasks))]

    def epoch(self, index: int) -> list[tuple[str, ...]]:
        return [(task,) for task in self.task_order() for _ in range(self.batches[task])]


@attrs.define
class InTurn:
    """Every batch of one task, then the next task's (n_t batches of each task per epoch)."""

    step_modes = ('one-task',)  # the step values this sampler accepts

    step: StepMode = option("one-task", help="must be one-task: in-turn never puts every task in one step")
    shuffle_tasks: bool = option(False, help="draw a new random task order every epoch (default: recipe order)")

    def __attrs_post_init__(self) -> None:
        if self.step != "one-task":
            raise ValueError(one_task_only(
                "in-turn", "it trains all of one task's batches before the next task's, so no step holds every task",
                "use sampler 'upsample' or 'loop' for a batch of every task per step",
            ))

    def build(self, batches: dict[str, int], seed: int, epochs: int) -> InTurnSampler:
        return InTurnSampler(batches, seed, self.shuffle_tasks)


@hookimpl
def mtbert_register_samplers(register):
    register("in-turn", InTurn)
