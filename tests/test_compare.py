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
from mtbert.compare import HEADERS, RunRecord, compare, differing_keys
from conftest import random_tiny_recipe

BASE = random_tiny_recipe("cmp", 5, {"sst": {"train_limit": 32, "dev_limit": 32}, "sts": {"train_limit": 32, "dev_limit": 32}},
                          optim={"epochs": 2}, train={"predict": False, "threads": 1})

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
    assert headers == ["run", "gradient_transforms[0].name", "optim.lr", "sampler.step", "n",
                       "SST acc", "STS r", "mean", "Δ SST acc", "Δ STS r", "Δ mean", "best epoch", "wall time", "status"]
    assert [r[0] for r in rows] == ["a", "b", "c"]
    assert [r[1:4] for r in rows] == [["—", "0.001", "one-task"], ["—", "0.003", "one-task"],
                                      ["pcgrad", "0.001", "all-tasks"]]
    base = best(a)["dev"]
    for row, folder in zip(rows, (a, b, c)):
        dev = best(folder)["dev"]
        assert row[4] == "1"  # one run each: recipes that differ in more than the seed are not pooled
        assert row[5:8] == [f"{dev[m]:.3f}" for m in ("sst_acc", "sts_pearson", "mean")]
        # these runs keep no predictions (train.predict = false): changes without intervals
        assert row[8:11] == [f"{dev[m] - base[m]:+.3f}" for m in ("sst_acc", "sts_pearson", "mean")]
        assert row[11] == str(best(folder)["epoch"])
        seconds = json.loads((folder / "run.json").read_text())["train_seconds"]
        assert row[12] == f"0m{int(round(seconds)):02d}s"
        assert row[13] == "finished"
    assert rows[0][8:11] == ["+0.000", "+0.000", "+0.000"]
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


def test_csv_and_json_formats_have_the_same_table_with_named_columns(runs):
    a, b = runs["a"], runs["b"]
    md = invoke(str(a), str(b), "--baseline", str(a))
    result = invoke(str(a), str(b), "--baseline", str(a), "--format", "csv")
    assert result.exit_code == 0, result.output
    parsed = list(csv.reader(io.StringIO(result.stdout)))
    headers, rows, _ = markdown_rows(md.stdout)
    scores = ("sst_acc", "sts_pearson", "mean")
    assert parsed[0] == ["run", "optim.lr", "n", *(f for m in scores for f in (m, f"{m}_std")),
                         *(f for m in scores for f in (f"delta_{m}", f"delta_{m}_ci_low", f"delta_{m}_ci_high")),
                         "ci_resampled", "best_epoch", "wall_seconds", "status"]
    assert [r[0] for r in parsed[1:]] == [r[0] for r in rows] == ["a", "b"]
    assert parsed[0][:2] == ["run", "optim.lr"] and float(parsed[2][1]) == 3e-3
    for line, row, folder in zip(parsed[1:], rows, (a, b)):
        dev = best(folder)["dev"]
        assert line[2] == "1" and line[parsed[0].index("mean_std")] == ""  # one run: no spread
        assert [float(line[parsed[0].index(m)]) for m in scores] == pytest.approx([dev[m] for m in scores])
        assert f"{float(line[parsed[0].index('delta_mean')]):+.3f}" == row[headers.index("Δ mean")]
    as_json = json.loads(invoke(str(a), str(b), "--baseline", str(a), "--format", "json").stdout)
    assert [list(r) for r in as_json["rows"]] == [parsed[0], parsed[0]]
    assert as_json["rows"][1]["mean"] == pytest.approx(best(b)["dev"]["mean"])
    assert as_json["rows"][1]["delta_mean_ci_low"] is None  # no predictions kept: no interval


