"""The ``multitask`` stage: train the shared encoder and heads on a set of tasks.

By default a recipe has one multitask stage over all its tasks for ``optim.epochs`` epochs.
Chaining stages gives intermediate-task training (seed 000's Para-first training)::

    [[stages]]
    name = "multitask"
    tasks = ["para"]
    epochs = 1

    [[stages]]
    name = "multitask"

Every stage evaluates all of the recipe's tasks on dev after each epoch; only the stage that
selects (by default the last) keeps the best checkpoint and counts patience.
"""

from __future__ import annotations

from typing import Any

import attrs

from mtbert.api import MultitaskTrainer, hookimpl, option


@attrs.define
class Multitask:
    """Train on the chosen tasks with the recipe's sampler, combiner, transforms and regularizers."""

    tasks: list[str] | None = option(None, help="tasks this stage trains (default: every task of the recipe)")
    epochs: int | None = option(None, help="epochs of this stage (default: optim.epochs)", min=1)
    select_best: bool | None = option(None, help="keep the best checkpoint and count patience here (default: last stage only)")

    data_parallel = True  # works under torchrun: the trainer shards batches and all-reduces gradients

    def run(self, run: Any, index: int, name: str, resume: dict[str, Any] | None) -> dict[str, float]:

        recipe = run.recipe
        tasks = list(self.tasks) if self.tasks else list(recipe.tasks)
        select = self.select_best if self.select_best is not None else index == len(recipe.stages) - 1
        label = name if len(recipe.stages) == 1 else f"{name}[{index}]"
        trainer = MultitaskTrainer(run, index, label, tasks, self.epochs or recipe.optim.epochs, select)
        if resume is not None:
            trainer.load_state_dict(resume)
        return trainer.train()


@hookimpl
def mtbert_register_stages(register):
    register("multitask", Multitask)
