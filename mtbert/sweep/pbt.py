"""Population-based training on Ray Tune: ``mtbert sweep RECIPE --pbt N`` (``pip install 'mtbert[ray]'``).

``N`` trials start from values drawn from the recipe's ``[sweep.space]`` and train side by
side, each a normal mtbert run folder ``DIR/<name>-pbt-<trial id>/``. After every
``--perturb-every`` evaluations Ray Tune's ``PopulationBasedTraining`` ranks the trials by dev
``[sweep] metric``; a trial in the bottom quantile (a quarter; half with fewer than four trials)
*exploits* one in the top: it continues from that trial's saved state with that trial's values,
the changeable ones perturbed (x0.8 or x1.2, or redrawn). All trials wait for each other at
these points (synchronous PBT); an exploit at a run's last evaluation makes the trial finish as
a copy of the better one (its resume finds nothing left to train). Only hyperparameters that can change
in the middle of a run are perturbed (:data:`MUTABLE`); other ``[sweep.space]`` keys are drawn
once per trial and travel with the state they belong to.

Checkpoints are mtbert's own resume state: a reporter plugin hands Tune ``checkpoints/last``
(through the ``mtbert_on_state_saved`` hook, right after each evaluation's state is written) with
the evaluation's metrics; a trial that exploits gets that folder copied into its own
``checkpoints/last``, writes its new values into its ``recipe.toml`` and continues with
``--resume`` (the engine applies the recipe's learning rates and weight decay over the saved
optimizer's). Ray keeps the checkpoints under ``DIR/ray/``; each trial folder's ``pbt.json``
lists the checkpoints it continued from (its own after a pause, another trial's after an
exploit) with the values it continued with.

One machine or a cluster, unchanged: ``ray.init()`` starts a local Ray, or joins the cluster that
``RAY_ADDRESS`` names (``ray start --head`` on a head node, ``RAY_ADDRESS=auto`` there or
``ray://head:10001`` from elsewhere). The recipe is resolved here (includes, ``--set``, data
folder as an absolute path) and sent to the workers as a table, with the ``MTBERT_*`` variables;
on a cluster the data folder and ``DIR`` must be on a filesystem every node sees. Each trial asks
Ray for ``train.threads`` CPUs (default 1) and, with ``train.device`` ``cuda``, one GPU.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from mtbert import hookimpl
from mtbert.errors import MtbertError

#: ``[sweep.space]`` keys PBT may change in the middle of a run (the engine re-applies them on resume).
MUTABLE = ("optim.lr", "optim.head_lr", "optim.weight_decay", "model.hidden_dropout", "model.attention_dropout")
#: Environment variables the workers need (mtbert's switches, the data folder, MLflow's).
FORWARDED_ENV_PREFIXES = ("MTBERT_", "MLFLOW_")


def tune_domain(spec: dict[str, Any]) -> Any:
    """The Ray Tune search domain of one ``[sweep.space]`` entry."""
    from ray import tune

    if "choices" in spec:
        return tune.choice(list(spec["choices"]))
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    if isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int)):
        if log:
            return tune.lograndint(low, high + 1)
        return tune.qrandint(low, high, step) if step else tune.randint(low, high + 1)
    if step:
        return tune.quniform(float(low), float(high), float(step))
    return tune.loguniform(float(low), float(high)) if log else tune.uniform(float(low), float(high))


def clamp(value: Any, spec: dict[str, Any]) -> Any:
    """A perturbed value kept inside its range (PBT multiplies by 0.8 or 1.2 without bounds)."""
    if "choices" in spec or not isinstance(value, (int, float)) or isinstance(value, bool):
        return value
    low, high = spec["low"], spec["high"]
    value = min(max(value, low), high)
    return int(round(value)) if isinstance(low, int) and isinstance(high, int) else float(value)


class TuneReport:
    """Plugin object: reports each evaluation to Tune with the state saved right after it."""

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None

    @hookimpl
    def mtbert_on_evaluate(self, run: Any, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.pending = {**metrics, "epoch": epoch, "step": step, "examples_seen": getattr(run, "examples_seen", 0)}

    @hookimpl
    def mtbert_on_state_saved(self, run: Any, folder: Path) -> None:
        if self.pending is None:
            return  # a mid-epoch save (train.checkpoint_every): nothing to report
        from ray import tune

        metrics, self.pending = self.pending, None
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))


def trial_folder(out: Path, name: str, trial_id: str) -> Path:
    return out / f"{name}-pbt-{trial_id}"


def train_trial(config: dict[str, Any], *, table: dict[str, Any], space: dict[str, Any], out: str, name: str) -> None:
    """The Tune trainable: one trial's mtbert run, started fresh or continued from a checkpoint."""
    from ray import tune

    from mtbert.engine.run import run_recipe
    from mtbert.files import atomic_write_text
    from mtbert.plugins import load_plugins
    from mtbert.recipe import apply_override, validate
    from mtbert.sweep.grid import toml_literal

    folder = trial_folder(Path(out), name, tune.get_context().get_trial_id())
    table = copy.deepcopy(table)
    for key, value in config.items():
        value = clamp(value, space[key])
        apply_override(table, _parts(key), value, f"{key}={toml_literal(value)}")
    plugins = load_plugins([("tune-report", TuneReport())])
    recipe = validate(table, plugins, source=f"{name} (pbt trial {folder.name})")
    checkpoint = tune.get_checkpoint()
    resume = False
    if checkpoint is not None:
        _note_restore(folder, checkpoint.path, config)
        with checkpoint.as_directory() as state:
            last = folder / "checkpoints" / "last"
            if last.exists():
                shutil.rmtree(last)
            shutil.copytree(state, last)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "recipe.toml", recipe.to_toml())  # what the trial trains from now on
        resume = True
    elif folder.exists() and any(folder.iterdir()):  # restarted before its first checkpoint
        shutil.rmtree(folder)
    run_recipe(recipe, plugins, out=folder, resume=resume, say=lambda message: None)


