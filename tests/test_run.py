"""End to end: real data slices, the real MiniLM, run folders, resume, eval and predict."""

from __future__ import annotations

import json
import os
import signal
import tomllib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from mtbert import hookimpl
from mtbert.cli import cli
from mtbert.engine.run import run_recipe
from mtbert.errors import RunInterrupted
from mtbert.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent

# Small enough to train in seconds, big enough that every task has several batches.
SMALL = [
    "tasks.sst.train_limit=64", "tasks.para.train_limit=64", "tasks.sts.train_limit=64",
    "tasks.sst.dev_limit=48", "tasks.para.dev_limit=48", "tasks.sts.dev_limit=48",
    "tasks.sst.test_limit=32", "tasks.sts.test_limit=32",
    "optim.epochs=2", "train.progress=false",
]


def small_recipe(plugins, data_dir, extra=()):
    overrides = [f"data.dir={json.dumps(str(data_dir))}", *SMALL, *extra]
    return load_recipe(REPO / "recipes" / "quickstart.toml", overrides, plugins)


def quiet(_message: str) -> None:
    pass


class StopAt:
    """A plugin that interrupts training at a given step, as Ctrl-C would."""

    def __init__(self, step: int, via_signal: bool = False):
        self.step = step
        self.via_signal = via_signal

    @hookimpl
    def mtbert_on_step_end(self, run, step, logs):
        if step == self.step:
            if self.via_signal:
                os.kill(os.getpid(), signal.SIGINT)
            else:
                run.request_stop("test interruption")


class EvaluationLog:
    """Keeps every dev evaluation's predictions, as event-hook plugins receive them."""

    def __init__(self):
        self.by_step: dict[int, dict] = {}

    @hookimpl
    def mtbert_on_evaluate(self, run, stage, epoch, step, metrics, predictions):
        self.by_step[step] = {name: (list(p["ids"]), list(p["predictions"])) for name, p in predictions.items()}


