"""Builders of the tiny world: isolated plugin sets, batches, models and whole tiny runs."""

from __future__ import annotations

import contextlib
import copy
import os
import types
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence
from unittest import mock

import torch
from torch import nn

from mtbert.engine.batches import label_dtype
from mtbert.engine.components import Batch
from mtbert.testing.world import (
    TESTING_PLUGIN, TINY_CHECKPOINT, TINY_HIDDEN, TINY_MAX_LENGTH, TINY_TASK_NAMES, TINY_TASKS, tiny_data_dir,
    tiny_encoder, tiny_examples, tiny_tokenizer,
)


# --------------------------------------------------------------------------- plugins
def tiny_plugins(*extra: Any, strict: bool = True) -> Any:
    """An isolated :class:`~mtbert.plugins.Plugins` set: mtbert's builtins, this kit's tiny tasks and
    checkpoint, and ``extra``.

    Each item of ``extra`` is a plugin module or object (loaded in-process), a ``(name, plugin)``
    pair, or a string: the name of an *installed* entry point in the ``mtbert`` group (loaded
    through it, with its distribution and version, as ``mtbert run`` would). Whatever else is
    installed is ignored, and with ``strict`` (the default) a plugin that fails to load raises.
    """
    from mtbert.plugins import load_plugins

    pairs: list[tuple[str, Any]] = [("mtbert-testing", TESTING_PLUGIN)]
    entry_names: list[str] = []
    for item in extra:
        if isinstance(item, str):
            entry_names.append(item)
        elif isinstance(item, tuple):
            pairs.append(item)
        elif isinstance(item, types.ModuleType):
            pairs.append((item.__name__, item))
        else:
            pairs.append((type(item).__name__, item))
    import importlib.metadata as md

    installed = {ep.name for ep in md.entry_points(group="mtbert")}
    unknown = [name for name in entry_names if name not in installed]
    if unknown:  # before loading: under strict loading an unknown name would be a PluginError
        raise LookupError(f"no installed entry point named {', '.join(unknown)} in group 'mtbert' "
                          f"(is the package installed? pip install -e .)")
    env = {
        "MTBERT_PLUGINS": ",".join(["builtin", *entry_names]),
        "MTBERT_DISABLE_PLUGINS": None,
        "MTBERT_STRICT_PLUGINS": "1" if strict else None,
    }
    with mock.patch.dict(os.environ, {key: value for key, value in env.items() if value is not None}):
        for key in (key for key, value in env.items() if value is None):
            os.environ.pop(key, None)  # patch.dict restores it on exit
        plugins = load_plugins(pairs)
    missing = [name for name in entry_names if name not in {p.name for p in plugins.plugins}]
    if missing:
        raise LookupError(f"no installed entry point named {', '.join(missing)} in group 'mtbert' "
                          f"(is the package installed? pip install -e .)")
    return plugins


_DEFAULT: list[Any] = []


def default_plugins() -> Any:
    if not _DEFAULT:
        _DEFAULT.append(tiny_plugins())
    return _DEFAULT[0]


@contextlib.contextmanager
def installed_plugins(plugins: Any) -> Iterator[Any]:
    """Make ``plugins`` the process-wide set (what ``load_backbone`` and the CLI see), then restore."""
    import mtbert.plugins as registry_module

    previous = registry_module._CACHED
    registry_module.set_plugins(plugins)
    try:
        yield plugins
    finally:
        registry_module.set_plugins(previous)


