"""Sweeps beyond one process: Optuna workers sharing a study, population-based training on Ray Tune.

Also the two engine pieces PBT stands on: the ``mtbert_on_state_saved`` event (the folder Tune
takes as the trial's checkpoint) and a resume that takes the recipe's learning rate over the
saved optimizer's (a trial continuing another's state with a perturbed rate).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mtbert import hookimpl
from mtbert.testing import installed_plugins, run_tiny_recipe, tiny_plugins

REPO = Path(__file__).resolve().parent.parent

RECIPE = """\
name = "shared"
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
epochs = 1
batch_size = 16

[train]
progress = false
predict = false
threads = 1

[sweep]
metric = "mean"
[sweep.space]
"optim.lr" = { low = 1e-4, high = 1e-2, log = true }
"model.hidden_dropout" = { low = 0.0, high = 0.3 }
"""


def worker(recipe: Path, out: Path, storage: str, trials: int, data_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "MTBERT_PLUGINS": "builtin", "OMP_NUM_THREADS": "1"}
    env.pop("MTBERT_DISABLE_PLUGINS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "mtbert", "sweep", str(recipe), "--optuna", str(trials), "--storage", storage,
         "--out", str(out), "--set", f"data.dir={json.dumps(str(data_dir))}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def test_two_worker_processes_share_one_study_and_every_trial_runs_once(tmp_path, data_dir):
    optuna = pytest.importorskip("optuna")
    recipe = tmp_path / "shared.toml"
    recipe.write_text(RECIPE, encoding="utf-8")
    out = tmp_path / "search"
    storage = f"sqlite:///{tmp_path / 'study.db'}"  # any Optuna storage URL; here a file both processes open
    trials = 6
    procs = [worker(recipe, out, storage, trials, data_dir) for _ in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stdout + stderr

    study = optuna.load_study(study_name="shared", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == trials  # the workers stopped at 6 between them
    others = [t for t in study.trials if t.state != optuna.trial.TrialState.COMPLETE]
    assert all(t.user_attrs.get("surplus") for t in others)  # at most a trial asked for while the last one ran
    # every trial ran exactly once, by one of the workers, into its own folder
    ran = [{int(line.split("]")[0].split()[-1]) for line in stdout.splitlines() if line.startswith("[trial ")}
           for stdout, _ in outputs]
    assert ran[0].isdisjoint(ran[1]) and ran[0] | ran[1] == {t.number for t in complete}
    assert ran[0] and ran[1]  # both worked on the study
    for t in complete:
        folder = Path(t.user_attrs["folder"])
        assert folder == out / f"shared-trial-{t.number}"
        info = json.loads((folder / "run.json").read_text())
        assert info["status"] == "finished" and info["resumes"] == 0
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1  # one epoch, one evaluation
        saved = tomllib.loads((folder / "recipe.toml").read_text())
        assert saved["optim"]["lr"] == t.params["optim.lr"]
        assert saved["model"]["hidden_dropout"] == t.params["model.hidden_dropout"]
        assert t.value == json.loads((folder / "metrics.json").read_text())["best"]["dev"]["mean"]
    assert len({t.params["optim.lr"] for t in complete}) == trials  # the workers' samplers draw different values
    trial_folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert trial_folders == sorted(f"shared-trial-{t.number}" for t in complete)


def test_a_bad_storage_url_is_one_error_line(builtin_plugins, data_dir, tmp_path):
    pytest.importorskip("optuna")
    from click.testing import CliRunner

    from mtbert.cli import cli

    recipe = tmp_path / "shared.toml"
    recipe.write_text(RECIPE, encoding="utf-8")
    result = CliRunner().invoke(cli, ["sweep", str(recipe), "--optuna", "1", "--storage", "nosuchdb://x",
                                      "--out", str(tmp_path / "s"), "--set", f"data.dir={json.dumps(str(data_dir))}"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith("error: --storage nosuchdb://x: cannot open the Optuna study")
    result = CliRunner().invoke(cli, ["sweep", str(recipe), "--storage", "sqlite:///x.db", "--grid", "seed=1,2"])
    assert result.exit_code == 2 and "--storage is the study of an Optuna search" in result.stderr


# --------------------------------------------------------------------------- the engine pieces
class Saved:
    def __init__(self):
        self.events: list[tuple[str, object]] = []

    @hookimpl
    def mtbert_on_evaluate(self, step):
        self.events.append(("evaluate", step))

    @hookimpl
    def mtbert_on_state_saved(self, run, folder):
        assert (folder / "state.json").is_file() and (folder / "model.safetensors").is_file()
        self.events.append(("saved", run.global_step))


def test_state_saved_follows_each_evaluation_and_each_checkpoint_every(tmp_path):
    saved = Saved()
    folder, _ = run_tiny_recipe(tiny_plugins(("saved", saved)), tmp_path / "run",
                                overrides=["optim.epochs=2", "train.checkpoint_every=3", "train.predict=false"])
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    per_epoch = steps[0]
    expected = []
    for epoch_end in steps:
        expected += [("saved", s) for s in range(3, epoch_end, 3) if s > epoch_end - per_epoch]
        expected += [("evaluate", epoch_end), ("saved", epoch_end)]
    assert saved.events == expected


class Rates:
    def __init__(self, stop_at: int | None = None):
        self.stop_at = stop_at
        self.lrs: dict[int, float] = {}

    @hookimpl
    def mtbert_on_step_end(self, run, step, logs):
        self.lrs[step] = logs["lr"]
        if step == self.stop_at:
            run.request_stop("test stop")


def test_resuming_with_another_learning_rate_continues_the_schedule_from_the_new_rate(tmp_path):
    from mtbert.engine.trainer import RunInterrupted
    from mtbert.recipe import validate
    from mtbert.testing import tiny_recipe_table

    plugins = tiny_plugins()
    overrides = ["optim.epochs=2", "train.predict=false", "optim.warmup=0.0"]
    whole = Rates()
    run_tiny_recipe(tiny_plugins(("rates", whole)), tmp_path / "whole", overrides=overrides)
    first = Rates(stop_at=3)
    with pytest.raises(RunInterrupted):
        run_tiny_recipe(tiny_plugins(("rates", first)), tmp_path / "pbt", overrides=overrides)
    # what a PBT trial does when it exploits: write the perturbed value into recipe.toml, --resume
    table = tiny_recipe_table()
    table["optim"].update(lr=2e-3, epochs=2, warmup=0.0)
    table["train"]["predict"] = False
    (tmp_path / "pbt" / "recipe.toml").write_text(validate(table, plugins, source="x").to_toml(), encoding="utf-8")
    from mtbert.engine.run import run_recipe

    second = Rates()
    with_rates = tiny_plugins(("rates", second))
    with installed_plugins(with_rates):
        run_recipe(validate(table, with_rates, source="x"), with_rates, out=tmp_path / "pbt", resume=True,
                   say=lambda m: None, warn=lambda m: None)
    assert [first.lrs[s] for s in (1, 2, 3)] == [whole.lrs[s] for s in (1, 2, 3)]
    later = sorted(second.lrs)
    assert later[0] == 4
    for step in later:  # the same linear decay, from twice the base rate
        assert second.lrs[step] == pytest.approx(2 * whole.lrs[step], rel=1e-6)


# --------------------------------------------------------------------------- population-based training
PBT_RECIPE = RECIPE.replace('name = "shared"', 'name = "pbt"').replace("epochs = 1", "epochs = 3").replace(
    '"model.hidden_dropout" = { low = 0.0, high = 0.3 }', '"optim.batch_size" = { choices = [16] }')


def test_population_based_training_on_ray_tune_exploits_through_mtbert_resume_state(builtin_plugins, data_dir,
                                                                                      tmp_path, monkeypatch):
    """Two trials, three evaluations each; at the second, the worse trial continues the better one's state."""
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError:
        reason = "Ray Tune is not installed (pip install 'mtbert[ray]'; .ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: missing test inputs are failures)")
        pytest.skip(reason)
    from click.testing import CliRunner

    from mtbert.cli import cli

    recipe = tmp_path / "pbt.toml"
    recipe.write_text(PBT_RECIPE, encoding="utf-8")
    out = tmp_path / "population"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("RAY_ADDRESS", "local")  # a local Ray instance for this test, never a running cluster
    try:
        result = CliRunner().invoke(cli, ["sweep", str(recipe), "--pbt", "2", "--perturb-every", "2", "--out", str(out),
                                          "--set", f"data.dir={json.dumps(str(data_dir))}"])
    finally:
        import ray

        ray.shutdown()
    assert result.exit_code == 0, result.output + str(result.exception)
    folders = sorted(p for p in out.iterdir() if p.name.startswith("pbt-pbt-"))
    assert len(folders) == 2
    infos = {f: json.loads((f / "run.json").read_text()) for f in folders}
    assert all(i["status"] == "finished" for i in infos.values())
    # exactly one trial exploited the other, once: it continued from the other's checkpoint
    # (every trial also continues from its own checkpoint after waiting at the decision point)
    restores = {f: json.loads((f / "pbt.json").read_text())["restores"] for f in folders}
    trial_of = {f: f.name.removeprefix("pbt-pbt-") for f in folders}
    foreign = {f: [r for r in restores[f] if trial_of[f] not in Path(r["checkpoint"]).parent.name] for f in folders}
    exploiters = [f for f in folders if foreign[f]]
    assert len(exploiters) == 1 and len(foreign[exploiters[0]]) == 1
    (exploiter,) = exploiters
    (donor,) = [f for f in folders if f != exploiter]
    assert trial_of[donor] in Path(foreign[exploiter][0]["checkpoint"]).parent.name
    assert infos[exploiter]["resumes"] >= 1
    lines = [json.loads(line) for line in (exploiter / "metrics.jsonl").read_text().splitlines()]
    donor_lines = [json.loads(line) for line in (donor / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in donor_lines] == [1, 2, 3]
    # its own first two evaluations, then the third after continuing the donor's state of epoch 2
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert lines[1]["metrics"]["mean"] <= donor_lines[1]["metrics"]["mean"]  # it was the worse one
    assert lines[2]["step"] == donor_lines[2]["step"]
    donor_lr = tomllib.loads((donor / "recipe.toml").read_text())["optim"]["lr"]
    new_lr = tomllib.loads((exploiter / "recipe.toml").read_text())["optim"]["lr"]
    assert new_lr != donor_lr and 1e-4 <= new_lr <= 1e-2  # perturbed (x0.8, x1.2 or redrawn), within the range
    assert new_lr == pytest.approx(foreign[exploiter][0]["config"]["optim.lr"]) or new_lr in (1e-4, 1e-2)
    # Ray Tune's own record of the exploit, and its checkpoints of mtbert's state
    policies = list((out / "ray" / "pbt").glob("pbt_policy_*.txt"))
    assert sum(len(p.read_text().splitlines()) for p in policies) == 1
    assert list((out / "ray" / "pbt").rglob("checkpoint_*/state.json"))
    assert "best trial: pbt-pbt-" in result.stdout
    assert (out / "compare.md").is_file() and json.loads((out / "sweep.json").read_text())["pbt"]["population"] == 2
