"""The ``round-robin`` sampler (seed 000's curriculum).

Every epoch each task gives as many batches as the task with the fewest batches, so larger
tasks are down-sampled; the engine's per-task batch streams continue where they stopped, so
successive epochs see different parts of the larger tasks rather than discarding them.

* ``step = "one-task"`` (default): steps cycle through the tasks in recipe order
  (``sst, para, sts, sst, para, sts, ...``), one task's batch per optimizer step, or in a fresh
  random order each round with ``shuffle_order = true``.
* ``step = "all-tasks"``: each optimizer step takes one batch of every task (what PCGrad and
  GradNorm need).
"""

from __future__ import annotations

import attrs

from mtbert.api import SeededSampler, StepMode, hookimpl, option


class RoundRobinSampler(SeededSampler):
    def __init__(self, batches: dict[str, int], seed: int, step_mode: StepMode, shuffle_order: bool):
        super().__init__(batches, seed, step_mode)
        self.shuffle_order = shuffle_order

    def batches_per_epoch(self) -> dict[str, int]:
        smallest = min(self.batches.values())
        return {task: smallest for task in self.tasks}

    def epoch(self, index: int) -> list[tuple[str, ...]]:
        counts = self.batches_per_epoch()
        if self.step_mode == "all-tasks":
            return self.interleave_all_tasks(counts)
        rounds = min(counts.values())
        steps: list[tuple[str, ...]] = []
        for _ in range(rounds):
            order = self.tasks
            if self.shuffle_order:
                order = [self.tasks[i] for i in self.permutation(len(self.tasks))]
            steps.extend((task,) for task in order)
        return steps


@attrs.define
class RoundRobin:
    """Cycle through the tasks, each down-sampled to the smallest task's batch count per epoch."""

    step: StepMode = option("one-task", help="one-task: one task's batch per step; all-tasks: a batch of every task per step")
    shuffle_order: bool = option(False, help="shuffle the task order within each round (one-task mode)")

    def build(self, batches: dict[str, int], seed: int, epochs: int) -> RoundRobinSampler:
        return RoundRobinSampler(batches, seed, self.step, self.shuffle_order)


@hookimpl
def mtbert_register_samplers(register):
    register("round-robin", RoundRobin)