def registered_options(plugins: Any, kind: str, name: str) -> Any:
    component = plugins.registry.find(kind, name)
    if component is None:
        raise LookupError(f"no {kind.replace('_', ' ')} named {name!r} is registered")
    return component.factory()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run on one intra-op CPU thread, then restore the count: tiny tensors run fastest so, and far
    faster on a busy machine (the tests' ``one_thread`` fixture and every contract check use it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- batches and models


def default_name(plugins: Any, kind: str, spec: Any) -> str:
    """The registered default input format or head for the task's input kind, as recipes choose it."""
    found = plugins.registry.defaults(kind, spec.input_kind)
    if len(found) != 1:
        raise LookupError(f"{len(found)} {kind.replace('_', ' ')}s declare themselves the default for "
                          f"{spec.input_kind} tasks: {[c.name for c in found]}")
    return found[0].name


def tiny_batch(task: str = "tiny_sentiment", *, size: int = 4, split: str = "train", start: int = 0,
               input_format: Any = None, plugins: Any = None, max_length: int = TINY_MAX_LENGTH) -> Batch:
    """A real batch of a tiny task: examples tokenized and collated by an input format.

    ``input_format`` is an input-format options object or a registered name (default: the one
    registered as the default for the task's input kind, as recipes choose).
    """
    spec = TINY_TASKS[task]
    if input_format is None or isinstance(input_format, str):
        plugins = plugins or default_plugins()
        input_format = registered_options(plugins, "input_format", input_format or default_name(plugins, "input_format", spec))
    examples = tiny_examples(task, split)
    encoded = input_format.encode_examples(tiny_tokenizer(), examples, max_length)
    indices = [i % len(examples) for i in range(start, start + size)]
    return input_format.collate(encoded, indices, task, label_dtype(spec))


def tiny_model(*, heads: dict[str, Any] | None = None, input_formats: dict[str, Any] | None = None,
               plugins: Any = None, seed: int = 0, tasks: Sequence[str] = TINY_TASK_NAMES) -> Any:
    """A :class:`~mtbert.engine.multitask_model.MultitaskModel`: the tiny encoder and one head per tiny task.

    ``heads`` maps a task to a head options object or registered name; ``input_formats`` maps a
    task to an input-format name (both default by the task's input kind, as recipes choose).
    Same seed, same weights.
    """
    from mtbert.engine.multitask_model import MultitaskModel

    plugins = plugins or default_plugins()
    heads = dict(heads or {})
    formats = dict(input_formats or {})
    modules: dict[str, nn.Module] = {}
    format_options: dict[str, Any] = {}
    encoder = tiny_encoder(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        for name in tasks:
            spec = TINY_TASKS[name]
            format_name = formats.get(name) or default_name(plugins, "input_format", spec)
            format_options[name] = registered_options(plugins, "input_format", format_name)
            head = heads.get(name) or default_name(plugins, "head", spec)
            head = registered_options(plugins, "head", head) if isinstance(head, str) else head
            modules[name] = head.build(TINY_HIDDEN, spec, format_options[name])
    return MultitaskModel(encoder, modules, format_options)


def tiny_batches(model: Any, *, size: int = 4, split: str = "train", start: int = 0) -> dict[str, Batch]:
    """One batch per task of ``model``, through the model's own input formats."""
    return {task: tiny_batch(task, size=size, split=split, start=start, input_format=model.input_formats[task])
            for task in model.heads}


# --------------------------------------------------------------------------- whole runs
def tiny_recipe_table(**sections: Any) -> dict[str, Any]:
    """A recipe (as a TOML table) training the three tiny tasks for one short epoch on the CPU.

    Keyword arguments replace top-level keys (``sampler={"name": "loop", "to": "tiny_sentiment"}``).
    """
    table: dict[str, Any] = {
        "name": "tiny",
        "seed": 7,
        "model": {"checkpoint": TINY_CHECKPOINT},
        "data": {"dir": str(tiny_data_dir()), "max_length": 32, "eval_batch_size": 8},
        "tasks": {name: {} for name in TINY_TASK_NAMES},
        "optim": {"lr": 1e-3, "epochs": 1, "batch_size": 4},
        "train": {"progress": False, "device": "cpu", "log_every": 1, "threads": 1},
    }
    table.update(copy.deepcopy(sections))
    return table


def run_tiny_recipe(plugins: Any, out: str | Path, *, table: dict[str, Any] | None = None,
                    overrides: Iterable[str] = (), say: Callable[[str], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """Validate and run a tiny recipe (default :func:`tiny_recipe_table`) into folder ``out``.

    ``overrides`` are ``--set`` strings (``"optim.epochs=3"``). Returns the run folder and the
    metrics summary, as :func:`mtbert.engine.run.run_recipe` does.
    """
    from mtbert.engine.run import run_recipe
    from mtbert.recipe import apply_overrides, validate

    table = apply_overrides(copy.deepcopy(table) if table is not None else tiny_recipe_table(), overrides)
    quiet = say or (lambda message: None)
    with installed_plugins(plugins), one_thread():  # restores the thread count train.threads sets
        recipe = validate(table, plugins, source="tiny.toml")
        return run_recipe(recipe, plugins, out=Path(out), say=quiet, warn=quiet)

