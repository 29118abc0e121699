"""Search with Optuna: ``--optuna N`` samples trials over the ranges of the recipe's
``[sweep.space]``, stores the study beside the trials (``optuna.db``) so a rerun continues it, and
maximises the best checkpoint's dev ``metric``.

Several processes or machines share one study with ``--storage URL`` (any Optuna RDB URL;
default the SQLite file above): each asks the study for its next trial (ask and tell), so no
trial runs twice, and all stop when ``N`` trials have finished or are running between them.
Each process seeds its TPE sampler from the recipe's ``seed`` and its process id.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

from mtbert.engine.seeding import derive_seed
from mtbert.errors import MtbertError, RecipeError, RunInterrupted
from mtbert.sweep.grid import toml_literal
from mtbert.sweep.variants import SweepResult, Variant, finish, load_variant, preflight, run_variant


def suggest(trial: Any, key: str, spec: dict[str, Any]) -> Any:
    """One value for ``key`` from an Optuna trial, by the ``[sweep.space]`` entry's kind."""
    if "choices" in spec:
        return trial.suggest_categorical(key, list(spec["choices"]))
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    if isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int)):
        return trial.suggest_int(key, low, high, step=step or 1, log=log)
    return trial.suggest_float(key, float(low), float(high), step=step, log=log)


def space_corners(space: dict[str, Any]) -> list[Variant]:
    """Overrides that put every range at its ends and every choice once, for the pre-flight check."""
    variants = []
    for key, spec in space.items():
        values = spec["choices"] if "choices" in spec else [spec["low"], spec["high"]]
        for value in values:
            variants.append(Variant(label=f"{key}={value}", overrides=[f"{key}={toml_literal(value)}"], folder=Path()))
    return variants


def open_study(optuna: Any, storage: str, name: str, seed: int) -> Any:
    """The study ``name`` in ``storage`` (created by whichever process comes first).

    Each process seeds its TPE sampler from the recipe's seed and its process id: processes
    sharing a study must not draw the same values.
    """
    kwargs = {"connect_args": {"timeout": 120}} if storage.startswith("sqlite:") else {}
    sampler = optuna.samplers.TPESampler(seed=derive_seed(seed, "optuna", os.getpid()) % 2**32)
    for attempt in range(6):
        try:
            rdb = optuna.storages.RDBStorage(storage, engine_kwargs=kwargs)
            return optuna.create_study(study_name=name, storage=rdb, load_if_exists=True, direction="maximize",
                                       sampler=sampler)
        except Exception as exc:  # noqa: BLE001 - two processes creating the tables at once: the loser retries
            if attempt == 5 or type(exc).__name__ not in ("IntegrityError", "OperationalError"):
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def required_space(sweep_table: dict[str, Any], recipe_path: Path, flag: str, purpose: str) -> dict[str, Any]:
    """The recipe's ``[sweep.space]`` ranges, or a one-line error naming ``flag`` and the file."""
    space = sweep_table.get("space") or {}
    if not space:
        raise MtbertError(f"{flag}: {recipe_path} has no [sweep.space] table of ranges {purpose} "
                          '(e.g. [sweep.space] "optim.lr" = { low = 1e-5, high = 1e-4, log = true })')
    return space