def test_csv_format_has_the_same_table(runs):
    a, b, c = runs["a"], runs["b"], runs["c"]
    md = invoke(str(a), str(b), str(c), "--baseline", str(a))
    result = invoke(str(a), str(b), str(c), "--baseline", str(a), "--format", "csv")
    assert result.exit_code == 0, result.output
    parsed = list(csv.reader(io.StringIO(result.stdout)))
    headers, rows, _ = markdown_rows(md.stdout)
    fields = parsed[0]
    keys = ["gradient_transforms[0].name", "optim.lr", "sampler.step"]
    scores = ["sst_acc", "sts_pearson", "mean"]
    assert fields[:5] == ["run", *keys, "n"] and fields[-3:] == ["best_epoch", "wall_seconds", "status"]
    assert [f for f in fields if f in scores or f.startswith("delta_") and not f.endswith(("_low", "_high"))] == [
        *scores, "delta_sst_acc", "delta_sts_pearson", "delta_mean"]
    assert len(parsed) == 1 + len(rows)
    for line, row, folder in zip(parsed[1:], rows, (a, b, c)):
        cell = dict(zip(fields, line))
        assert cell["run"] == row[0] and [cell[k] for k in keys[1:]] == row[2:4]
        assert cell["best_epoch"] == row[headers.index("best epoch")] and cell["status"] == row[headers.index("status")]
        # no "—": a value a run lacks is an empty cell
        assert cell[keys[0]] == ("" if row[1] == "—" else row[1]) and "—" not in line
        # scores and deltas at full precision, rounding to the Markdown cells
        for metric in scores:
            for value, shown in ((cell[metric], row[headers.index(HEADERS.get(metric, metric))]),
                                 (cell[f"delta_{metric}"], row[headers.index(f"Δ {HEADERS.get(metric, metric)}")])):
                assert f"{float(value):+.3f}".lstrip("+") == shown.lstrip("+")
        # wall time in seconds, as a number
        assert float(cell["wall_seconds"]) == json.loads((folder / "run.json").read_text())["train_seconds"]
    assert float(dict(zip(fields, parsed[2]))["optim.lr"]) == 3e-3


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


