"""Test kit for plugin authors: a tiny world to run components in, and their contract checks.

This package re-exports its rooms: ``world`` (vocabulary, encoder, tiny tasks), ``builders``
(plugin sets, batches, models, whole runs), ``checker`` (what the checks share), ``check_data``,
``check_model`` and ``check_training`` (the checks by kind) and ``fixtures`` (pytest).

Everything here runs on the CPU in seconds and needs neither the CS224N data nor the MiniLM
package: a 77-token vocabulary, a random 2-layer BERT with hidden size 16, and three tiny tasks
whose examples are generated in memory (and written to CSV files when a whole run is wanted).

The tiny world
    :func:`tiny_tokenizer`, :func:`tiny_encoder`, :data:`TINY_TASKS` (``tiny_sentiment``: one
    sentence, 3 classes; ``tiny_paraphrase``: a pair, binary; ``tiny_similarity``: a pair,
    regression on 0..5), :func:`tiny_examples`, :func:`tiny_batch` (a real batch through a
    registered input format), :func:`tiny_model` (a :class:`~mtbert.engine.multitask_model.MultitaskModel`
    over the three tasks), :func:`tiny_plugins` (an isolated plugin set: mtbert's builtins, this
    kit's tiny tasks and ``testing:tiny`` checkpoint, and your plugin) and
    :func:`run_tiny_recipe` (a complete ``mtbert run`` on the tiny tasks, run folder and all).

Contract checks, one per kind
    ``check_task``, ``check_checkpoint``, ``check_input_format``, ``check_head``,
    ``check_sampler``, ``check_loss_combiner``, ``check_gradient_transform``,
    ``check_regularizer`` and ``check_stage`` take your options class (built with no arguments:
    every option needs a default) or an instance, exercise it the way the engine will, and raise
    :class:`AssertionError` with a message naming the component and what broke. mtbert's own
    builtins pass the same checks (``tests/test_contracts.py``).

Shared helpers
    :func:`one_thread` (one intra-op CPU thread for a block), :func:`state_round_trip` (what a
    checkpoint does to a ``state_dict()``), :func:`installed_plugins`.

pytest fixtures
    Add ``pytest_plugins = ["mtbert.testing"]`` to your top-level ``conftest.py`` and override
    ``mtbert_plugin_modules`` to name your plugin; then ``mtbert_plugins`` (the isolated plugin
    set, installed process-wide for the test), ``mtbert_tiny_model``, ``mtbert_tiny_batch`` and
    ``mtbert_tiny_run`` are available to your tests. See CONTRIBUTING.md, "Testing a plugin".
"""

from __future__ import annotations

from typing import Any, Callable

from mtbert.testing.builders import (
    installed_plugins, one_thread, run_tiny_recipe, tiny_batch, tiny_batches, tiny_model, tiny_plugins,
    tiny_recipe_table,
)
from mtbert.testing.check_data import check_checkpoint, check_input_format, check_task
from mtbert.testing.check_extensions import check_optimizer_groups, check_weight_average
from mtbert.testing.check_model import check_head, check_regularizer
from mtbert.testing.check_training import check_gradient_transform, check_loss_combiner, check_sampler, check_stage
from mtbert.testing.checker import state_round_trip
from mtbert.testing.world import (
    TESTING_PLUGIN, TINY_CHECKPOINT, TINY_HIDDEN, TINY_MAX_LENGTH, TINY_PARAPHRASE, TINY_SENTIMENT, TINY_SIMILARITY,
    TINY_TASK_NAMES, TINY_TASKS, tiny_config, tiny_data_dir, tiny_encoder, tiny_examples, tiny_tokenizer, tiny_vocab,
    write_tiny_data,
)

__all__ = [
    "TINY_HIDDEN", "TINY_MAX_LENGTH", "TINY_TASKS", "TINY_TASK_NAMES", "TINY_SENTIMENT", "TINY_PARAPHRASE",
    "TINY_SIMILARITY", "TINY_CHECKPOINT", "TESTING_PLUGIN", "CHECKS",
    "tiny_vocab", "tiny_tokenizer", "tiny_config", "tiny_encoder", "tiny_examples", "tiny_data_dir",
    "write_tiny_data", "tiny_plugins", "installed_plugins", "tiny_batch", "tiny_batches", "tiny_model",
    "tiny_recipe_table", "run_tiny_recipe", "state_round_trip", "one_thread", "check_component", "check_task",
    "check_checkpoint", "check_input_format", "check_head", "check_sampler", "check_loss_combiner",
    "check_gradient_transform", "check_regularizer", "check_stage", "check_optimizer_groups", "check_weight_average",
]

#: The contract check of each kind, by the kind names of :data:`mtbert.plugins.KINDS`.
CHECKS: dict[str, Callable[..., None]] = {
    "task": check_task,
    "checkpoint": check_checkpoint,
    "input_format": check_input_format,
    "head": check_head,
    "sampler": check_sampler,
    "loss_combiner": check_loss_combiner,
    "gradient_transform": check_gradient_transform,
    "regularizer": check_regularizer,
    "stage": check_stage,
    "optimizer_groups": check_optimizer_groups,
    "weight_average": check_weight_average,
}


def check_component(kind: str, options: Any, **kwargs: Any) -> None:
    """Run the contract check of ``kind`` (``"head"``, ``"sampler"``, ...) on ``options``."""
    if kind not in CHECKS:
        raise KeyError(f"unknown kind {kind!r}; choose one of {', '.join(CHECKS)}")
    CHECKS[kind](options, **kwargs)




try:  # the fixtures need pytest; the rest of the kit works without it
    from mtbert.testing.fixtures import (  # noqa: F401  (pytest finds fixtures by module attribute)
        mtbert_plugin_modules, mtbert_plugins, mtbert_tiny_batch, mtbert_tiny_model, mtbert_tiny_run,
    )
except ImportError:  # pragma: no cover - pytest absent
    pass
