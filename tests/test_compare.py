"""``mtbert compare`` on real tiny runs: rows, differing columns, deltas, CSV, skipped folders, plot."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mtbert.cli import cli
from mtbert.compare import RunRecord, compare, differing_keys

BASE = """\
name = "cmp"
seed = 5

[model]
checkpoint = "random:tiny"

[tasks.sst]
train_limit = 32
dev_limit = 32
[tasks.sts]
train_limit = 32
dev_limit = 32

[optim]
lr = 1e-3
epochs = 2
batch_size = 16

[train]
progress = false
predict = false
threads = 1
"""

PCGRAD = """\
include = "base.toml"

[sampler]
name = "round-robin"
step = "all-tasks"

[[gradient_transforms]]
name = "pcgrad"
"""


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """Three finished runs (baseline, another lr, + PCGrad) and four folders that are not."""
    from mtbert.engine.run import run_recipe
    from mtbert.plugins import load_plugins, set_plugins
    from mtbert.recipe import load_recipe

    monkeypatch = pytest.MonkeyPatch()
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("compare")
    (root / "base.toml").write_text(BASE, encoding="utf-8")
    (root / "pcgrad.toml").write_text(PCGRAD, encoding="utf-8")
    data = f"data.dir={json.dumps(str(data_dir))}"
    try:
        monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
        monkeypatch.delenv("MTBERT_DISABLE_PLUGINS", raising=False)
        plugins = load_plugins()
        set_plugins(plugins)
        folders = {}
        for name, file, overrides in (("a", "base.toml", []), ("b", "base.toml", ["optim.lr=3e-3"]),
                                      ("c", "pcgrad.toml", [])):
            recipe = load_recipe(root / file, [data, *overrides], plugins)
            folders[name], _ = run_recipe(recipe, plugins, out=root / name, say=lambda m: None, warn=lambda m: None)
        # an interrupted run that has evaluated: a row, with its status
        shutil.copytree(folders["b"], root / "interrupted")
        info = json.loads((root / "interrupted" / "run.json").read_text())
        (root / "interrupted" / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
        folders["interrupted"] = root / "interrupted"
        # a run that started but never evaluated
        (root / "started").mkdir()
        shutil.copy(folders["a"] / "recipe.toml", root / "started" / "recipe.toml")
        (root / "started" / "run.json").write_text(json.dumps({"status": "running"}))
        folders["started"] = root / "started"
        # a broken recipe, and a folder that is no run at all
        (root / "broken").mkdir()
        (root / "broken" / "recipe.toml").write_text("name = [unclosed\n")
        folders["broken"] = root / "broken"
        (root / "empty").mkdir()
        folders["empty"] = root / "empty"
        folders["missing"] = root / "does-not-exist"
        yield folders
    finally:
        set_plugins(None)
        monkeypatch.undo()
        torch.set_num_threads(threads)


def best(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())["best"]


def invoke(*args: str):
    result = CliRunner().invoke(cli, ["compare", *args])
    return result


def markdown_rows(text: str) -> tuple[list[str], list[list[str]], list[str]]:
    lines = text.splitlines()
    table = [line for line in lines if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in table]
    skipped = [line for line in lines if line.startswith("- skipped ")]
    return cells[0], cells[2:], skipped


def test_table_has_one_row_per_run_differing_columns_and_deltas(runs):
    a, b, c = runs["a"], runs["b"], runs["c"]
    result = invoke(str(a), str(b), str(c), "--baseline", str(a))
    assert result.exit_code == 0, result.output
    headers, rows, skipped = markdown_rows(result.stdout)
    # only what differs: lr (a/b), the sampler's step and the transform's name (c); not PCGrad's
    # own options (only one run has PCGrad), nor the name, data.dir or threads
    assert headers == ["run", "gradient_transforms[0].name", "optim.lr", "sampler.step",
                       "SST acc", "STS r", "mean", "Δ SST acc", "Δ STS r", "Δ mean", "best epoch", "wall time", "status"]
    assert [r[0] for r in rows] == ["a", "b", "c"]
    assert [r[1:4] for r in rows] == [["—", "0.001", "one-task"], ["—", "0.003", "one-task"],
                                      ["pcgrad", "0.001", "all-tasks"]]
    base = best(a)["dev"]
    for row, folder in zip(rows, (a, b, c)):
        dev = best(folder)["dev"]
        assert row[4:7] == [f"{dev[m]:.3f}" for m in ("sst_acc", "sts_pearson", "mean")]
        assert row[7:10] == [f"{dev[m] - base[m]:+.3f}" for m in ("sst_acc", "sts_pearson", "mean")]
        assert row[10] == str(best(folder)["epoch"])
        seconds = json.loads((folder / "run.json").read_text())["train_seconds"]
        assert row[11] == f"0m{int(round(seconds)):02d}s"
        assert row[12] == "finished"
    assert rows[0][7:10] == ["+0.000", "+0.000", "+0.000"]
    assert skipped == []


def test_unreadable_and_unfinished_folders_are_listed_not_fatal(runs):
    names = ("a", "interrupted", "started", "broken", "empty", "missing")
    result = invoke(*(str(runs[n]) for n in names))
    assert result.exit_code == 0, result.output
    headers, rows, skipped = markdown_rows(result.stdout)
    assert [r[0] for r in rows] == ["a", "interrupted"]
    assert rows[1][-1] == "interrupted" and "Δ mean" not in headers
    assert headers[1] == "optim.lr"  # the interrupted run is a copy of b
    assert skipped[0] == f"- skipped {runs['missing']}: not a folder"
    assert f"- skipped {runs['started']}: no evaluation yet (status running)" in skipped
    assert any(s.startswith(f"- skipped {runs['broken']}: unreadable recipe.toml") for s in skipped)
    assert f"- skipped {runs['empty']}: no recipe.toml (not a run folder)" in skipped
    assert len(skipped) == 4


def test_csv_format_has_the_same_table(runs):
    a, b, c = runs["a"], runs["b"], runs["c"]
    md = invoke(str(a), str(b), str(c), "--baseline", str(a))
    result = invoke(str(a), str(b), str(c), "--baseline", str(a), "--format", "csv")
    assert result.exit_code == 0, result.output
    parsed = list(csv.reader(io.StringIO(result.stdout)))
    headers, rows, _ = markdown_rows(md.stdout)
    assert parsed[0] == ["run", "gradient_transforms[0].name", "optim.lr", "sampler.step", "sst_acc", "sts_pearson",
                         "mean", "delta_sst_acc", "delta_sts_pearson", "delta_mean", "best_epoch", "wall_seconds",
                         "status"]
    assert len(parsed) == 1 + len(rows)
    for line, row, folder in zip(parsed[1:], rows, (a, b, c)):
        assert line[0] == row[0] and line[2:4] == row[2:4] and line[10] == row[10] and line[12] == row[12]
        # no "—": a value a run lacks is an empty cell
        assert line[1] == ("" if row[1] == "—" else row[1]) and "—" not in line
        # scores and deltas at full precision, rounding to the Markdown cells
        for value, cell in zip(line[4:10], row[4:10]):
            assert f"{float(value):+.3f}".lstrip("+") == cell.lstrip("+")
        # wall time in seconds, as a number
        assert float(line[11]) == json.loads((folder / "run.json").read_text())["train_seconds"]
    assert float(parsed[2][2]) == 3e-3


def test_a_baseline_outside_the_compared_runs_is_the_first_row(runs):
    a, b, c = runs["a"], runs["b"], runs["c"]
    result = invoke(str(b), str(c), "--baseline", str(a))
    assert result.exit_code == 0, result.output
    headers, rows, _ = markdown_rows(result.stdout)
    assert [r[0] for r in rows] == ["a", "b", "c"]
    assert rows[0][headers.index("Δ mean")] == "+0.000"
    # an unusable baseline: no deltas, one line saying why
    result = invoke(str(b), "--baseline", str(runs["started"]))
    headers, rows, skipped = markdown_rows(result.stdout)
    assert result.exit_code == 0 and [r[0] for r in rows] == ["b"] and "Δ mean" not in headers
    assert skipped == [f"- skipped baseline {runs['started']}: no evaluation yet (status running); no deltas"]


def test_plot_of_dev_mean_per_epoch(runs, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots" / "cmp.png"
    result = invoke(str(runs["a"]), str(runs["b"]), "--plot", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {out}" in result.stderr


def test_plot_draws_each_runs_dev_mean_per_evaluation(runs, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from mtbert.compare import plot

    drawn = []
    monkeypatch.setattr(plt, "close", lambda fig: drawn.append(fig))
    _, records = compare([runs["a"], runs["c"]])
    plot(records, tmp_path / "p.png")
    lines = drawn[0].axes[0].lines
    assert [line.get_label() for line in lines] == ["a", "c"]
    for line, folder in zip(lines, (runs["a"], runs["c"])):
        history = [json.loads(x)["metrics"]["mean"] for x in (folder / "metrics.jsonl").read_text().splitlines()]
        assert list(line.get_xdata()) == [1, 2]
        assert list(line.get_ydata()) == pytest.approx(history)


def test_plot_without_matplotlib_is_one_error_line(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = invoke(str(runs["a"]), "--plot", str(tmp_path / "x.png"))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == "error: --plot needs matplotlib: pip install matplotlib"
    assert "| a |" in result.stdout  # the table is printed first


# --------------------------------------------------------------------------- which columns
def record(name: str, recipe: dict) -> RunRecord:
    return RunRecord(folder=Path(name), name=name, recipe=recipe, best={"dev": {"mean": 0.5}}, history=[],
                     seconds=1.0, status="finished")


def test_component_options_are_columns_only_where_runs_of_that_component_differ():
    plain = {"optim": {"lr": 1e-5}, "gradient_transforms": [], "tasks": {"sts": {"head": {"name": "linear", "dropout": 0.1}}}}
    pcgrad = {"optim": {"lr": 1e-5}, "gradient_transforms": [{"name": "pcgrad", "reduction": "sum", "seed": 0}],
              "tasks": {"sts": {"head": {"name": "cosine", "scale": 1.0}}}}
    assert differing_keys([record("a", plain), record("b", pcgrad)]) == [
        "gradient_transforms[0].name", "tasks.sts.head.name"]
    pcgrad_mean = {**pcgrad, "gradient_transforms": [{"name": "pcgrad", "reduction": "mean", "seed": 0}]}
    linear_drop = {**plain, "tasks": {"sts": {"head": {"name": "linear"}}}, "model": {"hidden_dropout": 0.3}}
    keys = differing_keys([record("a", plain), record("b", pcgrad), record("c", pcgrad_mean), record("d", linear_drop)])
    assert keys == ["gradient_transforms[0].name", "gradient_transforms[0].reduction", "model.hidden_dropout",
                    "tasks.sts.head.dropout", "tasks.sts.head.name"]
    # names, descriptions and where/how a run ran are never columns
    other = {**plain, "name": "x", "description": "y", "data": {"dir": "/elsewhere", "cache": False},
             "train": {"progress": False, "threads": 2, "device": "cpu"}}
    assert differing_keys([record("a", plain), record("b", other)]) == []


# --------------------------------------------------------------------------- which metrics
@pytest.fixture(scope="module")
def plugin_task_runs(tmp_path_factory):
    """Two runs of tasks a plugin adds (mtbert.testing's tiny tasks), at two learning rates."""
    from mtbert.testing import run_tiny_recipe, tiny_plugins

    root = tmp_path_factory.mktemp("plugin-tasks")
    plugins = tiny_plugins()
    folders = [run_tiny_recipe(plugins, root / name, overrides=[f"optim.lr={lr}", "train.predict=false"])[0]
               for name, lr in (("slow", "1e-3"), ("fast", "3e-3"))]
    return plugins, folders


def test_plugin_tasks_primary_metrics_are_the_default_columns(plugin_task_runs):
    plugins, folders = plugin_task_runs
    expected = ["tiny_sentiment_acc", "tiny_paraphrase_acc", "tiny_similarity_pearson", "mean"]
    for registry in (plugins.registry, None):  # from the task specs, or read off the runs' metrics
        table, records = compare(folders, registry=registry)
        assert table.headers == ["run", "optim.lr", *expected, "best epoch", "wall time", "status"]
        for row, record in zip(table.rows, records):
            assert row[2:6] == [f"{record.best['dev'][m]:.3f}" for m in expected]
    result = invoke(*(str(f) for f in folders))  # the command, with only mtbert's own plugins installed
    assert result.exit_code == 0, result.output
    headers, _, _ = markdown_rows(result.stdout)
    assert headers[2:6] == expected


def test_metric_option_chooses_the_columns(plugin_task_runs, runs):
    _, folders = plugin_task_runs
    result = invoke(*(str(f) for f in folders), "--metric", "tiny_sentiment_macro_f1", "--metric", "mean",
                    "--baseline", str(folders[0]))
    assert result.exit_code == 0, result.output
    headers, rows, _ = markdown_rows(result.stdout)
    assert headers == ["run", "optim.lr", "tiny_sentiment_macro_f1", "mean", "Δ tiny_sentiment_macro_f1", "Δ mean",
                       "best epoch", "wall time", "status"]
    dev = best(folders[1])["dev"]
    assert rows[1][2:4] == [f"{dev['tiny_sentiment_macro_f1']:.3f}", f"{dev['mean']:.3f}"]
    # a metric only some runs have: empty for the others; one no run has: one error line
    result = invoke(str(runs["a"]), str(folders[0]), "--metric", "sst_acc", "--format", "csv")
    assert result.exit_code == 0, result.output
    parsed = list(csv.reader(io.StringIO(result.stdout)))
    assert parsed[0][-4] == "sst_acc" and parsed[1][-4] != "" and parsed[2][-4] == ""
    result = invoke(str(runs["a"]), "--metric", "sst_f1")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"error: --metric sst_f1: no compared run has this dev metric; they have: {', '.join(best(runs['a'])['dev'])}"]
