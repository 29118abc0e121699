"""The MLflow logger plugin against MLflow's own local file store (no server).

A tiny run (``random:tiny``, slices of sst and sts, 2 epochs) with ``MTBERT_MLFLOW`` pointing at
a ``file:`` store is read back with ``MlflowClient``: params, metric histories, artifacts,
status; an interrupted and resumed run continues its MLflow run; without the switch, or
without mlflow, the plugin does nothing (one warning when asked for but missing).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from mtbert import hookimpl
from mtbert_plugins import logger_mlflow

RECIPE = """\
name = "mlflow-check"
seed = 4

[model]
checkpoint = "random:tiny"

[tasks.sst]
train_limit = 32
dev_limit = 24
test_limit = 8
[tasks.sts]
train_limit = 32
dev_limit = 24
test_limit = 8

[optim]
lr = 1e-3
epochs = 2
batch_size = 16

[train]
progress = false
threads = 1
"""


def mlflow_or_skip():
    try:
        import mlflow
    except ImportError:
        reason = "mlflow is not installed (pip install mlflow-skinny; the dev extra installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: missing test inputs are failures)")
        pytest.skip(reason)
    return mlflow


class StopAt:
    @hookimpl
    def mtbert_on_step_end(self, run, step, logs):
        if step == 6:  # in the second epoch (4 one-task steps per epoch)
            run.request_stop("test stop")


def train(tmp_path: Path, data_dir: Path, monkeypatch, *extra, resume: bool = False, warnings=None):
    from mtbert.engine.run import run_recipe
    from mtbert.plugins import load_plugins, set_plugins
    from mtbert.recipe import load_recipe

    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    monkeypatch.setenv("MTBERT_DISABLE_PLUGINS", "logger-mlflow")  # loaded below, once, from this checkout
    plugins = load_plugins([("logger-mlflow", logger_mlflow), *extra])
    assert not plugins.registry.failures, plugins.registry.failures
    set_plugins(plugins)
    threads = torch.get_num_threads()
    try:
        path = tmp_path / "recipe.toml"
        path.write_text(RECIPE, encoding="utf-8")
        recipe = load_recipe(path, [f"data.dir={json.dumps(str(data_dir))}"], plugins)
        warn = (warnings.append if warnings is not None else lambda m: None)
        return run_recipe(recipe, plugins, out=tmp_path / "run", resume=resume, say=lambda m: None, warn=warn), recipe
    finally:
        set_plugins(None)
        torch.set_num_threads(threads)


@pytest.fixture
def file_store(tmp_path, monkeypatch):
    mlflow = mlflow_or_skip()
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MTBERT_MLFLOW", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow >= 3 refuses the file store otherwise
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return mlflow.tracking.MlflowClient(tracking_uri=uri)


def only_run(client, name="mlflow-check"):
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


def history(client, run_id, key):
    """``([steps], [values])`` of a metric, by step."""
    points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    return [s for s, _ in points], [v for _, v in points]


def expected(records, key):
    return [r["step"] for r in records], pytest.approx([r["metrics"][key] for r in records], abs=1e-9)


def test_a_run_logs_its_recipe_every_evaluation_and_its_files(tmp_path, data_dir, monkeypatch, file_store):
    client = file_store
    (folder, summary), recipe = train(tmp_path, data_dir, monkeypatch)
    logged = only_run(client)
    assert logged.info.run_name == "run" and logged.info.status == "FINISHED"
    assert logged.data.tags["mtbert.folder"] == str(folder.resolve())
    assert json.loads((folder / "mlflow.json").read_text())["run_id"] == logged.info.run_id
    # the resolved recipe, every key, as params
    params = logged.data.params
    assert params == logger_mlflow.recipe_params(recipe.to_dict())
    assert params["optim.lr"] == "0.001" and params["tasks.sst.head.name"] == "linear"
    assert params["stages.0.name"] == "multitask" and params["train.progress"] == "false"
    # every evaluation's metrics at their optimizer step, and the examples-seen axis
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for key in ("mean", "sst_acc", "sts_pearson", "sst_macro_f1"):
        assert history(client, logged.info.run_id, f"dev/{key}") == expected(records, key)
    assert history(client, logged.info.run_id, "examples_seen") == ([4, 8], [64.0, 128.0])  # 4 steps of 16 rows
    best = summary["best"]
    assert logged.data.metrics["best/mean"] == pytest.approx(best["dev"]["mean"])
    # metrics.json, the predictions and the recipe as artifacts, byte for byte
    names = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"recipe.toml", "metrics.json", "metrics.jsonl", "run.json", "predictions"} <= names
    predictions = {Path(a.path).name for a in client.list_artifacts(logged.info.run_id, "predictions")}
    assert {"sst-dev-output.csv", "sst-test-output.csv", "sts-dev-output.csv", "sts-test-output.csv"} <= predictions
    local = Path(client.download_artifacts(logged.info.run_id, "metrics.json", str(tmp_path / "dl")))
    assert local.read_bytes() == (folder / "metrics.json").read_bytes()
    local = Path(client.download_artifacts(logged.info.run_id, "predictions/sst-dev-output.csv", str(tmp_path / "dl")))
    assert local.read_bytes() == (folder / "predictions" / "sst-dev-output.csv").read_bytes()


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, data_dir, monkeypatch, file_store):
    from mtbert.engine.trainer import RunInterrupted

    client = file_store
    with pytest.raises(RunInterrupted):
        train(tmp_path, data_dir, monkeypatch, ("stop", StopAt()))
    first = only_run(client)
    assert first.info.status == "RUNNING"  # no hook is called for an interrupted run
    assert len(client.get_metric_history(first.info.run_id, "dev/mean")) == 1
    (folder, _), _ = train(tmp_path, data_dir, monkeypatch, resume=True)
    resumed = only_run(client)
    assert resumed.info.run_id == first.info.run_id and resumed.info.status == "FINISHED"
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert history(client, resumed.info.run_id, "dev/mean") == expected(records, "mean")


def test_without_the_switch_nothing_is_logged_and_mlflow_is_not_needed(tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv("MTBERT_MLFLOW", raising=False)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: importing it would fail
    warnings: list[str] = []
    (folder, summary), _ = train(tmp_path, data_dir, monkeypatch, warnings=warnings)
    assert summary["best"] is not None and not (folder / "mlflow.json").exists()
    assert not [w for w in warnings if "mlflow" in w.lower()]


def test_switch_on_without_mlflow_is_one_warning(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("MTBERT_MLFLOW", "1")
    monkeypatch.setitem(sys.modules, "mlflow", None)
    warnings: list[str] = []
    (folder, summary), _ = train(tmp_path, data_dir, monkeypatch, warnings=warnings)
    assert summary["best"] is not None and not (folder / "mlflow.json").exists()
    assert [w for w in warnings if "mlflow" in w.lower()] == [
        "logger-mlflow: MTBERT_MLFLOW is set but mlflow is not installed (pip install 'mtbert[mlflow]'); "
        "this run is not logged to MLflow"]


@pytest.mark.parametrize("value, expected", [("", None), ("0", None), ("off", None), ("1", ""), ("true", ""),
                                             ("file:/x/mlruns", "file:/x/mlruns"), ("http://h:5000", "http://h:5000")])
def test_the_switch_values(monkeypatch, value, expected):
    monkeypatch.setenv("MTBERT_MLFLOW", value)
    assert logger_mlflow.tracking_uri_setting() == expected


def test_recipe_params_are_valid_mlflow_keys():
    params = logger_mlflow.recipe_params({"optim": {"lr": 1e-5, "betas": [0.9, 0.99]}, "gradient_transforms": [],
                                          "regularizers": [{"name": "smart", "tasks": ["sst"]}],
                                          "model": {"hidden_dropout": None}, "train": {"predict": True}})
    assert params == {"optim.lr": "1e-05", "optim.betas": "[0.9, 0.99]", "gradient_transforms": "[]",
                      "regularizers.0.name": "smart", "regularizers.0.tasks": '["sst"]',
                      "model.hidden_dropout": "null", "train.predict": "true"}
