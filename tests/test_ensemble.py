"""Ensembles (``train.ensemble``): members as complete runs, the mean output, resume, eval, export, compare."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from mtbert import hookimpl
from mtbert.cli import cli
from mtbert.engine.ensemble import member_recipe, member_seed
from mtbert.engine.restore import EnsembleModel, restore_run
from mtbert.engine.run import run_recipe
from mtbert.errors import RecipeError, RunInterrupted
from mtbert.plugins import load_plugins
from mtbert.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
SMALL = [
    "tasks.sst.train_limit=48", "tasks.para.train_limit=48", "tasks.sts.train_limit=48",
    "tasks.sst.dev_limit=40", "tasks.para.dev_limit=40", "tasks.sts.dev_limit=40",
    "tasks.sst.test_limit=16", "tasks.para.test_limit=16", "tasks.sts.test_limit=16",
    "optim.epochs=1", "train.progress=false", "train.ensemble=2",
]


def ensemble_recipe(plugins, data_dir, extra=()):
    overrides = [f"data.dir={json.dumps(str(data_dir))}", *SMALL, *extra]
    return load_recipe(REPO / "recipes" / "quickstart.toml", overrides, plugins)


def quiet(_message: str) -> None:
    pass


class StopSecondMember:
    """Ctrl-C at step 2 of the member whose seed is not the recipe's (member 2)."""

    def __init__(self, recipe_seed: int):
        self.recipe_seed = recipe_seed

    @hookimpl
    def mtbert_on_step_end(self, run, step, logs):
        if step == 2 and run.recipe.seed != self.recipe_seed:
            os.kill(os.getpid(), signal.SIGINT)


def test_member_seeds_are_the_recipes_then_distinct_derived_ones():
    seeds = [member_seed(11711, k) for k in range(1, 6)]
    assert seeds[0] == 11711
    assert len(set(seeds)) == 5
    assert seeds == [member_seed(11711, k) for k in range(1, 6)]  # stable
    assert member_seed(1, 2) != member_seed(2, 2)


class Fixed(nn.Module):
    """A 'model' whose raw output is a fixed tensor, with the linear head's predict."""

    def __init__(self, raw: torch.Tensor, head: nn.Module):
        super().__init__()
        self.raw = raw
        self.heads = {"t": head}

    def forward(self, batch):
        return self.raw


class ArgmaxHead(nn.Module):
    def predict(self, raw):
        return raw.argmax(dim=-1)


def test_the_ensemble_predicts_from_the_mean_of_raw_outputs():
    torch.manual_seed(0)
    raws = [torch.randn(7, 5) for _ in range(3)]
    model = EnsembleModel([Fixed(r, ArgmaxHead()) for r in raws])
    mean = model(None)
    assert torch.allclose(mean, torch.stack(raws).mean(0))
    assert torch.equal(model.heads["t"].predict(mean), torch.stack(raws).mean(0).argmax(-1))
    # Mean logits, not votes: one confident member outweighs two lukewarm ones.
    votes = EnsembleModel([Fixed(torch.tensor([[0.1, 0.0]]), ArgmaxHead()), Fixed(torch.tensor([[0.1, 0.0]]), ArgmaxHead()),
                           Fixed(torch.tensor([[0.0, 5.0]]), ArgmaxHead())])
    assert votes.heads["t"].predict(votes(None)).item() == 1


def test_member_recipes_train_one_model_with_their_seed(plugins_with, data_dir):
    recipe = ensemble_recipe(plugins_with(), data_dir)
    first, second = member_recipe(recipe, 1), member_recipe(recipe, 2)
    assert (first.seed, first.train.ensemble) == (recipe.seed, 1)
    assert second.seed == member_seed(recipe.seed, 2) and second.train.ensemble == 1
    assert first.optim == recipe.optim and first.tasks.keys() == recipe.tasks.keys()


