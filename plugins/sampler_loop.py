"""The ``loop`` sampler: every task gives as many batches as a named task (seed 002's "Loop").

Source: S. Goel, H. Hidayatullah, Y. Nagafuchi, "minBERT for Sentiment Analysis, Paraphrase
Detection, and Semantic Textual Similarity" (Stanford CS224N report, seed 002), "Data
Engineering": the full SST set each epoch, STS repeated (looped) and a random subset of Quora,
"such that all datasets match the length of the SST dataset". Their best model used it
(Cos + ReLU + Loop: dev mean 0.581).

Batches per task per epoch: ``n_to`` for every task (``n_to`` = the named task's batches in one
full pass). Larger tasks are down-sampled: the next ``n_to`` batches of their stream, which is
a random subset of a shuffled pass, and the stream continues there next epoch, so successive
epochs see different examples until the pass is used up. Smaller tasks repeat: their stream
starts another, newly shuffled pass. One-task mode has ``T * n_to`` steps per epoch (``T``
tasks), all-tasks mode ``n_to`` steps with a batch of every task.

Options (defaults in brackets):

* ``to`` [required]: the task whose batch count every task matches, e.g. ``to = "sst"``;
  it must be one of the recipe's ``[tasks]`` (checked when the recipe is validated).
  A stage that does not train that task (e.g. a one-task intermediate stage) gives every
  task its full pass ``n_t``.
* ``step`` ["one-task"]: one task's batch per optimizer step, or ``"all-tasks"``.
* ``order`` ["round-robin"]: one-task mode only; ``round-robin`` visits the tasks in recipe
  order again and again, ``shuffled`` draws a random order every epoch (the report does not
  state its order).
"""

from __future__ import annotations

import attrs

from mtbert.api import EqualCountSampler, ORDER_HELP, Order, StepMode, hookimpl, option, unknown_task


class LoopSampler(EqualCountSampler):
    """Every task matched to the named task's batch count (full passes if the stage lacks it)."""

    def __init__(self, batches: dict[str, int], seed: int, step_mode: StepMode, order: Order, to: str):
        self.to = to
        self.fallback = to not in batches
        super().__init__(batches, seed, step_mode, order, 0 if self.fallback else batches[to])

    def batches_per_epoch(self) -> dict[str, int]:
        if self.fallback:
            return dict(self.batches)
        return super().batches_per_epoch()


@attrs.define
class Loop:
    """Every task looped or cut to the named task's size: n_to batches of each task per epoch."""

    step_modes = ('one-task', 'all-tasks')  # the step values this sampler accepts

    to: str = option(help="the task whose batches per pass every task matches per epoch, e.g. \"sst\"")
    step: StepMode = option("one-task", help="one-task: one task's batch per step; all-tasks: a batch of every task per step")
    order: Order = option("round-robin", help=ORDER_HELP)

    def check_tasks(self, task_names: list[str]) -> str | None:
        return unknown_task([self.to], task_names, "to")

    def build(self, batches: dict[str, int], seed: int, epochs: int) -> LoopSampler:
        return LoopSampler(batches, seed, self.step, self.order, self.to)


@hookimpl
def mtbert_register_samplers(register):
    register("loop", Loop)
