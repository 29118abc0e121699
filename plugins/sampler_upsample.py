"""The ``upsample`` sampler: every task up-sampled to the largest task (MT-DNN with upsampling).

Sources: X. Liu, P. He, W. Chen, J. Gao, 2019, "Multi-Task Deep Neural Networks for Natural
Language Understanding" (ACL), Algorithm 1: minibatches of all tasks merged and shuffled
every epoch; and C. Kalicki, "Multiple Strategies to Improve minBERT Multitask Learning"
(Stanford CS224N report, seed 001), Algorithm 2 "MT DNN w/ upsampling": the smaller tasks are
up-sampled so that every task has as many batches as the largest one.

Batches per task per epoch: ``max_s n_s`` for every task ``t`` (``n_t`` = the task's batches
in one full pass). A task with fewer batches repeats: its stream starts another pass, newly
shuffled, so repeats are spread over different batch compositions. One-task mode has
``T * max_s n_s`` steps per epoch (``T`` tasks); all-tasks mode has ``max_s n_s`` steps, each
with a batch of every task. (Seed 001's pseudo-code is ambiguous about whether one step visits
one task or all; both are available through ``step``.)

Options (defaults in brackets):

* ``step`` ["one-task"]: one task's batch per optimizer step, or ``"all-tasks"``: a batch of
  every task per step (PCGrad, GradNorm).
* ``order`` ["shuffled"]: one-task mode only. ``shuffled``: the steps of all tasks in a random
  order redrawn every epoch from the sampler's seeded generator (MT-DNN);
  ``round-robin``: tasks in recipe order, again and again.
"""

from __future__ import annotations

import attrs

from mtbert.api import EqualCountSampler, ORDER_HELP, Order, StepMode, hookimpl, option


@attrs.define
class Upsample:
    """Every task up-sampled to the largest task: max_s n_s batches of each task per epoch."""

    step_modes = ('one-task', 'all-tasks')  # the step values this sampler accepts

    step: StepMode = option("one-task", help="one-task: one task's batch per step; all-tasks: a batch of every task per step")
    order: Order = option("shuffled", help=ORDER_HELP)

    def build(self, batches: dict[str, int], seed: int, epochs: int) -> EqualCountSampler:
        return EqualCountSampler(batches, seed, self.step, self.order, max(batches.values(), default=0))


@hookimpl
def mtbert_register_samplers(register):
    register("upsample", Upsample)
