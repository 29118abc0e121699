"""``mtbert sweep``: grids run into one folder and end with the compare table; Optuna search."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from mtbert.cli import cli
from mtbert.errors import RecipeError
from mtbert.recipe import parse_override
from mtbert.recipe import check_sweep_table
from mtbert.sweep import grid_variants, parse_grid, split_values, toml_literal
from conftest import random_tiny_recipe

RECIPE = random_tiny_recipe("sw", 5, {"sst": {"train_limit": 32, "dev_limit": 32}, "sts": {"train_limit": 32, "dev_limit": 32}},
                            train={"predict": False, "threads": 1}, tail="""
[sweep]
metric = "mean"
[sweep.space]
"optim.lr" = { low = 1e-4, high = 1e-2, log = true }
"sampler.name" = { choices = ["round-robin", "upsample"] }
""")


@pytest.fixture
def sweep_env(builtin_plugins, data_dir, tmp_path):
    """The recipe file, the --set for the data, and a runner that restores torch's thread count."""
    path = tmp_path / "sw.toml"
    path.write_text(RECIPE, encoding="utf-8")
    threads = torch.get_num_threads()

    def sweep(*args: str):
        try:
            return CliRunner().invoke(cli, ["sweep", str(path), "--set", f"data.dir={json.dumps(str(data_dir))}", *args])
        finally:
            torch.set_num_threads(threads)

    return sweep, tmp_path


def table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]


