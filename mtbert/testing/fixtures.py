"""pytest fixtures of the test kit, loaded with ``pytest_plugins = ["mtbert.testing"]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest

from mtbert.engine.components import Batch
from mtbert.testing.builders import installed_plugins, run_tiny_recipe, tiny_batch, tiny_model, tiny_plugins


@pytest.fixture
def mtbert_plugin_modules() -> list[Any]:
    """Override in your conftest.py: the plugins under test (modules, (name, plugin) pairs, or
    names of installed entry points), loaded beside mtbert's builtins by ``mtbert_plugins``."""
    return []


@pytest.fixture
def mtbert_plugins(mtbert_plugin_modules: list[Any]) -> Iterator[Any]:
    """Builtins + the tiny tasks and checkpoint + your plugins, installed process-wide for the test."""
    plugins = tiny_plugins(*mtbert_plugin_modules)
    with installed_plugins(plugins):
        yield plugins


@pytest.fixture
def mtbert_tiny_model(mtbert_plugins: Any) -> Any:
    """The tiny MultitaskModel: a random 2-layer encoder and a linear head per tiny task."""
    return tiny_model(plugins=mtbert_plugins)


@pytest.fixture
def mtbert_tiny_batch(mtbert_tiny_model: Any) -> Callable[..., Batch]:
    """``make(task="tiny_sentiment", size=4, split="train", start=0)``: a batch for the tiny model."""

    def make(task: str = "tiny_sentiment", size: int = 4, split: str = "train", start: int = 0) -> Batch:
        return tiny_batch(task, size=size, split=split, start=start, input_format=mtbert_tiny_model.input_formats[task])

    return make


@pytest.fixture
def mtbert_tiny_run(mtbert_plugins: Any, tmp_path: Path) -> Callable[..., tuple[Path, dict[str, Any]]]:
    """``run(overrides=(), table=None, name="run")``: a whole tiny ``mtbert run`` in ``tmp_path``."""

    def run(overrides: Iterable[str] = (), table: dict[str, Any] | None = None, name: str = "run"):
        return run_tiny_recipe(mtbert_plugins, tmp_path / name, table=table, overrides=overrides)

    return run
