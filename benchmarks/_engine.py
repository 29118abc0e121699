"""The real engine, driven one optimizer step at a time (for the step and epoch benchmarks).

:func:`build_trainer` builds a run exactly as ``mtbert run`` does (``RunContext.build``: the
backbone, the data, the heads, the regularizers, ``train.compile``) and the stage's
:class:`~mtbert.engine.trainer.MultitaskTrainer` (sampler, loss combiner, gradient transforms,
fused AdamW, schedule). :func:`one_step` is ``MultitaskTrainer.step``, what the training loop
calls for each sampler step (task losses, combiner, backward, transforms, optimizer), without
the logging, evaluation and checkpointing around it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def recipe_from(table: dict[str, Any], plugins: Any, overrides: list[str] = ()) -> Any:
    from mtbert.recipe import apply_overrides, validate

    return validate(apply_overrides(dict(table), overrides), plugins, source="benchmark")


def recipe_file(path: Path, plugins: Any, overrides: list[str] = ()) -> Any:
    from mtbert.recipe import load_recipe

    return load_recipe(path, list(overrides), plugins=plugins)


def build_trainer(recipe: Any, plugins: Any, folder: Path) -> Any:
    from mtbert.engine.context import RunContext
    from mtbert.engine.trainer import MultitaskTrainer

    folder.mkdir(parents=True, exist_ok=True)
    run = RunContext(recipe, plugins, folder, say=lambda m: None, warn=lambda m: None)
    run.build()
    trainer = MultitaskTrainer(run, 0, "benchmark", list(recipe.tasks), recipe.optim.epochs, select_best=False)
    run.model.train()
    return trainer


def one_step(trainer: Any, tasks: tuple[str, ...]) -> float:
    """One sampler step, optimizer step included: ``MultitaskTrainer.step``; returns the total loss."""
    return trainer.step(tasks, end_of_epoch=True)[0]


def one_epoch(trainer: Any, epoch: int = 0) -> int:
    """Every sampler step of one epoch (``train.max_steps_per_epoch`` applied); returns the steps."""
    plan = trainer.sampler.epoch(epoch)[: trainer.steps_per_epoch]
    for tasks in plan:
        one_step(trainer, tuple(tasks))
    return len(plan)


def freeze_batches(trainer: Any) -> dict[str, Any]:
    """Draw one batch per task and make every later draw return it (identical steps to compare)."""
    batches = {name: stream.next_batch() for name, stream in trainer.streams.items()}
    use_batches(trainer, batches)
    return batches


def use_batches(trainer: Any, batches: dict[str, Any]) -> None:
    """Every draw of a task's stream returns ``batches[task]`` (single process: the whole batch)."""
    for name, batch in batches.items():
        stream = trainer.streams[name]
        stream.next_batch = lambda batch=batch: batch
        if hasattr(stream, "next_shard"):  # streams that shard global batches across processes
            stream.next_shard = lambda batch=batch: (batch, 1.0)


def release(trainer: Any) -> None:
    """Drop a trainer's large state before building the next one."""
    trainer.optimizer.state.clear()
    trainer.run.model = None
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