@pytest.fixture(scope="module")
def seeded(data_dir, tmp_path_factory):
    """``mtbert sweep --seeds``: two variants (lr) times three seeds, with dev predictions kept."""
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("seeded")
    recipe = root / "base.toml"
    recipe.write_text(BASE.replace("predict = false", "predict = true").replace("epochs = 2", "epochs = 1"),
                      encoding="utf-8")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    try:
        from mtbert.plugins import set_plugins

        set_plugins(None)
        args = ["sweep", str(recipe), "--seeds", "3", "--grid", "optim.lr=1e-3,1e-2", "--out", str(root / "sw"),
                "--set", f"data.dir={json.dumps(str(data_dir))}"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        yield root / "sw", result, args
    finally:
        set_plugins(None)
        monkeypatch.undo()
        torch.set_num_threads(threads)


def test_sweep_seeds_runs_each_variant_per_seed_and_compare_pools_them(seeded):
    out, result, args = seeded
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == [f"cmp-optim.lr={lr}-seed={s}" for lr in ("1e-2", "1e-3") for s in (1, 2, 5)]
    seeds = {json.loads((out / f / "run.json").read_text())["seed"] for f in folders}
    assert seeds == {5, 1, 2}  # the recipe's own seed first, then 1, 2
    # the sweep's table already pools: one row per lr, n = 3, mean ± std
    headers, rows, _ = markdown_rows((out / "compare.md").read_text())
    assert [r[0] for r in rows] == ["cmp-optim.lr=1e-3", "cmp-optim.lr=1e-2"]
    assert "seed" not in headers and [r[headers.index("n")] for r in rows] == ["3", "3"]
    runs = [out / f"cmp-optim.lr=1e-3-seed={s}" for s in (5, 1, 2)]
    values = [best(f)["dev"]["mean"] for f in runs]
    mean = sum(values) / 3
    std = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5
    assert rows[0][headers.index("mean")] == f"{mean:.3f} ± {std:.3f}"
    # resumable: the same command again skips every finished run
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "0 finished, 6 skipped" in again.output


def test_pooled_rows_get_bootstrap_intervals_against_a_baseline(seeded):
    out, _, _ = seeded
    base = out / "cmp-optim.lr=1e-3-seed=5"
    folders = sorted(str(p) for p in out.iterdir() if p.is_dir())
    result = invoke(*folders, "--baseline", str(base), "--format", "json", "--resamples", "500")
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    rows = {r["run"]: r for r in table["rows"]}
    row, baseline = rows["cmp-optim.lr=1e-2"], rows["cmp-optim.lr=1e-3"]
    assert row["n"] == 3 and baseline["n"] == 3 and row["ci_resampled"] == "seeds and dev examples"
    assert baseline["delta_mean"] == 0.0
    for key in ("sst_acc", "sts_pearson", "mean"):
        low, high, change = row[f"delta_{key}_ci_low"], row[f"delta_{key}_ci_high"], row[f"delta_{key}"]
        assert low <= change <= high or abs(change - (low + high) / 2) < high - low, key
        assert baseline[f"delta_{key}_ci_low"] is None  # the baseline's change against itself is 0 by definition
    # same seed, same intervals; Markdown shows them and explains how they were made
    md = invoke(*folders, "--baseline", str(base), "--resamples", "500")
    headers, cells, _ = markdown_rows(md.stdout)
    cell = next(c for c in cells if c[0] == "cmp-optim.lr=1e-2")[headers.index("Δ mean")]
    low, high = rows["cmp-optim.lr=1e-2"]["delta_mean_ci_low"], rows["cmp-optim.lr=1e-2"]["delta_mean_ci_high"]
    assert f"[{low:+.3f}, {high:+.3f}]" in cell
    assert cell.startswith("**") == (low > 0 or high < 0)  # bold: the interval excludes 0
    assert "95% bootstrap interval" in md.stdout


def test_a_row_of_one_run_resamples_dev_examples_only_and_says_so(seeded):
    out, _, _ = seeded
    one = out / "cmp-optim.lr=1e-2-seed=1"
    base = out / "cmp-optim.lr=1e-3-seed=5"
    result = invoke(str(base), str(one), "--baseline", str(base), "--resamples", "500")
    assert result.exit_code == 0, result.output
    headers, rows, _ = markdown_rows(result.stdout)
    assert [r[headers.index("n")] for r in rows] == ["1", "1"]
    assert "[" in rows[1][headers.index("Δ mean")]
    assert "n = 1" in result.stdout and "resamples the dev examples only" in result.stdout
    as_json = json.loads(invoke(str(base), str(one), "--baseline", str(base), "--format", "json",
                                "--resamples", "500").stdout)
    assert as_json["rows"][1]["ci_resampled"] == "dev examples"


def test_markdown_marks_a_change_whose_interval_excludes_zero():
    from mtbert.compare import _delta, _score
    from mtbert.replicates import Row

    assert _delta(0.05, (0.012, 0.088)) == "**+0.050 [+0.012, +0.088]**"
    assert _delta(-0.03, (-0.05, -0.004)) == "**-0.030 [-0.050, -0.004]**"
    assert _delta(0.004, (-0.01, 0.02)) == "+0.004 [-0.010, +0.020]"
    assert _delta(0.004, None) == "+0.004"
    record = lambda v: RunRecord(folder=Path("x"), name="x", recipe={}, best={"dev": {"mean": v}}, history=[],  # noqa: E731
                                 seconds=None, status="finished")
    assert _score(Row([record(0.724), record(0.732), record(0.728)]), "mean") == "0.728 ± 0.004"
    assert _score(Row([record(0.7)]), "mean") == "0.700"


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
        assert table.headers == ["run", "optim.lr", "n", *expected, "best epoch", "wall time", "status"]
        for row, record in zip(table.rows, records):
            assert row[3:7] == [f"{record.best['dev'][m]:.3f}" for m in expected]
    result = invoke(*(str(f) for f in folders))  # the command, with only mtbert's own plugins installed
    assert result.exit_code == 0, result.output
    headers, _, _ = markdown_rows(result.stdout)
    assert headers[3:7] == expected


def test_metric_option_chooses_the_columns(plugin_task_runs, runs):
    _, folders = plugin_task_runs
    result = invoke(*(str(f) for f in folders), "--metric", "tiny_sentiment_macro_f1", "--metric", "mean",
                    "--baseline", str(folders[0]))
    assert result.exit_code == 0, result.output
    headers, rows, _ = markdown_rows(result.stdout)
    assert headers == ["run", "optim.lr", "n", "tiny_sentiment_macro_f1", "mean", "Δ tiny_sentiment_macro_f1", "Δ mean",
                       "best epoch", "wall time", "status"]
    dev = best(folders[1])["dev"]
    assert rows[1][3:5] == [f"{dev['tiny_sentiment_macro_f1']:.3f}", f"{dev['mean']:.3f}"]
    # a metric only some runs have: empty for the others; one no run has: one error line
    result = invoke(str(runs["a"]), str(folders[0]), "--metric", "sst_acc", "--format", "csv")
    assert result.exit_code == 0, result.output
    parsed = list(csv.reader(io.StringIO(result.stdout)))
    column = parsed[0].index("sst_acc")
    assert parsed[1][column] != "" and parsed[2][column] == ""
    result = invoke(str(runs["a"]), "--metric", "sst_f1")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"error: --metric sst_f1: no compared run has this dev metric; they have: {', '.join(best(runs['a'])['dev'])}"]