def test_grid_runs_every_variant_into_one_folder_then_prints_the_table_and_a_rerun_skips_them(sweep_env):
    sweep, tmp = sweep_env
    out = tmp / "grid"
    result = sweep("--grid", "optim.lr=1e-3,3e-3", "--grid", "seed=9", "--out", str(out))
    assert result.exit_code == 0, result.output
    names = ["sw-optim.lr=1e-3-seed=9", "sw-optim.lr=3e-3-seed=9"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == names
    import tomllib

    for name, lr in zip(names, (1e-3, 3e-3)):
        folder = out / name
        saved = tomllib.loads((folder / "recipe.toml").read_text())
        assert saved["optim"]["lr"] == lr and saved["seed"] == 9
        assert "sweep" not in saved  # a run ignores the [sweep] table
        assert json.loads((folder / "run.json").read_text())["status"] == "finished"
    rows = table_rows(result.stdout)
    assert rows[0][:2] == ["run", "optim.lr"]  # only the key that differs (seed is 9 in both)
    assert [r[:2] for r in rows[2:]] == [[names[0], "0.001"], [names[1], "0.003"]]
    for row, name in zip(rows[2:], names):
        mean = json.loads((out / name / "metrics.json").read_text())["best"]["dev"]["mean"]
        assert row[rows[0].index("mean")] == f"{mean:.3f}"
    assert (out / "compare.md").read_text() in result.stdout
    record = json.loads((out / "sweep.json").read_text())
    assert [v["status"] for v in record["variants"]] == ["finished", "finished"]
    assert record["grid"] == {"optim.lr": ["1e-3", "3e-3"], "seed": ["9"]}

    # rerun: the finished variants are skipped (nothing is trained again); a failed one without
    # saved state is moved aside and run again
    best = out / names[0] / "checkpoints" / "best.safetensors"
    stamp = best.stat().st_mtime_ns
    info = json.loads((out / names[1] / "run.json").read_text())
    (out / names[1] / "run.json").write_text(json.dumps({**info, "status": "failed"}))
    import shutil

    shutil.rmtree(out / names[1] / "checkpoints" / "last", ignore_errors=True)  # finished runs drop it already
    again = sweep("--grid", "optim.lr=1e-3,3e-3", "--grid", "seed=9", "--out", str(out))
    assert again.exit_code == 0, again.output
    assert f"skipped: {out / names[0]} holds this variant's finished run" in again.stdout
    assert best.stat().st_mtime_ns == stamp
    assert (out / f"{names[1]}.failed-1" / "run.json").is_file()
    assert json.loads((out / names[1] / "run.json").read_text())["status"] == "finished"
    assert "sweep: 1 finished, 1 skipped (finished earlier), 0 failed" in again.stdout
    assert [r[0] for r in table_rows(again.stdout)[2:]] == names


def test_an_interrupted_sweep_stops_and_its_rerun_resumes_the_interrupted_variant(sweep_env, monkeypatch):
    from mtbert import hookimpl
    from mtbert.plugins import load_plugins, set_plugins

    class StopOnce:
        """Asks the first run to stop after its first optimizer step, as Ctrl-C does."""

        stopped = False

        @hookimpl
        def mtbert_on_step_end(self, run, step, logs):
            if not StopOnce.stopped:
                StopOnce.stopped = True
                run.request_stop("interrupted (test)")

    set_plugins(load_plugins([("stop-once", StopOnce())]))
    sweep, tmp = sweep_env
    out = tmp / "stop"
    first = sweep("--grid", "optim.lr=1e-3,3e-3", "--out", str(out))
    assert first.exit_code == 130 and first.stderr.startswith("interrupted: interrupted (test): stopped at step 1")
    folder = out / "sw-optim.lr=1e-3"
    assert json.loads((folder / "run.json").read_text())["status"] == "interrupted"
    assert not (out / "sw-optim.lr=3e-3").exists()  # the sweep stopped with the run
    again = sweep("--grid", "optim.lr=1e-3,3e-3", "--out", str(out))
    assert again.exit_code == 0, again.output
    assert f"resuming {folder} at step 1" in again.stdout
    info = json.loads((folder / "run.json").read_text())
    assert info["status"] == "finished" and info["resumes"] == 1
    assert json.loads((out / "sweep.json").read_text())["variants"][0]["message"] == "resumed"
    assert [r[0] for r in table_rows(again.stdout)[2:]] == ["sw-optim.lr=1e-3", "sw-optim.lr=3e-3"]


def test_a_bad_grid_value_fails_the_sweep_before_any_run(sweep_env):
    sweep, tmp = sweep_env
    out = tmp / "bad"
    result = sweep("--grid", "optim.lr=1e-3,abc", "--grid", "optim.epochs=1,0", "--out", str(out))
    assert result.exit_code == 2
    errors = result.stderr.strip().splitlines()
    assert all(line.startswith("error: --grid optim.") for line in errors), errors
    assert any("optim.lr" in line and "'abc'" in line for line in errors)
    assert any("optim.epochs" in line and "0" in line for line in errors)
    assert len(errors) == len(set(errors)) == 2  # each problem once, though several variants share it
    assert not out.exists()
    unknown = sweep("--grid", "optim.lrr=1e-3,2e-3", "--out", str(out))
    assert unknown.exit_code == 2 and unknown.stderr.startswith("error: --grid optim.lrr: unknown key")
    assert not out.exists()
    malformed = sweep("--grid", "optim.lr", "--out", str(out))
    assert malformed.exit_code == 2
    assert malformed.stderr.strip() == "error: --grid 'optim.lr': expected KEY.PATH=VALUE1,VALUE2,..."
    nothing = sweep("--out", str(out))
    assert nothing.exit_code == 2 and "nothing to sweep" in nothing.stderr


def test_a_failing_variant_is_reported_and_the_sweep_goes_on(sweep_env, data_dir):
    sweep, tmp = sweep_env
    out = tmp / "fail"
    good = str(data_dir / "ids-sst-dev.csv")
    result = sweep("--grid", f"tasks.sst.dev_file={json.dumps(str(tmp / 'gone.csv'))},{json.dumps(good)}",
                   "--out", str(out))
    assert result.exit_code == 2
    assert "failed: data file for tasks.sst.dev_file (sst dev) not found" in result.stdout
    rows = table_rows(result.stdout)
    assert len(rows) == 3 and rows[2][-1] == "finished"  # the second variant ran after the first failed
    assert "- skipped " in result.stdout and ": failed: data file" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("error: sweep: 1 of 2 variants failed (")


def test_optuna_search_over_the_recipes_ranges(sweep_env):
    optuna = pytest.importorskip("optuna")
    sweep, tmp = sweep_env
    out = tmp / "search"
    result = sweep("--optuna", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    folders = [out / "sw-trial-0", out / "sw-trial-1"]
    means = [json.loads((f / "metrics.json").read_text())["best"]["dev"]["mean"] for f in folders]
    study = optuna.load_study(study_name="sw", storage=f"sqlite:///{out / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert [t.value for t in study.trials] == pytest.approx(means)
    for t, folder in zip(study.trials, folders):
        assert 1e-4 <= t.params["optim.lr"] <= 1e-2
        assert t.params["sampler.name"] in ("round-robin", "upsample")
        import tomllib

        saved = tomllib.loads((folder / "recipe.toml").read_text())
        assert saved["optim"]["lr"] == t.params["optim.lr"] and saved["sampler"]["name"] == t.params["sampler.name"]
    best = max(range(2), key=lambda i: means[i])
    assert f"best trial: sw-trial-{best}: dev mean {means[best]:.4f}" in result.stdout
    assert [r[0] for r in table_rows(result.stdout)[2:]] == ["sw-trial-0", "sw-trial-1"]
    # the study continues: 2 trials are done, so asking for 2 again trains nothing
    again = sweep("--optuna", "2", "--out", str(out))
    assert again.exit_code == 0, again.output
    assert "(2 done earlier)" in again.stdout and "[trial" not in again.stdout
    assert [r[0] for r in table_rows(again.stdout)[2:]] == ["sw-trial-0", "sw-trial-1"]
    both = sweep("--optuna", "2", "--grid", "seed=1", "--out", str(out))
    assert both.exit_code == 2 and "give one of them" in both.stderr


def test_optuna_without_a_space_or_with_a_space_key_the_recipe_lacks(sweep_env, tmp_path):
    pytest.importorskip("optuna")
    sweep, tmp = sweep_env
    recipe = tmp / "sw.toml"
    recipe.write_text(RECIPE.split("[sweep]")[0], encoding="utf-8")
    result = sweep("--optuna", "1", "--out", str(tmp / "s1"))
    assert result.exit_code == 2 and "has no [sweep.space] table" in result.stderr
    recipe.write_text(RECIPE.split("[sweep]")[0] + '[sweep.space]\n"optim.lrr" = { low = 1e-4, high = 1e-3 }\n')
    result = sweep("--optuna", "1", "--out", str(tmp / "s2"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: sweep.space: optim.lrr: unknown key")
    assert not (tmp / "s2").exists()


# --------------------------------------------------------------------------- pieces
def test_grid_values_split_at_top_level_commas_and_read_like_set_values():
    assert split_values('1e-5,[128, 64],"a,b",{ x = 1, y = 2 },word') == [
        "1e-5", "[128, 64]", '"a,b"', "{ x = 1, y = 2 }", "word"]
    grid = parse_grid(["optim.lr=1e-5,3e-5", "tasks.para.head.hidden=[128, 64],[32]", "sampler.name=loop"])
    assert grid == [("optim.lr", ["1e-5", "3e-5"]), ("tasks.para.head.hidden", ["[128, 64]", "[32]"]),
                    ("sampler.name", ["loop"])]
    assert [parse_override(f"k={v}")[1] for v in grid[1][1]] == [[128, 64], [32]]
    variants = grid_variants("r", grid, Path("out"))
    assert [v.overrides for v in variants] == [
        ["optim.lr=1e-5", "tasks.para.head.hidden=[128, 64]", "sampler.name=loop"],
        ["optim.lr=1e-5", "tasks.para.head.hidden=[32]", "sampler.name=loop"],
        ["optim.lr=3e-5", "tasks.para.head.hidden=[128, 64]", "sampler.name=loop"],
        ["optim.lr=3e-5", "tasks.para.head.hidden=[32]", "sampler.name=loop"],
    ]
    assert variants[0].folder == Path("out/r-optim.lr=1e-5-tasks.para.head.hidden=128_64-sampler.name=loop")
    for bad, message in (("x=", "empty value"), ("=1", "empty key"), ("a..b=1", "empty key"), ("x=1,,2", "empty value")):
        with pytest.raises(RecipeError, match=message):
            parse_grid([bad])
    with pytest.raises(RecipeError, match="given twice"):
        parse_grid(["x=1", "x=2"])
    # values that differ only in characters a folder name cannot hold still get their own folders
    twins = grid_variants("r", [("data.dir", ["a/b", "a b"])], Path("o"))
    assert len({v.folder for v in twins}) == 2


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**9, 10**9), st.booleans(),
                 st.text(max_size=12), st.lists(st.integers(0, 99), max_size=3)))
def test_toml_literal_reads_back_as_the_same_value(value):
    assert parse_override(f"k={toml_literal(value)}")[1] == value


def test_sweep_table_problems_are_one_line_each_at_their_key():
    assert check_sweep_table({"space": {"optim.lr": {"low": 1e-5, "high": 1e-4, "log": True},
                                        "n": {"low": 8, "high": 32, "step": 8},
                                        "s": {"choices": ["a", "b"]}},
                              "grid": {"seed": [1, 2]}, "metric": "sst_acc"}, {"sst_acc"}) == []
    problems = dict(check_sweep_table({
        "trials": 3, "metric": "sst_ac", "grid": {"seed": []},
        "space": {"a": {"low": 1, "high": 1}, "b": {"low": 0.0, "high": 1.0, "log": True}, "c": {"choices": []},
                  "d": {"low": 1e-5, "high": 1e-3, "log": True, "step": 1e-5}, "e": 3, "f": {"high": 2},
                  "g": {"choices": [1], "low": 0}, "h": {"choices": [[1]]}, "i": {"low": "0", "high": 1}},
    }, {"sst_acc"}))
    assert problems == {
        "sweep.trials": "unknown key (allowed: space, grid, metric)",
        "sweep.metric": "'sst_ac' is not a dev metric of this recipe; choose mean or one of sst_acc — did you mean 'sst_acc'?",
        "sweep.grid.seed": "[] is not a non-empty list of values",
        "sweep.space.a": "low (1) must be below high (1)",
        "sweep.space.b": "a log range needs low > 0, got 0.0",
        "sweep.space.c": "choices = [] is not a non-empty list",
        "sweep.space.d": "log and step cannot be combined",
        "sweep.space.e": "3 is not a table { low = .., high = .. [, log = true | step = ..] } or { choices = [..] }",
        "sweep.space.f": "a range needs low and high (or choices = [...])",
        "sweep.space.g": "a choices range takes no other keys (found low)",
        "sweep.space.h": "choices must be strings, numbers or booleans, found [1]",
        "sweep.space.i": "low and high must be numbers, got '0' and 1",
    }
    assert check_sweep_table("x", None) == [("sweep", "'x' is not a table (allowed keys: space, grid, metric)")]


def test_recipe_validation_accepts_the_sweep_table_and_reports_its_problems(builtin_plugins, write_recipe):
    from mtbert.recipe import load_recipe

    path = write_recipe(RECIPE)
    recipe = load_recipe(path, [], builtin_plugins)
    assert "sweep" not in recipe.to_dict()
    bad = write_recipe(RECIPE.replace('metric = "mean"', 'metric = "para_acc"'), name="bad.toml")
    with pytest.raises(RecipeError) as caught:
        load_recipe(bad, [], builtin_plugins)
    line = RECIPE.splitlines().index('metric = "mean"') + 1
    assert caught.value.problems == [
        f"{bad.resolve()}:{line}: sweep.metric: 'para_acc' is not a dev metric of this recipe; choose mean or one of "
        "sst_acc, sts_pearson"]


def test_suggest_uses_the_kind_of_each_range():
    optuna = pytest.importorskip("optuna")
    from mtbert.sweep import suggest

    space = {"f": {"low": 1e-5, "high": 1e-3, "log": True}, "i": {"low": 8, "high": 32, "step": 8},
             "c": {"choices": ["x", "y"]}, "u": {"low": 0.0, "high": 0.5}}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        values = {k: suggest(trial, k, s) for k, s in space.items()}
        study.tell(trial, 0.0)
        assert 1e-5 <= values["f"] <= 1e-3 and isinstance(values["f"], float)
        assert values["i"] in (8, 16, 24, 32) and isinstance(values["i"], int)
        assert values["c"] in ("x", "y") and 0.0 <= values["u"] <= 0.5
    logs = [math.log10(t.params["f"]) for t in study.trials]
    assert min(logs) < -4 and max(logs) > -4  # log scale: both decades are drawn


def test_seeds_a_count_keeps_the_recipe_seed_first_and_a_list_is_taken_as_given():
    from mtbert.sweep import parse_seeds

    assert parse_seeds("3", 11711) == [11711, 1, 2]
    assert parse_seeds("3", 1) == [1, 2, 3]  # the recipe's seed is not drawn twice
    assert parse_seeds("1", 5) == [5]
    assert parse_seeds("11711,1,2", 0) == [11711, 1, 2]
    assert parse_seeds("11711,", 0) == [11711] and parse_seeds("3,", 11711) == [3]  # one seed, not a count
    assert len(parse_seeds("100", 11711)) == 100
    for bad, message in (("0", "at least 1"), ("1,1", "twice"), ("a,b", "a count"), ("-1,2", ">= 0"),
                         ("11711", "for the one seed 11711 write --seeds 11711,"), (",", "a count")):
        with pytest.raises(RecipeError) as info:
            parse_seeds(bad, 5)
        assert message in str(info.value) and "--seeds" in str(info.value)


def test_seeds_with_a_grid_over_seed_or_optuna_is_refused(sweep_env):
    sweep, tmp = sweep_env
    result = sweep("--seeds", "2", "--grid", "seed=1,2", "--out", str(tmp / "a"))
    assert result.exit_code != 0 and "--seeds and a grid over seed" in result.output
    result = sweep("--seeds", "2", "--optuna", "2", "--out", str(tmp / "b"))
    assert result.exit_code != 0 and "--optuna and --seeds" in result.output
    assert not (tmp / "a").exists() and not (tmp / "b").exists()  # refused before any run
