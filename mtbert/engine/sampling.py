"""Shared machinery for sampler plugins: a seeded generator whose state is checkpointed, and plans.

A sampler plans a whole epoch at once (``epoch(index)`` returns the list of steps, each a
tuple of task names). The engine stores the plan and its position, so a run resumed in the
middle of an epoch continues with exactly the steps it would have taken.

A sampler decides, per epoch, how many batches each task gives and in which order; the
engine's per-task streams decide *which* batches (each stream reshuffles its data on every
pass and continues across epochs). The helpers here turn per-task counts into a plan:

* :func:`one_task_plan` with ``order = "shuffled"`` (a random interleaving drawn from the
  sampler's generator) or ``order = "round-robin"`` (tasks visited in recipe order again and
  again, a task dropping out once its batches for the epoch are spent);
* :meth:`SeededSampler.drawn_steps`: each step's task drawn independently with given probabilities;
* :func:`largest_remainder`: integer counts with a fixed total from fractional ones;
* :class:`EqualCountSampler`: every task gives the same number of batches per epoch;
* one-line reasons for recipe validation (:func:`unknown_task`, :func:`one_task_only`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Literal

import torch

from mtbert.engine.components import StepMode
from mtbert.schema import did_you_mean


class SeededSampler:
    """Base class: task names in recipe order, batch counts, a private generator, a step mode."""

    def __init__(self, batches: dict[str, int], seed: int, step_mode: StepMode):
        if not batches:
            raise ValueError("a sampler needs at least one task")
        self.tasks = list(batches)
        self.batches = dict(batches)
        self.step_mode: StepMode = step_mode
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    # Subclasses implement these two.
    def batches_per_epoch(self) -> dict[str, int]:
        raise NotImplementedError

    def epoch(self, index: int) -> list[tuple[str, ...]]:
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        counts = self.batches_per_epoch()
        if self.step_mode == "all-tasks":
            return max(counts.values())
        return sum(counts.values())

    def permutation(self, n: int) -> list[int]:
        return torch.randperm(n, generator=self.generator).tolist()

    def interleave_all_tasks(self, counts: dict[str, int]) -> list[tuple[str, ...]]:
        """All-tasks mode: step i takes a batch of every task (tasks with fewer batches repeat)."""
        return [tuple(self.tasks) for _ in range(max(counts.values()))]

    def shuffled_steps(self, counts: dict[str, int]) -> list[tuple[str, ...]]:
        """One-task mode: every task's batches, in a random order drawn from the generator."""
        steps = [(task,) for task in self.tasks for _ in range(counts[task])]
        return [steps[i] for i in self.permutation(len(steps))]

    def drawn_steps(self, probabilities: dict[str, float], count: int) -> list[tuple[str, ...]]:
        """One-task mode: ``count`` steps, each task drawn independently with its probability."""
        weights = torch.tensor([probabilities[task] for task in self.tasks], dtype=torch.float64)
        draws = torch.multinomial(weights, count, replacement=True, generator=self.generator)
        return [(self.tasks[i],) for i in draws.tolist()]

    def sampled_epoch(self, exact: bool, counts: Callable[[], dict[str, int]],
                      probabilities: Callable[[], dict[str, float]], total: int) -> list[tuple[str, ...]]:
        """One-task mode, ``total`` steps of a probability sampler: exactly ``counts()`` batches of
        each task in a random order (``exact``, MT-DNN's epochs), or ``total`` independent draws
        from ``probabilities()``. Only the one asked for is computed."""
        if total == 0:
            return []
        if exact:
            return self.shuffled_steps(counts())
        return self.drawn_steps(probabilities(), total)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


Order = Literal["shuffled", "round-robin"]

ORDER_HELP = (
    "order of the steps within an epoch (one-task mode): shuffled = a random interleaving redrawn "
    "every epoch; round-robin = tasks in recipe order, again and again"
)


def cycled_steps(tasks: list[str], counts: dict[str, int]) -> list[tuple[str, ...]]:
    """Tasks in the given order, again and again; a task whose count is spent is skipped."""
    left = {task: counts[task] for task in tasks}
    steps: list[tuple[str, ...]] = []
    while True:
        active = [task for task in tasks if left[task] > 0]
        if not active:
            return steps
        # A whole block of rounds in which every active task still has a batch.
        rounds = min(left[task] for task in active)
        steps.extend((task,) for _ in range(rounds) for task in active)
        for task in active:
            left[task] -= rounds


def one_task_plan(sampler: SeededSampler, counts: dict[str, int], order: Order) -> list[tuple[str, ...]]:
    """One task per step, ``counts[task]`` steps of each task, in the chosen order."""
    if order == "round-robin":
        return cycled_steps(sampler.tasks, counts)
    return sampler.shuffled_steps(counts)


def largest_remainder(expected: dict[str, float], total: int) -> dict[str, int]:
    """Integers summing to ``total`` with each within 1 of ``expected`` (Hamilton's method).

    Every task gets the floor of its expected count; the batches left over go to the largest
    fractional parts (ties: recipe order).
    """
    floors = {task: math.floor(value) for task, value in expected.items()}
    short = total - sum(floors.values())
    ranked = sorted(expected, key=lambda task: -(expected[task] - floors[task]))  # stable: recipe order on ties
    for task in ranked[:short]:
        floors[task] += 1
    return floors


def unknown_task(names: Iterable[str], task_names: list[str], key: str) -> str | None:
    """A reason naming the first of ``names`` that is not one of the recipe's tasks."""
    for name in names:
        if name not in task_names:
            return (
                f"{key} names task '{name}', which is not under [tasks] "
                f"(tasks: {', '.join(task_names)}){did_you_mean(name, task_names)}"
            )
    return None


def unconfigured_task(names: Iterable[str] | None, task_names: list[str]) -> str | None:
    """A component's ``check_tasks`` reason for its ``tasks`` option: the first name not under [tasks]."""
    for name in names or []:
        if name not in task_names:
            return f"tasks: '{name}' is not configured under [tasks]{did_you_mean(name, task_names)}"
    return None


def one_task_only(sampler: str, why: str, alternative: str) -> str:
    """Why a sampler refuses ``step = "all-tasks"`` (raised as ValueError by its options class)."""
    return f"step = \"all-tasks\" does not fit sampler '{sampler}': {why}; {alternative}"


class EqualCountSampler(SeededSampler):
    """Every task gives the same number of batches per epoch (``upsample``, ``loop``).

    One-task mode: ``target`` steps of each task in the chosen ``order``; all-tasks mode:
    ``target`` steps, each with a batch of every task. Tasks with fewer batches per pass
    repeat (their streams start a new, reshuffled pass); tasks with more are cut, and
    their streams continue there next epoch.
    """

    def __init__(self, batches: dict[str, int], seed: int, step_mode: StepMode, order: Order, target: int):
        super().__init__(batches, seed, step_mode)
        self.order = order
        self.target = target

    def batches_per_epoch(self) -> dict[str, int]:
        return {task: self.target for task in self.tasks}

    def epoch(self, index: int) -> list[tuple[str, ...]]:
        counts = self.batches_per_epoch()
        if self.step_mode == "all-tasks":
            return self.interleave_all_tasks(counts)
        return one_task_plan(self, counts, self.order)