def _counted(study: Any, optuna: Any, below: int | None = None) -> int:
    """Trials that finished or are running (in any process), optionally only those numbered below ``below``."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    return sum(t.state in states and (below is None or t.number < below)
               for t in study.get_trials(deepcopy=False, states=states))


def optuna_sweep(recipe_path: Path, overrides: list[str], base_recipe: Any, sweep_table: dict[str, Any],
                  trials: int, out: Path, plugins: Any, say: Callable[[str], None],
                  warn: Callable[[str], None] | None, storage: str | None = None) -> SweepResult:
    try:
        import optuna
    except ImportError:
        raise MtbertError("--optuna needs Optuna: pip install 'mtbert[optuna]' (or pip install optuna)") from None
    space = required_space(sweep_table, recipe_path, "--optuna", "to search")
    metric = sweep_table.get("metric") or base_recipe.train.select
    preflight(recipe_path, overrides, space_corners(space), plugins, flag="sweep.space:")

    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage or f"sqlite:///{(out / 'optuna.db').resolve()}"
    try:
        study = open_study(optuna, storage, base_recipe.name, base_recipe.seed)
    except Exception as exc:  # noqa: BLE001 - a bad URL or an unreachable database: one line
        raise MtbertError(f"--storage {storage}: cannot open the Optuna study ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    variants: list[Variant] = []
    say(f"sweep: Optuna search of {len(space)} values over {trials} trials ({done} done earlier) into {out}, "
        f"maximising best dev {metric}")

    def objective(trial: Any) -> float:
        values = {key: suggest(trial, key, spec) for key, spec in space.items()}
        extra = [f"{key}={toml_literal(value)}" for key, value in values.items()]
        variant = Variant(label=" ".join(f"{k}={toml_literal(v)}" for k, v in values.items()), overrides=extra,
                          folder=out / f"{base_recipe.name}-trial-{trial.number}")
        variants.append(variant)
        trial.set_user_attr("folder", str(variant.folder))
        say(f"[trial {trial.number}] {variant.label} -> {variant.folder}")
        try:
            recipe = load_variant(recipe_path, overrides, extra, plugins, "sweep.space:")
        except RecipeError as exc:
            variant.status, variant.message = "failed", "; ".join(exc.problems)
            raise
        run_variant(variant, recipe, plugins, say, warn)
        if variant.status == "failed":
            say(f"  failed: {variant.message}")
            raise MtbertError(variant.message)
        summary = json.loads((variant.folder / "metrics.json").read_text(encoding="utf-8"))
        best = (summary.get("best") or {}).get("dev") or {}
        if metric not in best:
            variant.status, variant.message = "failed", f"no dev {metric} in {variant.folder / 'metrics.json'}"
            raise MtbertError(variant.message)
        variant.value = float(best[metric])
        say(f"  best dev {metric} {variant.value:.4f}")
        return variant.value

    # Ask and tell, so that processes sharing the study stop at `trials` between them: a trial
    # runs only while fewer than `trials` trials numbered before it finished or are running.
    while _counted(study, optuna) < trials:
        trial = study.ask()
        if _counted(study, optuna, below=trial.number) >= trials:  # another process took the last one
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            break
        try:
            value = objective(trial)
        except (KeyboardInterrupt, RunInterrupted):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        except Exception:  # noqa: BLE001 - a failed trial is recorded; the search goes on
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, value)
    # every trial of the study, this invocation's and earlier ones', in trial order
    now = {v.folder: v for v in variants}
    variants = []
    for t in study.trials:
        if t.user_attrs.get("surplus"):
            continue
        folder = Path(t.user_attrs.get("folder", out / f"{base_recipe.name}-trial-{t.number}"))
        if folder in now:
            variants.append(now[folder])
            continue
        status = {"COMPLETE": "skipped", "RUNNING": "running"}.get(t.state.name, "failed")
        variants.append(Variant(label=" ".join(f"{k}={toml_literal(v)}" for k, v in t.params.items()),
                                overrides=[], folder=folder, status=status,
                                message={"skipped": "finished earlier", "running": "running in another process"}.get(
                                    status, f"trial {t.state.name.lower()}"),
                                value=t.value))
    info = {"recipe": str(recipe_path), "overrides": overrides, "optuna": {"trials": trials, "metric": metric,
                                                                           "storage": storage, "space": space}}
    table = finish(out, variants, info, say)
    best = None
    completed = [v for v in variants if v.value is not None and v.status in ("finished", "skipped")]
    if completed:
        best = max(completed, key=lambda v: v.value)
        say(f"best trial: {best.folder.name}: dev {metric} {best.value:.4f} with {best.label}")
    return SweepResult(folder=out, variants=variants, table=table, best=best)