def test_final_dev_predictions_are_the_best_evaluations_not_a_second_pass(tmp_path, data_dir, minilm_dir, plugins_with,
                                                                         monkeypatch):
    import mtbert.engine.evaluate as evaluate_module

    log = EvaluationLog()
    plugins = plugins_with(("evaluation-log", log))
    splits: list[str] = []
    real = evaluate_module.evaluate

    def spy(model, tasks, split, **kwargs):
        splits.append(split)
        return real(model, tasks, split, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", spy)  # what write_predictions calls
    recipe = small_recipe(plugins, data_dir)
    folder, summary = run_recipe(recipe, plugins, out=tmp_path / "run", say=quiet, warn=quiet)
    assert splits == ["test"]  # dev was not predicted again after training
    best_step = summary["best"]["step"]
    assert len(log.by_step) == 2 and best_step in log.by_step
    for task, (ids, predictions) in log.by_step[best_step].items():
        spec = recipe.tasks[task].spec
        expected = spec.write_predictions(tmp_path / "expected" / spec.prediction_filename("dev"), ids, predictions)
        assert (folder / "predictions" / spec.prediction_filename("dev")).read_bytes() == Path(expected).read_bytes()
    # and the best checkpoint, loaded afresh, scores exactly what that evaluation scored
    result = CliRunner().invoke(cli, ["eval", str(folder), "--set", "train.progress=false"])
    assert result.exit_code == 0, result.output
    again = json.loads((folder / "eval.json").read_text())
    scores = again["metrics"]
    assert scores["mean"] == summary["best"]["dev"]["mean"], (scores, summary["best"])


def test_run_folder_holds_everything_promised(tmp_path, data_dir, minilm_dir, plugins_with):
    plugins = plugins_with()
    recipe = small_recipe(plugins, data_dir)
    folder, summary = run_recipe(recipe, plugins, out=tmp_path / "run", say=quiet, warn=quiet)
    names = {p.name for p in folder.iterdir()}
    assert {"recipe.toml", "run.json", "metrics.jsonl", "metrics.json", "checkpoints", "predictions"} <= names
    assert (folder / "checkpoints" / "best.safetensors").is_file()
    assert not (folder / "checkpoints" / "last").exists()  # a finished run drops it (train.keep_last = false)
    assert {"config.json", "vocab.txt"} <= {p.name for p in (folder / "checkpoints" / "encoder-config").iterdir()}
    assert list(folder.glob("events.out.tfevents.*"))  # in the folder itself: TensorBoard's run is the folder
    predictions = {p.name for p in (folder / "predictions").iterdir()}
    assert {"sst-dev-output.csv", "sst-test-output.csv", "para-dev-output.csv", "sts-dev-output.csv",
            "sts-test-output.csv"} <= predictions
    assert (folder / "predictions" / "sst-dev-output.csv").read_text().startswith("id \t Predicted_Sentiment \n")

    info = json.loads((folder / "run.json").read_text())
    assert info["status"] == "finished" and info["seed"] == 11711
    assert info["mtbert_version"] == "0.1.0" and info["device"]["type"] == "cpu"
    assert {"head-linear", "tasks-cs224n", "sampler-round-robin"} <= {p["name"] for p in info["plugins"]}
    assert info["data"]["sst"]["train_rows"] == "64" and len(info["data"]["sst"]["train_sha1"]) == 40

    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert {"sst_acc", "para_acc", "sts_pearson", "mean"} <= set(lines[-1]["metrics"])
    best = json.loads((folder / "metrics.json").read_text())["best"]
    assert best == summary["best"] and best["dev"]["mean"] == max(line["metrics"]["mean"] for line in lines)

    resolved = tomllib.loads((folder / "recipe.toml").read_text())
    assert resolved["tasks"]["sst"]["train_limit"] == 64 and resolved["optim"]["epochs"] == 2


def test_quickstart_learns_above_chance(tmp_path, data_dir, minilm_dir, plugins_with):
    """The quickstart recipe cut to 320 training rows per task (2 epochs of 60 steps)."""
    plugins = plugins_with()
    overrides = [f"data.dir={json.dumps(str(data_dir))}", "train.progress=false", "train.predict=false",
                 *(f"tasks.{t}.train_limit=320" for t in ("sst", "para", "sts")),
                 *(f"tasks.{t}.dev_limit=300" for t in ("sst", "para", "sts"))]
    recipe = load_recipe(REPO / "recipes" / "quickstart.toml", overrides, plugins)
    _, summary = run_recipe(recipe, plugins, out=tmp_path / "run", say=quiet, warn=quiet)
    dev = summary["best"]["dev"]
    # Chance: SST 0.2 (5 classes), Para balanced accuracy 0.5 (predicting the majority class
    # gives exactly that), STS r 0. SST needs more steps than this to leave its majority class.
    assert dev["sst_acc"] > 0.25, dev
    assert dev["para_balanced_acc"] > 0.55, dev
    assert dev["sts_pearson"] > 0.5, dev


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, data_dir, minilm_dir, plugins_with):
    plugins = plugins_with()
    recipe = small_recipe(plugins, data_dir)
    whole, whole_summary = run_recipe(recipe, plugins, out=tmp_path / "whole", say=quiet, warn=quiet)

    # Interrupted in the middle of the first epoch (step 7 of 12), then resumed.
    plugins = plugins_with(("stopper", StopAt(7)))
    recipe = small_recipe(plugins, data_dir)
    with pytest.raises(RunInterrupted, match="stopped at step 7"):
        run_recipe(recipe, plugins, out=tmp_path / "split", say=quiet, warn=quiet)
    assert json.loads((tmp_path / "split" / "run.json").read_text())["status"] == "interrupted"
    plugins = plugins_with()
    recipe = small_recipe(plugins, data_dir)
    split, split_summary = run_recipe(recipe, plugins, out=tmp_path / "split", resume=True, say=quiet, warn=quiet)

    assert split_summary == whole_summary
    a = load_file(str(whole / "checkpoints" / "best.safetensors"))
    b = load_file(str(split / "checkpoints" / "best.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((split / "run.json").read_text())["resumes"] == 1
    # the examples-seen axis continues across the resume
    examples = [[json.loads(line)["examples"] for line in (f / "metrics.jsonl").read_text().splitlines()]
                for f in (whole, split)]
    assert examples[0] == examples[1] and examples[0][0] > 0


def test_ctrl_c_saves_state_and_resume_finishes(tmp_path, data_dir, minilm_dir, plugins_with):
    plugins = plugins_with(("stopper", StopAt(3, via_signal=True)))
    recipe = small_recipe(plugins, data_dir, ["optim.epochs=1"])
    with pytest.raises(RunInterrupted, match=r"interrupted \(Ctrl-C\): stopped at step 3"):
        run_recipe(recipe, plugins, out=tmp_path / "run", say=quiet, warn=quiet)
    assert not (tmp_path / "run" / ".lock").exists()  # an interrupted run releases and removes its lock
    plugins = plugins_with()
    recipe = small_recipe(plugins, data_dir, ["optim.epochs=1"])
    _, summary = run_recipe(recipe, plugins, out=tmp_path / "run", resume=True, say=quiet, warn=quiet)
    assert summary["last"]["step"] == 12
    assert not (tmp_path / "run" / ".lock").exists()


def test_resume_refuses_a_changed_recipe(tmp_path, data_dir, minilm_dir, plugins_with):
    plugins = plugins_with(("stopper", StopAt(2)))
    with pytest.raises(RunInterrupted):
        run_recipe(small_recipe(plugins, data_dir), plugins, out=tmp_path / "run", say=quiet, warn=quiet)
    result = CliRunner().invoke(cli, ["run", str(REPO / "recipes" / "quickstart.toml"), "--out", str(tmp_path / "run"),
                                      "--resume", "--set", f"data.dir={json.dumps(str(data_dir))}", *sum((["--set", s] for s in SMALL), []),
                                      "--set", "optim.lr=1e-4"])
    assert result.exit_code == 2
    assert "error: --resume: the recipe differs from the one" in result.output and "optim.lr" in result.output


def test_cli_run_eval_predict(tmp_path, data_dir, minilm_dir, plugins_with):
    plugins_with()
    runner = CliRunner()
    sets = sum((["--set", s] for s in [f"data.dir={json.dumps(str(data_dir))}", *SMALL, "optim.epochs=1"]), [])
    result = runner.invoke(cli, ["run", str(REPO / "recipes" / "quickstart.toml"), "--out", str(tmp_path / "run"), *sets])
    assert result.exit_code == 0, result.output
    assert "best dev (epoch 1)" in result.output

    best = json.loads((tmp_path / "run" / "metrics.json").read_text())["best"]["dev"]
    result = runner.invoke(cli, ["eval", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    printed = dict(line.split("\t") for line in result.output.splitlines() if "\t" in line)
    for key in ("sst_acc", "para_acc", "sts_pearson", "mean"):
        assert float(printed[key]) == pytest.approx(best[key], abs=1e-4)
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["metrics"]["mean"] == pytest.approx(best["mean"])

    # eval on another dev file through an override: the full SST dev set.
    result = runner.invoke(cli, ["eval", str(tmp_path / "run"), "--set", "tasks.sst.dev_limit=1101"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["overrides"] == ["tasks.sst.dev_limit=1101"]

    out = tmp_path / "sts-test.csv"
    result = runner.invoke(cli, ["predict", str(tmp_path / "run"), "--task", "sts",
                                 "--input", str(data_dir / "sts-test-student.csv"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "id \t Predicted_Similiary " and len(lines) == 1 + 1725
    assert all(0.0 <= float(line.split(" , ")[1]) <= 5.0 for line in lines[1:])

    result = runner.invoke(cli, ["predict", str(tmp_path / "run"), "--task", "stss", "--input", str(out), "--output", str(out)])
    assert result.exit_code == 2 and "did you mean 'sts'?" in result.output


def test_missing_data_file_is_one_line(tmp_path, data_dir, minilm_dir, plugins_with):
    plugins_with()
    result = CliRunner().invoke(cli, ["run", str(REPO / "recipes" / "quickstart.toml"), "--out", str(tmp_path / "run"),
                                      "--set", f"data.dir={json.dumps(str(data_dir))}", "--set", "tasks.sst.train_file=nope.csv"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"error: data file for tasks.sst.train_file (sst train) not found: {data_dir / 'nope.csv'}")
    assert "Traceback" not in result.output


def test_strict_data_stops_on_dirty_rows(tmp_path, data_dir, minilm_dir, plugins_with):
    plugins_with()
    result = CliRunner().invoke(cli, ["run", str(REPO / "recipes" / "quickstart.toml"), "--out", str(tmp_path / "run"),
                                      "--set", f"data.dir={json.dumps(str(data_dir))}", "--set", "data.strict=true"])
    assert result.exit_code == 2
    assert "quora-train.csv: 1 of 15214 rows (line 1947: empty is_duplicate) cannot be used; set data.strict = false" in result.output


def test_validate_command_prints_every_error_without_traceback(write_recipe, builtin_plugins):
    path = write_recipe('[tasks.sst]\nhead = "linaer"\n\n[optim]\nlr = "fast"\n')
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "Traceback" not in result.output


def test_validate_checks_the_data_files(tmp_path, data_dir, builtin_plugins, monkeypatch):
    quickstart = str(REPO / "recipes" / "quickstart.toml")
    monkeypatch.delenv("MTBERT_DATA_DIR", raising=False)
    ok = CliRunner().invoke(cli, ["validate", quickstart, "--set", f"data.dir={json.dumps(str(data_dir))}"])
    assert ok.exit_code == 0 and ok.output.startswith(f"{quickstart}: ok"), ok.output

    # A missing folder is one line naming it and how to set it, not a line per file.
    nowhere = tmp_path / "no-data"
    result = CliRunner().invoke(cli, ["validate", quickstart, "--set", f"data.dir={json.dumps(str(nowhere))}"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: data folder not found: {nowhere} (set $MTBERT_DATA_DIR, --set data.dir=PATH, or dir under [data])"]

    # A file the recipe names itself is checked too, test files included.
    result = CliRunner().invoke(cli, ["validate", quickstart, "--set", f"data.dir={json.dumps(str(data_dir))}",
                                      "--set", "tasks.sst.train_file=nope.csv", "--set", "tasks.sts.test_file=gone.csv"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: data file for tasks.sst.train_file (sst train) not found: {data_dir / 'nope.csv'}",
        f"error: data file for tasks.sts.test_file (sts test) not found: {data_dir / 'gone.csv'}",
    ]
