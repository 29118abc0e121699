"""The example third-party plugin (examples/mtbert-plugin-example), installed the way a user does.

When the package is installed (``pip install -e examples/mtbert-plugin-example``; CI does),
``mtbert plugins --json`` lists it with its distribution and version, and its shipped recipe
trains end to end through the CLI on the random tiny BERT. When it is not installed these tests
skip with the reason, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mtbert.cli import cli
from mtbert.engine.checkpoint import load_training_state
from mtbert.plugins import set_plugins

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mtbert-plugin-example"
RECIPE = EXAMPLE / "recipes" / "dwa.toml"
DISTRIBUTION = "mtbert-plugin-example"


@pytest.fixture
def example_version(monkeypatch):
    """The installed example's version; every installed plugin loads, as for a user's CLI."""
    try:
        version = md.version(DISTRIBUTION)
    except md.PackageNotFoundError:
        reason = f"{DISTRIBUTION} is not installed (pip install -e examples/mtbert-plugin-example)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true: CI installs it, so this is a failure")
        pytest.skip(reason)
    for name in ("MTBERT_PLUGINS", "MTBERT_DISABLE_PLUGINS", "MTBERT_STRICT_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    set_plugins(None)
    yield version
    set_plugins(None)
    torch.set_num_threads(threads)  # the run below sets train.threads


def test_mtbert_plugins_lists_the_example_with_its_distribution(example_version):
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (plugin,) = [p for p in report["plugins"] if p["distribution"] == DISTRIBUTION]
    assert plugin["name"] == "dwa" and plugin["version"] == example_version and plugin["error"] is None
    assert plugin["components"] == ["loss_combiner:dwa"]
    assert set(plugin["hooks"]) == {"mtbert_register_loss_combiners"}  # no event hook changes training
    (entry,) = [c for c in report["components"]["loss_combiner"] if c["name"] == "dwa"]
    assert (entry["distribution"], entry["version"]) == (DISTRIBUTION, example_version)
    assert [(o["name"], o["default"]) for o in entry["options"]] == [("temperature", 2.0)]
    assert {"sum", "gradnorm"} <= {c["name"] for c in report["components"]["loss_combiner"]}  # builtins beside it


def test_the_examples_recipe_trains_end_to_end(example_version, data_dir, minilm_dir, tmp_path):
    out = tmp_path / "run"
    sets = [f"data.dir={json.dumps(str(data_dir))}", "model.checkpoint=random:tiny", "optim.epochs=3",
            "train.progress=false", "train.threads=1", "train.keep_last=true"]
    for task in ("sst", "para", "sts"):
        sets += [f"tasks.{task}.train_limit=32", f"tasks.{task}.dev_limit=32", f"tasks.{task}.test_limit=8"]
    args = ["run", str(RECIPE), "--out", str(out)]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output

    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished"
    assert info["components"]["loss_combiner"] == f"plugin 'dwa' ({DISTRIBUTION} {example_version})"
    assert any(p["distribution"] == DISTRIBUTION and p["version"] == example_version for p in info["plugins"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3

    # DWA closed three epochs, and from the third on its weights follow the loss ratios.
    _, state = load_training_state(out / "checkpoints" / "last")
    combiner = state["trainer"]["combiner"]
    assert combiner["epochs"] == 3 and len(combiner["history"]) == 2
    weights = combiner["weights"]
    assert set(weights) == {"sst", "para", "sts"} and sum(weights.values()) == pytest.approx(3.0)
    assert weights != pytest.approx({"sst": 1.0, "para": 1.0, "sts": 1.0})
