"""The ``proportional`` sampler: each step's task drawn with probability ∝ its batch count.

Sources: A. C. Stickland, I. Murray, 2019, "BERT and PALs: Projected Attention Layers for
Efficient Adaptation in Multi-Task Learning" (ICML), "proportional sampling" p_t ∝ n_t; with
``exact = true`` it is X. Liu, P. He, W. Chen, J. Gao, 2019, "Multi-Task Deep Neural Networks
for Natural Language Understanding" (ACL), Algorithm 1: every minibatch of every task once per
epoch, merged and shuffled. It plans exactly as the ``temperature`` sampler at T = 1 (a test checks it).

Per epoch there are ``N = sum_t n_t`` steps (``n_t`` = task t's batches in one full pass) and
``p_t = n_t / N``. Batches per task per epoch: ``n_t`` in expectation (independent draws,
multinomial counts); with ``exact = true`` exactly ``n_t``, in a random order redrawn every
epoch. ``batches_per_epoch()`` reports ``n_t``.

Options (defaults in brackets):

* ``exact`` [false]: every task exactly ``n_t`` batches per epoch, shuffled (MT-DNN), instead of
  independent draws.
* ``step`` ["one-task"]: only ``"one-task"``: drawing a task per step has no meaning when
  every step holds every task, so ``"all-tasks"`` is a recipe error (use ``upsample`` or
  ``loop`` for PCGrad or GradNorm).
"""

from __future__ import annotations

import attrs

from mtbert.api import SeededSampler, StepMode, hookimpl, one_task_only, option


class ProportionalSampler(SeededSampler):
    """Temperature sampling at T = 1: p_t = n_t / N, N = sum_t n_t steps per epoch."""

    def __init__(self, batches: dict[str, int], seed: int, epochs: int, exact: bool):
        super().__init__(batches, seed, "one-task")
        self.exact = exact
        self.total = sum(self.batches.values())

    def batches_per_epoch(self) -> dict[str, int]:
        return dict(self.batches)

    def steps_per_epoch(self) -> int:
        return self.total

    def epoch(self, index: int) -> list[tuple[str, ...]]:
        return self.sampled_epoch(self.exact, self.batches_per_epoch,
                                  lambda: {task: n / self.total for task, n in self.batches.items()}, self.total)


@attrs.define
class Proportional:
    """Each step's task drawn with probability n_t / sum_s n_s (n_t batches of each task per epoch on average)."""

    step_modes = ('one-task',)  # the step values this sampler accepts

    exact: bool = option(False, help="every task exactly n_t batches per epoch in a random order (MT-DNN) instead of independent draws")
    step: StepMode = option("one-task", help="must be one-task: the sampler draws one task per step")

    def __attrs_post_init__(self) -> None:
        if self.step != "one-task":
            raise ValueError(one_task_only(
                "proportional", "it draws one task per step, which means nothing when every step holds every task",
                "use 'upsample' or 'loop' for a batch of every task per step",
            ))

    def build(self, batches: dict[str, int], seed: int, epochs: int) -> ProportionalSampler:
        return ProportionalSampler(batches, seed, epochs, self.exact)


@hookimpl
def mtbert_register_samplers(register):
    register("proportional", Proportional)
