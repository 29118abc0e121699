"""Shared machinery for sampler plugins: a seeded generator whose state is checkpointed.

A sampler plans a whole epoch at once (``epoch(index)`` returns the list of steps, each a
tuple of task names). The engine stores the plan and its position, so a run resumed in the
middle of an epoch continues with exactly the steps it would have taken.
"""

from __future__ import annotations

from typing import Any

import torch

from mtbert.engine.components import StepMode


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

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