def test_auto_precision_runs_pool_only_when_they_computed_in_the_same_precision(seeded, tmp_path):
    import shutil

    out, _, _ = seeded
    copies = []
    for seed, ran in ((5, "fp32"), (1, "fp32"), (2, "bf16")):
        source = out / f"cmp-optim.lr=1e-3-seed={seed}"
        target = tmp_path / source.name
        shutil.copytree(source, target)
        recipe = (target / "recipe.toml").read_text()
        assert 'precision = "auto"' in recipe  # the default
        info = json.loads((target / "run.json").read_text())
        info["device"]["precision"] = ran
        (target / "run.json").write_text(json.dumps(info))
        copies.append(str(target))
    result = invoke("compare", *copies)
    assert result.exit_code == 0, result.output
    headers, rows, _ = markdown_rows(result.output)
    assert [r[headers.index("n")] for r in rows] == ["2", "1"]
    assert "train.precision" in headers
    assert {r[headers.index("train.precision")] for r in rows} == {"auto (fp32)", "auto (bf16)"}


# --------------------------------------------------------------------------- mtbert archive
def test_archive_keeps_what_compare_needs_and_its_intervals_without_checkpoints(seeded, tmp_path):
    out, _, _ = seeded
    result = CliRunner().invoke(cli, ["archive", str(out), str(tmp_path / "kept")])
    assert result.exit_code == 0, result.output
    assert "6 run(s) archived" in result.output
    kept = tmp_path / "kept" / out.name
    files = {p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file()}
    run = "cmp-optim.lr=1e-3-seed=5"
    assert {f"{run}/run.json", f"{run}/recipe.toml", f"{run}/metrics.json", f"{run}/metrics.jsonl",
            f"{run}/predictions/sst-dev-output.csv", "sweep.json", "compare.md"} <= files
    assert not any("checkpoints" in f or "tfevents" in f or "test" in f.rsplit("/", 1)[-1] for f in files), files
    with_test = CliRunner().invoke(cli, ["archive", str(out), str(tmp_path / "all"), "--test-predictions"])
    assert with_test.exit_code == 0, with_test.output
    assert (tmp_path / "all" / out.name / run / "predictions" / "sst-test-output.csv").is_file()
    original = sorted(str(p) for p in out.iterdir() if p.is_dir())
    archived = sorted(str(p) for p in kept.iterdir() if p.is_dir())
    tables = [json.loads(invoke(*folders, "--baseline", str(root / run), "--format", "json", "--resamples", "300").stdout)
              for folders, root in ((original, out), (archived, kept))]
    strip = [{k: v for k, v in r.items() if k != "run" and "wall" not in k} for t in tables for r in t["rows"]]
    diff = {k: (a[k], b.get(k)) for a, b in zip(strip[:2], strip[2:]) for k in a if a[k] != b.get(k)}
    assert not diff, diff
    lows = {r["run"]: r["delta_mean_ci_low"] for r in tables[1]["rows"]}
    assert lows["cmp-optim.lr=1e-3"] is None and lows["cmp-optim.lr=1e-2"] is not None  # intervals from the archive


