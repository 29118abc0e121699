"""The ``random-subset`` sampler: each epoch, chosen tasks give only a random part of their data.

Source: S. Chu, F. Huang, K. Chotitamnavee, "BERT and Learnie: Multi-task Classification Across
Semantics Street" (Stanford CS224N report, seed 003), Sec. 3.1: round-robin training that
interleaves the batches of the three datasets each epoch, with a ``RandomSampler`` on the
Quora loader "sampling 6,000 random datapoints each time" (about the size of the other two
sets); all other tasks use all their data. Later (Sec. 3.5) they also sampled STS, with
negligible effect.

Batches per task per epoch, with ``n_t`` the task's batches in one full pass:

* ``k_t = min(batches[t], n_t)`` when ``batches`` names the task;
* otherwise ``k_t = min(n_t, max(1, round(f_t * n_t)))`` with ``f_t`` the task's ``fraction``
  (a single number for every task, or a table per task where unnamed tasks use 1.0;
  ``round`` rounds halves up).

One-task mode has ``sum_t k_t`` steps per epoch; all-tasks mode has ``max_t k_t`` steps, each
with a batch of every task (tasks with a smaller ``k_t`` repeat within the epoch).

Which batches: the next ``k_t`` of the task's stream, whose pass is freshly shuffled, so each
epoch's part is a uniformly random subset; the stream continues there next epoch. Unlike
seed 003's ``RandomSampler``, which drew an independent subset every epoch (possibly
repeating examples of the previous epoch while never showing others), successive epochs
here see disjoint parts until the whole task has been seen once.

To reproduce seed 003 (6,000 Quora examples per epoch at batch size 16, recipe order sst,
para, sts, round-robin interleaving): ``sampler = { name = "random-subset",
batches = { para = 375 } }``; ``fraction = { para = 0.0424 }`` is the same at any batch size.

Options (defaults in brackets):

* ``fraction`` [1.0]: the fraction (0, 1] of each task's batches used per epoch, one number
  for all tasks or a table per task, e.g. ``{ para = 0.1 }``.
* ``batches`` [{}]: per task, a fixed number of batches per epoch (at most a full pass);
  a task may be named in ``batches`` or in a ``fraction`` table, not both.
* ``step`` ["one-task"]: one task's batch per optimizer step, or ``"all-tasks"``.
* ``order`` ["round-robin"]: one-task mode only; ``round-robin`` visits the tasks in recipe
  order again and again (seed 003's interleaving; a task drops out once its ``k_t`` batches
  are spent), ``shuffled`` draws a random interleaving every epoch.
"""

from __future__ import annotations

import math

import attrs

from mtbert.api import ORDER_HELP, Order, SeededSampler, StepMode, hookimpl, one_task_plan, option, unknown_task


def subset_size(n: int, fraction: float) -> int:
    """``max(1, round(fraction * n))`` (halves up), never more than ``n``; 0 for an empty task."""
    if n <= 0:
        return 0
    return min(n, max(1, math.floor(fraction * n + 0.5)))


class RandomSubsetSampler(SeededSampler):
    """Per epoch, ``k_t`` batches of each task (a random part of its data)."""

    def __init__(self, batches: dict[str, int], seed: int, step_mode: StepMode, order: Order,
                 fraction: float | dict[str, float], fixed: dict[str, int]):
        super().__init__(batches, seed, step_mode)
        self.order = order
        self.counts: dict[str, int] = {}
        for task, n in self.batches.items():
            if task in fixed:
                self.counts[task] = min(fixed[task], n)
            else:
                f = fraction.get(task, 1.0) if isinstance(fraction, dict) else fraction
                self.counts[task] = subset_size(n, f)

    def batches_per_epoch(self) -> dict[str, int]:
        if self.step_mode == "all-tasks":
            steps = max(self.counts.values())
            return {task: steps for task in self.tasks}
        return dict(self.counts)

    def epoch(self, index: int) -> list[tuple[str, ...]]:
        if self.step_mode == "all-tasks":
            return self.interleave_all_tasks(self.counts)
        return one_task_plan(self, self.counts, self.order)


@attrs.define
class RandomSubset:
    """A random part of chosen tasks each epoch: k_t = round(fraction_t * n_t) batches of task t."""

    step_modes = ('one-task', 'all-tasks')  # the step values this sampler accepts

    fraction: float | dict[str, float] = option(
        1.0, help="fraction (0, 1] of each task's batches used per epoch: one number, or a table per task such as { para = 0.1 }",
        min=0, max=1, min_exclusive=True,
    )
    batches: dict[str, int] = option(factory=dict, help="per task, a fixed number of batches per epoch, such as { para = 375 } (at most a full pass)")
    step: StepMode = option("one-task", help="one-task: one task's batch per step; all-tasks: a batch of every task per step")
    order: Order = option("round-robin", help=ORDER_HELP)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.fraction, dict):
            for task, value in self.fraction.items():
                if not 0 < value <= 1:
                    raise ValueError(f"fraction.{task} = {value!r} must be greater than 0 and at most 1")
            both = sorted(set(self.fraction) & set(self.batches))
            if both:
                raise ValueError(f"task '{both[0]}' is named in both fraction and batches; keep one")
        for task, value in self.batches.items():
            if value < 1:
                raise ValueError(f"batches.{task} = {value!r} must be at least 1")

    def check_tasks(self, task_names: list[str]) -> str | None:
        if isinstance(self.fraction, dict):
            reason = unknown_task(self.fraction, task_names, "fraction")
            if reason:
                return reason
        return unknown_task(self.batches, task_names, "batches")

    def build(self, batches: dict[str, int], seed: int, epochs: int) -> RandomSubsetSampler:
        return RandomSubsetSampler(batches, seed, self.step, self.order, self.fraction, self.batches)


@hookimpl
def mtbert_register_samplers(register):
    register("random-subset", RandomSubset)