def _note_restore(folder: Path, checkpoint: str, config: dict[str, Any]) -> None:
    """Append to ``pbt.json`` which checkpoint the trial continued from (its own after a pause, or
    another trial's when it exploited) and with which values."""
    import json

    from mtbert.files import atomic_write_json

    path = folder / "pbt.json"
    try:
        events = json.loads(path.read_text(encoding="utf-8"))["restores"]
    except (OSError, ValueError, KeyError):
        events = []
    events.append({"checkpoint": str(checkpoint), "config": config})
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"restores": events})


def _parts(key: str) -> list[str]:
    from mtbert.recipe import parse_override

    parts, _ = parse_override(f"{key}=0")
    return parts


def _best_value(folder: Path, metric: str) -> float | None:
    """The trial's best checkpoint's dev ``metric`` (``metrics.json``), as Optuna trials are scored."""
    import json

    try:
        best = json.loads((folder / "metrics.json").read_text(encoding="utf-8")).get("best") or {}
    except (OSError, ValueError):
        return None
    value = (best.get("dev") or {}).get(metric)
    return float(value) if value is not None else None


def _resources(recipe: Any) -> dict[str, float]:
    gpu = 1.0 if str(recipe.train.device).startswith("cuda") else 0.0
    return {"cpu": float(recipe.train.threads or 1), "gpu": gpu}


def pbt_sweep(recipe_path: Path, overrides: list[str], base_recipe: Any, sweep_table: dict[str, Any],
              population: int, out: Path, plugins: Any, say: Callable[[str], None], *,
              perturb_every: int = 1) -> Any:
    """Run population-based training of ``population`` trials; returns the sweep's result."""
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import PopulationBasedTraining
    except ImportError:
        raise MtbertError("--pbt needs Ray Tune: pip install 'mtbert[ray]' (or pip install 'ray[tune]')") from None
    from mtbert.sweep.grid import toml_literal
    from mtbert.sweep.search import required_space, space_corners
    from mtbert.sweep.variants import SweepResult, Variant, finish, preflight, read_table

    space = required_space(sweep_table, recipe_path, "--pbt", "to start the population from")
    mutable = {key: spec for key, spec in space.items() if key in MUTABLE}
    if not mutable:
        raise MtbertError(f"--pbt: [sweep.space] has no key that can change during a run; give one of "
                          f"{', '.join(MUTABLE)}")
    if population < 2:
        raise MtbertError("--pbt: a population needs at least 2 trials")
    metric = sweep_table.get("metric") or base_recipe.train.select
    preflight(recipe_path, overrides, space_corners(space), plugins, flag="sweep.space:")

    table = read_table(recipe_path, overrides)
    table.pop("sweep", None)
    table.pop("include", None)
    table.setdefault("data", {})["dir"] = str(base_recipe.data_dir().resolve())
    table.setdefault("train", {})["progress"] = False
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    if not ray.is_initialized():
        ray.init(runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=False,
                 configure_logging=True, logging_level="error")
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=perturb_every,
        hyperparam_mutations={key: tune_domain(spec) for key, spec in mutable.items()},
        quantile_fraction=0.25 if population >= 4 else 0.5, synch=True,
    )
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, table=table, space=space, out=str(out), name=base_recipe.name),
        _resources(base_recipe))
    say(f"sweep: population-based training of {population} trials on Ray Tune into {out}, maximising dev {metric}, "
        f"perturbing {', '.join(mutable)} every {perturb_every} evaluation(s)")
    tuner = tune.Tuner(
        trainable,
        param_space={key: tune_domain(spec) for key, spec in space.items()},
        tune_config=tune.TuneConfig(metric=metric, mode="max", num_samples=population, scheduler=scheduler,
                                    reuse_actors=False),
        run_config=tune.RunConfig(name=base_recipe.name, storage_path=str(out / "ray"), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=4)),
    )
    results = tuner.fit()
    variants = []
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        folder = trial_folder(out, base_recipe.name, trial_id)
        label = " ".join(f"{k}={toml_literal(clamp(v, space[k]))}" for k, v in (result.config or {}).items())
        value = _best_value(folder, metric)
        failed = result.error is not None
        variants.append(Variant(label=label, overrides=[], folder=folder, status="failed" if failed else "finished",
                                message=str(result.error).splitlines()[0] if failed else "", value=value))
    info = {"recipe": str(recipe_path), "overrides": overrides,
            "pbt": {"population": population, "metric": metric, "space": space, "perturb_every": perturb_every,
                    "mutable": list(mutable), "ray": str(out / "ray" / base_recipe.name)}}
    result_table = finish(out, variants, info, say)
    scored = [v for v in variants if v.value is not None]
    best = max(scored, key=lambda v: v.value) if scored else None
    if best is not None:
        say(f"best trial: {best.folder.name}: dev {metric} {best.value:.4f} with {best.label}")
    return SweepResult(folder=out, variants=variants, table=result_table, best=best)