def test_archive_refuses_to_overwrite_and_names_what_is_not_a_run(seeded, tmp_path):
    out, _, _ = seeded
    dest = tmp_path / "kept"
    assert CliRunner().invoke(cli, ["archive", str(out), str(dest)]).exit_code == 0
    stamp = (dest / out.name / "compare.md").read_text()
    (dest / out.name / "compare.md").write_text("mine")
    again = CliRunner().invoke(cli, ["archive", str(out), str(dest)])
    assert again.exit_code == 2 and again.output.startswith("error: ") and "exists" in again.output
    assert (dest / out.name / "compare.md").read_text() == "mine"  # nothing already saved is lost
    forced = CliRunner().invoke(cli, ["archive", str(out), str(dest), "--force"])
    assert forced.exit_code == 0 and (dest / out.name / "compare.md").read_text() == stamp
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = CliRunner().invoke(cli, ["archive", str(empty), str(tmp_path / "x")])
    assert bad.exit_code == 2 and bad.output.strip() == f"error: {empty}: no run folder (no run.json) at or under it"


def test_archived_runs_find_moved_dev_files_through_the_data_dir_env_by_sha1(seeded, data_dir, tmp_path, monkeypatch):
    out, _, _ = seeded
    dest = tmp_path / "kept"
    assert CliRunner().invoke(cli, ["archive", str(out), str(dest)]).exit_code == 0
    kept = dest / out.name
    for info_path in kept.glob("*/run.json"):  # the data moved: run.json names a folder that is gone
        info = json.loads(info_path.read_text())
        for entry in info["data"].values():
            entry["dev"] = str(tmp_path / "gone" / Path(entry["dev"]).name)
        info_path.write_text(json.dumps(info))
    folders = sorted(str(p) for p in kept.iterdir() if p.is_dir())
    base = str(kept / "cmp-optim.lr=1e-3-seed=5")

    def interval(env: Path | None) -> tuple[object, str]:
        if env is None:
            monkeypatch.delenv("MTBERT_DATA_DIR", raising=False)
        else:
            monkeypatch.setenv("MTBERT_DATA_DIR", str(env))
        result = invoke(*folders, "--baseline", base, "--format", "json", "--resamples", "300")
        table = json.loads(result.stdout)
        row = next(r for r in table["rows"] if r["run"] == "cmp-optim.lr=1e-2")
        return row["delta_mean_ci_low"], " ".join(table["notes"])

    assert interval(data_dir)[0] is not None
    low, notes = interval(None)
    assert low is None and "MTBERT_DATA_DIR" in notes
    other = tmp_path / "other"  # same file names, other rows: the labels would be wrong, so no interval
    other.mkdir()
    for name in ("ids-sst-dev.csv", "sts-dev.csv"):
        lines = (data_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (other / name).write_text("".join(lines[:-1]), encoding="utf-8")
    low, notes = interval(other)
    assert low is None and "SHA-1" in notes