def test_an_ensemble_refuses_torchrun(plugins_with, data_dir, tmp_path, monkeypatch):
    recipe = ensemble_recipe(plugins_with(), data_dir)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RecipeError, match="train.ensemble: .* without torchrun"):
        run_recipe(recipe, load_plugins([]), out=tmp_path / "run", say=quiet, warn=quiet)
    assert not (tmp_path / "run").exists()


def test_an_ensemble_trains_resumes_and_predicts_with_its_members_mean(tmp_path, data_dir, minilm_dir, plugins_with):
    folder = tmp_path / "ens"
    plugins = plugins_with(("stopper", StopSecondMember(11711)))
    recipe = ensemble_recipe(plugins, data_dir)
    assert recipe.seed == 11711
    with pytest.raises(RunInterrupted, match=rf"continue the whole ensemble with: mtbert resume {folder}"):
        run_recipe(recipe, plugins, out=folder, say=quiet, warn=quiet)
    interrupted = json.loads((folder / "run.json").read_text())
    assert interrupted["status"] == "interrupted"
    assert [m["seed"] for m in interrupted["ensemble"]["runs"]] == [11711]  # the members finished so far
    first_info = json.loads((folder / "members" / "1" / "run.json").read_text())
    assert first_info["status"] == "finished" and first_info["seed"] == 11711
    assert not (folder / ".lock").exists()

    # Resume through the CLI: member 1 is kept as it is, member 2 continues from its saved state.
    plugins_with()
    result = CliRunner().invoke(cli, ["resume", str(folder)])
    assert result.exit_code == 0, result.output
    assert "finished earlier" in result.output and "resuming" in result.output
    assert json.loads((folder / "members" / "1" / "run.json").read_text()) == first_info
    info = json.loads((folder / "run.json").read_text())
    assert info["status"] == "finished" and info["resumes"] == 1
    assert [m["seed"] for m in info["ensemble"]["runs"]] == [11711, member_seed(11711, 2)]
    assert info["data"]["sst"]["dev_sha1"]
    assert info["train_seconds"] > 0

    # The recorded metrics are those of the mean of the members' raw outputs.
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["best"]["stage"] == "ensemble"
    ensemble = summary["best"]["dev"]
    members = [json.loads((folder / "members" / k / "metrics.json").read_text())["best"]["dev"] for k in "12"]
    assert ensemble["mean"] != members[0]["mean"] or ensemble["mean"] != members[1]["mean"]
    restored = restore_run(folder, [], plugins_with())
    assert isinstance(restored.model, EnsembleModel) and len(restored.model.members) == 2
    result = CliRunner().invoke(cli, ["eval", str(folder)])
    assert result.exit_code == 0, result.output
    printed = dict(line.split("\t") for line in result.output.splitlines() if "\t" in line)
    for key in ("sst_acc", "para_acc", "sts_pearson", "mean"):
        assert float(printed[key]) == pytest.approx(ensemble[key], abs=1e-4)

    # Predictions of the mean output, dev and test, in the tasks' formats.
    names = sorted(p.name for p in (folder / "predictions").iterdir())
    assert any("dev" in n for n in names) and any("test" in n for n in names)

    # compare reads the ensemble as one run; export asks for one member.
    result = CliRunner().invoke(cli, ["compare", str(folder), str(folder / "members" / "1")])
    assert result.exit_code == 0, result.output
    assert "ens" in result.output
    result = CliRunner().invoke(cli, ["compare", str(folder), str(folder / "members" / "1"), "--format", "csv"])
    rows = {line["run"]: line for line in csv.DictReader(io.StringIO(result.stdout))}
    assert rows[folder.name]["best_epoch"] == "ensemble"  # no epoch of its own: the members' mean output
    assert rows["1"]["best_epoch"].isdigit()
    # The members pool as replicates named by their ensemble, not "1, 2".
    result = CliRunner().invoke(cli, ["compare", *(str(m) for m in sorted((folder / "members").iterdir())), "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(row["run"], row["n"]) for row in rows] == [(f"{folder.name} (members)", "2")]
    result = CliRunner().invoke(cli, ["export", str(folder), str(tmp_path / "hf")])
    assert result.exit_code == 2
    assert f"export one member: mtbert export {folder / 'members' / '1'}" in result.output


def test_a_saved_recipe_without_a_newer_option_is_the_same_recipe_at_its_default(plugins_with, data_dir, tmp_path):
    """Run folders made before ``train.ensemble`` existed still count as finished runs of their recipe
    (a sweep skips them, an ensemble adopts them as a member)."""
    from mtbert.engine.run_records import same_recipe

    plugins = plugins_with()
    single = member_recipe(ensemble_recipe(plugins, data_dir), 1)
    text = single.to_toml()
    assert "ensemble = 1\n" in text
    (tmp_path / "recipe.toml").write_text(text.replace("ensemble = 1\n", ""))
    assert same_recipe(tmp_path, single, plugins)
    assert not same_recipe(tmp_path, ensemble_recipe(plugins, data_dir), plugins)  # ensemble = 2 differs
    assert not same_recipe(tmp_path, member_recipe(ensemble_recipe(plugins, data_dir), 2), plugins)  # another seed
    (tmp_path / "recipe.toml").write_text("not toml [")
    assert not same_recipe(tmp_path, single, plugins)


def test_a_renamed_copy_of_a_recipe_is_the_same_recipe(plugins_with, data_dir, tmp_path):
    """Name and description are labels: a recipe that promotes another under a new name (as
    recipes/best.toml does) adopts that recipe's finished runs, and compare pools them."""
    from mtbert.engine.run_records import same_recipe
    from mtbert.replicates import NOT_COMPARED

    plugins = plugins_with()
    original = ensemble_recipe(plugins, data_dir)
    (tmp_path / "recipe.toml").write_text(original.to_toml())
    renamed = ensemble_recipe(plugins, data_dir, ["name=best", 'description="promoted"'])
    assert renamed.name == "best" and renamed.name != original.name
    assert same_recipe(tmp_path, renamed, plugins)
    assert not same_recipe(tmp_path, ensemble_recipe(plugins, data_dir, ["name=best", "optim.lr=1e-4"]), plugins)
    assert {"name", "description", "seed"} <= NOT_COMPARED


def test_validate_says_the_recipe_is_an_ensemble(plugins_with, data_dir):
    plugins_with()
    result = CliRunner().invoke(cli, ["validate", str(REPO / "recipes" / "ablations" / "ensemble.toml"),
                                      "--set", f"data.dir={json.dumps(str(data_dir))}"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("combiner sum; an ensemble of 3 runs")


def test_archive_keeps_an_ensembles_members(tmp_path):
    from mtbert.archive import find_runs

    ensemble = tmp_path / "sweep" / "ens-seed=1"
    for folder in (ensemble, ensemble / "members" / "1", ensemble / "members" / "2"):
        folder.mkdir(parents=True)
        (folder / "run.json").write_text("{}")
    (ensemble / "members" / "2" / "checkpoints").mkdir()
    expected = [ensemble, ensemble / "members" / "1", ensemble / "members" / "2"]
    assert find_runs(ensemble) == expected
    assert find_runs(tmp_path / "sweep") == expected


def test_compare_reads_an_older_recipe_with_newer_options_at_their_defaults(tmp_path):
    """A run made before train.ensemble existed and one made after are replicates of one recipe."""
    from mtbert.compare import read_run
    from mtbert.recipe.sections import with_section_defaults

    (tmp_path / "recipe.toml").write_text('name = "x"\nseed = 1\n[train]\nprecision = "fp32"\n[optim]\nlr = 1e-4\n')
    record = read_run(tmp_path)
    assert record.recipe["train"]["ensemble"] == 1 and record.recipe["train"]["precision"] == "fp32"
    assert record.recipe["optim"]["lr"] == 1e-4 and record.recipe["optim"]["betas"] == [0.9, 0.999]
    assert "head_lr" not in record.recipe["optim"]  # None defaults stay absent, as in a resolved recipe.toml
    assert with_section_defaults({"name": "y"}) == {"name": "y"}  # sections a table lacks are not invented
