"""``mtbert sweep``: run a recipe's variants one after another, then compare them.

Grid search::

    mtbert sweep recipes/ablations/base.toml --grid optim.lr=2e-5,5e-5 --grid sampler.name=round-robin,upsample \\
        --out runs/lr-sampler [--set data.dir=../shared/data]

runs the 4 variants (the product of the grids, in the order given) into
``DIR/<name>-<key=value>-<key=value>/``, each a normal run folder (``mtbert eval``,
``mtbert compare`` and ``tensorboard --logdir DIR`` work on them), then prints the compare
table of all variants and writes it to ``DIR/compare.md``, with ``DIR/sweep.json`` recording
each variant's overrides, folder and status. ``DIR`` defaults to ``runs/sweep-<name>``.

* Grid values are read like ``--set`` values: TOML literals (``1e-5``, ``true``, ``[128, 64]``,
  ``"text"``), bare words as strings; commas inside brackets, braces or quotes do not split.
  A recipe may also declare its grid: ``[sweep.grid] "optim.lr" = [2e-5, 5e-5]`` (``--grid``
  replaces a key given there).
* Every variant's recipe is validated before the first run starts: a bad value fails the whole
  sweep with the usual one-line errors (``--grid optim.lr: ...``).
* A variant that fails is reported (one line) and the sweep goes on; the command exits with
  status 2 at the end, after the table.
* Rerunning the same sweep into the same ``DIR`` skips the variants whose folder holds a
  finished run of the same recipe, resumes an interrupted one from its saved state
  (``checkpoints/last``), and moves a failed one without saved state aside
  (``<folder>.failed-N``) before running it again.

Search with Optuna (``pip install 'mtbert[optuna]'``)::

    mtbert sweep recipe.toml --optuna 20 --out runs/search

samples ``N`` trials over the ranges the recipe declares in a ``[sweep]`` table, which
``mtbert run`` and ``mtbert validate`` check but otherwise ignore::

    [sweep]
    metric = "mean"            # what the search maximises (default: train.select)
    [sweep.space]
    "optim.lr" = { low = 1e-5, high = 1e-4, log = true }     # float, log scale
    "model.hidden_dropout" = { low = 0.0, high = 0.5 }       # float
    "optim.batch_size" = { low = 8, high = 32, step = 8 }    # integers (low and high are)
    "sampler.name" = { choices = ["round-robin", "upsample"] }

Each trial is a run folder ``DIR/<name>-trial-<k>/``; the objective is the best checkpoint's
dev ``metric`` (``metrics.json``'s ``best.dev``). The study (TPE, seeded with the recipe's
``seed``) is stored in ``DIR/optuna.db`` (SQLite), so rerunning the same command continues it
up to ``N`` finished trials in all. It ends with the compare table of every trial and the best
trial's values.

Ray Tune (not a dependency; how it plugs in — seed 003 tuned lr, weight decay, dropout and batch
size with population-based training through Ray Tune). A Tune trainable is a function of a
``config`` dict whose keys are recipe key paths; it trains one recipe through the same engine
call ``mtbert run`` makes, and an event-hook plugin reports every evaluation to Tune::

    from pathlib import Path
    from ray import tune                      # Ray >= 2.41: tune.report; older 2.x: ray.train.report
    from mtbert import hookimpl
    from mtbert.engine.run import run_recipe
    from mtbert.plugins import load_plugins
    from mtbert.recipe import load_recipe
    from mtbert.sweep import toml_literal

    class TuneReport:                         # a plugin object: only an event hook
        @hookimpl
        def mtbert_on_evaluate(self, run, stage, epoch, step, metrics):
            tune.report({**metrics, "epoch": epoch, "step": step})   # Tune may stop the trial here

    def trainable(config):
        plugins = load_plugins([("tune-report", TuneReport())])      # builtins + the reporter
        overrides = [f"{key}={toml_literal(value)}" for key, value in config.items()]
        recipe = load_recipe("/abs/path/recipe.toml", overrides + ["train.progress=false"], plugins)
        run_recipe(recipe, plugins, out=Path(tune.get_context().get_trial_dir()) / "run")

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 2, "gpu": 1}),
        param_space={"optim.lr": tune.loguniform(1e-5, 1e-4), "model.hidden_dropout": tune.uniform(0.0, 0.5),
                     "optim.batch_size": tune.choice([8, 16, 32])},
        tune_config=tune.TuneConfig(metric="mean", mode="max", num_samples=16,
                                    scheduler=tune.schedulers.ASHAScheduler(grace_period=1)),
    )
    tuner.fit()

Search algorithms and early-stopping schedulers (random, Optuna/HyperOpt through Tune, ASHA,
HyperBand) work with this as it is: each trial is a normal run folder inside Tune's trial
folder, so ``mtbert compare`` reads them afterwards. ``mtbert sweep`` itself is the Optuna
path above; a ``--ray`` option would build this trainable from the same ``[sweep.space]``
table (``low/high/log`` -> ``tune.loguniform``/``tune.uniform``/``tune.randint``,
``choices`` -> ``tune.choice``). Population-based training additionally *exploits*: it
copies a better trial's state into a worse one and perturbs its hyperparameters mid-run. In
mtbert that is "continue a run from another run's ``checkpoints/last`` with changed
``optim.lr``/``optim.weight_decay``/dropout", which needs two engine changes, not done here:
(1) an event after the epoch's state is saved (``mtbert_on_evaluate`` is called before
``checkpoints/last`` is written), so the reporter can hand Tune that folder as the trial's
checkpoint (``tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(...))``);
(2) a resume that accepts changed ``optim``/dropout values (``--resume`` refuses a changed
recipe today) and applies them to the restored optimizer's parameter groups.
"""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Callable

import attrs

from mtbert.errors import MtbertError, RecipeError

SWEEP_KEYS = ("space", "grid", "metric")
#: Recipe keys that do not change what a run computes (not compared when skipping a variant).
NEUTRAL_KEYS = {"train.progress", "train.keep_last", "train.device", "train.threads", "data.dir", "data.cache"}


# --------------------------------------------------------------------------- the [sweep] table
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_sweep_table(raw: Any, metric_keys: set[str] | None) -> list[tuple[str, str]]:
    """Problems with a recipe's ``[sweep]`` table as ``(key path, message)``; empty when fine.

    ``metric_keys``: the recipe's task metric keys (``sst_acc`` ...), to check ``metric``; None
    when the tasks could not be read (then ``metric`` is only checked to be a string).
    """
    from mtbert.schema import did_you_mean

    problems: list[tuple[str, str]] = []
    if raw is None:
        return problems
    if not isinstance(raw, dict):
        return [("sweep", f"{raw!r} is not a table (allowed keys: {', '.join(SWEEP_KEYS)})")]
    for key in raw:
        if key not in SWEEP_KEYS:
            problems.append((f"sweep.{key}", f"unknown key{did_you_mean(str(key), SWEEP_KEYS)} (allowed: {', '.join(SWEEP_KEYS)})"))
    metric = raw.get("metric")
    if metric is not None:
        if not isinstance(metric, str):
            problems.append(("sweep.metric", f"{metric!r} is not a metric name"))
        elif metric_keys is not None and metric != "mean" and metric not in metric_keys:
            problems.append(("sweep.metric", f"{metric!r} is not a dev metric of this recipe; choose mean or one of "
                                             f"{', '.join(sorted(metric_keys))}{did_you_mean(metric, metric_keys)}"))
    grid = raw.get("grid")
    if grid is not None:
        if not isinstance(grid, dict):
            problems.append(("sweep.grid", f"{grid!r} is not a table of key path = [values]"))
        else:
            for key, values in grid.items():
                if not isinstance(values, list) or not values:
                    problems.append((f"sweep.grid.{key}", f"{values!r} is not a non-empty list of values"))
    space = raw.get("space")
    if space is not None:
        if not isinstance(space, dict):
            problems.append(("sweep.space", f"{space!r} is not a table of key path = {{ low, high }} or {{ choices }}"))
            space = {}
        for key, spec in space.items():
            problems += [(f"sweep.space.{key}", m) for m in _check_range(spec)]
    return problems


def _check_range(spec: Any) -> list[str]:
    if not isinstance(spec, dict):
        return [f"{spec!r} is not a table {{ low = .., high = .. [, log = true | step = ..] }} or {{ choices = [..] }}"]
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        if extra:
            return [f"a choices range takes no other keys (found {', '.join(extra)})"]
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            return [f"choices = {choices!r} is not a non-empty list"]
        bad = [c for c in choices if not isinstance(c, (str, int, float, bool))]
        if bad:
            return [f"choices must be strings, numbers or booleans, found {bad[0]!r}"]
        return []
    extra = sorted(set(spec) - {"low", "high", "log", "step"})
    if extra:
        return [f"unknown key {extra[0]!r} (a range takes low, high, log, step; or choices alone)"]
    low, high = spec.get("low"), spec.get("high")
    if low is None or high is None:
        return ["a range needs low and high (or choices = [...])"]
    if not _number(low) or not _number(high):
        return [f"low and high must be numbers, got {low!r} and {high!r}"]
    if not low < high:
        return [f"low ({low!r}) must be below high ({high!r})"]
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        return [f"log = {log!r} is not true or false"]
    if log and low <= 0:
        return [f"a log range needs low > 0, got {low!r}"]
    if step is not None:
        if not _number(step) or step <= 0:
            return [f"step = {step!r} is not a positive number"]
        if log:
            return ["log and step cannot be combined"]
    return []


# --------------------------------------------------------------------------- grids and variants
def toml_literal(value: Any) -> str:
    """``value`` written as the right-hand side of a TOML assignment (what ``--set`` reads back)."""
    import tomli_w

    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def split_values(text: str) -> list[str]:
    """``"1e-5,[1, 2],'a,b'"`` -> ``["1e-5", "[1, 2]", "'a,b'"]``: commas split only at the top level."""
    parts: list[str] = []
    depth, quote, current = 0, "", []
    for char in text:
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def parse_grid(texts: list[str]) -> list[tuple[str, list[str]]]:
    """``["optim.lr=1e-5,3e-5"]`` -> ``[("optim.lr", ["1e-5", "3e-5"])]`` (values as written)."""
    from mtbert.recipe import key_label, parse_override, split_key

    grid: list[tuple[str, list[str]]] = []
    for text in texts:
        if "=" not in text:
            raise RecipeError(f"--grid {text!r}: expected KEY.PATH=VALUE1,VALUE2,...")
        key, raw = text.split("=", 1)
        parts = split_key(key.strip())
        values = split_values(raw)
        if parts is None:
            raise RecipeError(f"--grid {text!r}: empty key in the key path")
        key = key_label(parts)
        if any(v == "" for v in values):
            raise RecipeError(f"--grid {text!r}: empty value (values are separated by commas)")
        if any(k == key for k, _ in grid):
            raise RecipeError(f"--grid {key}: given twice; list all its values in one --grid")
        for value in values:
            parse_override(f"{key}={value}")  # read like --set: TOML literal or bare word
        grid.append((key, values))
    return grid


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+\-]+", "_", text).strip("_") or "_"


@attrs.define
class Variant:
    """One run of a sweep: its overrides, folder and what happened to it."""

    label: str
    overrides: list[str]
    folder: Path
    status: str = "pending"  # finished | skipped (finished earlier) | failed
    message: str = ""
    value: float | None = None  # the objective (Optuna trials)
    compared: bool = True  # False when its folder holds another recipe's run

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "overrides": self.overrides, "folder": str(self.folder), "status": self.status,
                "message": self.message, "value": self.value}


def grid_variants(name: str, grid: list[tuple[str, list[str]]], out: Path) -> list[Variant]:
    """The product of the grid's values, first key slowest, each with its folder under ``out``."""
    variants = []
    seen: dict[str, int] = {}
    for combo in itertools.product(*(values for _, values in grid)):
        pairs = [(key, value) for (key, _), value in zip(grid, combo)]
        folder_name = "-".join([name, *(f"{key}={_slug(value)}" for key, value in pairs)])
        seen[folder_name] = seen.get(folder_name, 0) + 1
        if seen[folder_name] > 1:  # two values that read the same once made safe for a file name
            folder_name += f"-{seen[folder_name]}"
        variants.append(Variant(label=" ".join(f"{k}={v}" for k, v in pairs),
                                overrides=[f"{k}={v}" for k, v in pairs], folder=out / folder_name))
    return variants


# --------------------------------------------------------------------------- recipes
def read_table(recipe_path: Path, overrides: list[str]) -> dict[str, Any]:
    """The recipe table with includes and ``--set`` overrides applied (before validation)."""
    from mtbert.recipe import apply_override, parse_override, read_with_includes

    table, _ = read_with_includes(Path(recipe_path))
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(table, parts, value, text)
    return table


def _load(recipe_path: Path, base: list[str], extra: list[str], plugins: Any, flag: str = "--grid") -> Any:
    """Validate the recipe with ``base`` (--set) then ``extra`` overrides; ``extra``'s errors say ``flag``."""
    from mtbert.recipe import key_label, load_recipe, parse_override

    try:
        return load_recipe(recipe_path, [*base, *extra], plugins)
    except RecipeError as exc:
        keys = [key_label(parse_override(text)[0]) for text in extra]
        lines = []
        for line in exc.problems:
            if line.startswith("--set "):
                rest = line[len("--set "):].lstrip("'\"")
                if any(rest == k or rest.startswith((f"{k}:", f"{k}.", f"{k}=", f"{k}[")) for k in keys):
                    line = f"{flag} " + line[len("--set "):]
            lines.append(line)
        raise RecipeError(lines) from None


def preflight(recipe_path: Path, base: list[str], variants: list[Variant], plugins: Any, flag: str = "--grid") -> list[Any]:
    """Validate every variant's recipe; raise one RecipeError with every distinct problem."""
    recipes, problems = [], []
    for variant in variants:
        try:
            recipes.append(_load(recipe_path, base, variant.overrides, plugins, flag))
        except RecipeError as exc:
            problems += [p for p in exc.problems if p not in problems]
    if problems:
        raise RecipeError(problems)
    return recipes


def _flat(table: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(table, dict):
        out: dict[str, Any] = {}
        for key, value in table.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: table}


def same_recipe(folder: Path, recipe: Any) -> bool:
    """Whether ``folder/recipe.toml`` is ``recipe`` (keys that do not change results aside)."""
    try:
        old = _flat(tomllib.loads((folder / "recipe.toml").read_text(encoding="utf-8")))
    except (OSError, tomllib.TOMLDecodeError):
        return False
    new = _flat(recipe.to_dict())
    keys = (set(old) | set(new)) - NEUTRAL_KEYS
    return all(old.get(k) == new.get(k) for k in keys)


def _status(folder: Path) -> str | None:
    try:
        return json.loads((folder / "run.json").read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError):
        return None


def _resumable(folder: Path) -> bool:
    return (folder / "checkpoints" / "last" / "state.json").is_file() or (folder / "checkpoints" / "last.old").is_dir()


def _one_line(exc: BaseException) -> str:
    text = "; ".join(exc.problems) if isinstance(exc, RecipeError) else str(exc)
    text = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, MtbertError) else text


def run_variant(variant: Variant, recipe: Any, plugins: Any, say: Callable[[str], None],
                warn: Callable[[str], None] | None) -> None:
    """Run (or skip, or resume) one variant; failures are recorded on it, not raised."""
    from mtbert.engine.run import run_recipe
    from mtbert.engine.trainer import RunInterrupted

    folder = variant.folder
    resume = False
    if folder.exists() and any(folder.iterdir()):
        status = _status(folder)
        if status == "finished":
            if same_recipe(folder, recipe):
                variant.status = "skipped"
                variant.message = "finished earlier"
                return
            variant.status = "failed"
            variant.compared = False
            variant.message = (f"{folder} holds a finished run of a different recipe; "
                               "remove it or sweep into another --out")
            return
        if _resumable(folder) and same_recipe(folder, recipe):
            resume = True
        else:
            n = 1
            while folder.with_name(f"{folder.name}.failed-{n}").exists():
                n += 1
            aside = folder.with_name(f"{folder.name}.failed-{n}")
            folder.rename(aside)
            say(f"  moved the earlier unfinished attempt aside: {aside}")
    try:
        _, summary = run_recipe(recipe, plugins, out=folder, resume=resume, say=say, warn=warn)
    except RunInterrupted:
        raise  # Ctrl-C stops the sweep; rerunning it resumes this variant
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one failed variant must not end the sweep
        variant.status = "failed"
        variant.message = _one_line(exc)
        return
    variant.status = "finished"
    variant.message = "resumed" if resume else ""


# --------------------------------------------------------------------------- the sweep
@attrs.define
class SweepResult:
    folder: Path
    variants: list[Variant]
    table: Any  # mtbert.compare.Table
    best: Variant | None = None

    @property
    def failed(self) -> list[Variant]:
        return [v for v in self.variants if v.status == "failed"]


def _finish(out: Path, variants: list[Variant], info: dict[str, Any], say: Callable[[str], None]) -> Any:
    from mtbert.compare import compare
    from mtbert.engine.checkpoint import atomic_write_json, atomic_write_text

    table, _ = compare([v.folder for v in variants if v.compared])
    for v in variants:
        if v.status == "failed":
            table.skipped.append(f"{v.folder}: failed: {v.message}")
    # a failed variant's folder may also be listed as "no evaluation yet": keep one line per folder
    seen, skipped = set(), []
    for line in reversed(table.skipped):
        folder = line.split(": ", 1)[0]
        if folder not in seen:
            seen.add(folder)
            skipped.append(line)
    table.skipped = list(reversed(skipped))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.md", table.markdown())
    atomic_write_json(out / "sweep.json", {**info, "variants": [v.as_dict() for v in variants]})
    counts = {s: sum(v.status == s for v in variants) for s in ("finished", "skipped", "failed")}
    say(f"sweep: {counts['finished']} finished, {counts['skipped']} skipped (finished earlier), "
        f"{counts['failed']} failed; table written to {out / 'compare.md'}")
    return table


def parse_seeds(text: str, recipe_seed: int) -> list[int]:
    """``--seeds``: ``"3"`` -> the recipe's seed then 1, 2, ... (3 in all); ``"11711,1,2"`` -> those seeds.

    A count keeps the recipe's own seed first, so its existing run is one of the replicates.
    """
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise RecipeError(f"--seeds {text!r}: expected a count (3) or a comma-separated list of seeds (11711,1,2)") from None
    if len(values) == 1:
        count = values[0]
        if count < 1:
            raise RecipeError(f"--seeds {text!r}: the count must be at least 1")
        seeds, candidate = [recipe_seed], 1
        while len(seeds) < count:
            if candidate != recipe_seed:
                seeds.append(candidate)
            candidate += 1
        return seeds
    if any(v < 0 for v in values):
        raise RecipeError(f"--seeds {text!r}: seeds are integers >= 0")
    if len(set(values)) != len(values):
        raise RecipeError(f"--seeds {text!r}: a seed is listed twice")
    return values


def run_sweep(
    recipe_path: Path, grid_texts: list[str], overrides: list[str], *, out: Path | None = None,
    trials: int | None = None, plugins: Any = None, say: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None, seeds: str | None = None,
) -> SweepResult:
    """Run a grid sweep (``grid_texts`` and the recipe's ``[sweep.grid]``, times ``seeds``) or an Optuna search."""
    from mtbert.plugins import get_plugins

    plugins = plugins or get_plugins()
    recipe_path = Path(recipe_path)
    base_recipe = _load(recipe_path, overrides, [], plugins, "--set")  # the recipe itself, with --set
    sweep_table = read_table(recipe_path, overrides).get("sweep") or {}
    out = out or Path("runs") / f"sweep-{base_recipe.name}"

    if trials is not None:
        if seeds is not None:
            raise MtbertError("--optuna and --seeds: give one of them (repeat the best trial with --seeds afterwards)")
        if grid_texts:
            raise MtbertError("--optuna and --grid: give one of them (a search samples the keys a grid would fix)")
        return _optuna_sweep(recipe_path, overrides, base_recipe, sweep_table, trials, out, plugins, say, warn)

    grid = parse_grid(grid_texts)
    given = {key for key, _ in grid}
    recipe_grid = [(key, [toml_literal(v) for v in values]) for key, values in (sweep_table.get("grid") or {}).items()
                   if key not in given]
    grid = recipe_grid + grid
    if seeds is not None:
        if any(key == "seed" for key, _ in grid):
            raise RecipeError("--seeds and a grid over seed: give the seeds once (--seeds 11711,1,2)")
        grid.append(("seed", [str(s) for s in parse_seeds(seeds, base_recipe.seed)]))
    if not grid:
        raise MtbertError("nothing to sweep: give --grid KEY.PATH=V1,V2, --seeds N, a [sweep.grid] table in the recipe, "
                          "or --optuna N with a [sweep.space] table")
    variants = grid_variants(base_recipe.name, grid, out)
    recipes = preflight(recipe_path, overrides, variants, plugins)
    say(f"sweep: {len(variants)} variants of {recipe_path} into {out}")
    for i, (variant, recipe) in enumerate(zip(variants, recipes), 1):
        say(f"[sweep {i}/{len(variants)}] {variant.label} -> {variant.folder}")
        run_variant(variant, recipe, plugins, say, warn)
        if variant.status == "skipped":
            say(f"  skipped: {variant.folder} holds this variant's finished run")
        elif variant.status == "failed":
            say(f"  failed: {variant.message}")
    info = {"recipe": str(recipe_path), "overrides": overrides, "grid": {k: v for k, v in grid}}
    table = _finish(out, variants, info, say)
    return SweepResult(folder=out, variants=variants, table=table)


# --------------------------------------------------------------------------- Optuna
def suggest(trial: Any, key: str, spec: dict[str, Any]) -> Any:
    """One value for ``key`` from an Optuna trial, by the ``[sweep.space]`` entry's kind."""
    if "choices" in spec:
        return trial.suggest_categorical(key, list(spec["choices"]))
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    if isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int)):
        return trial.suggest_int(key, low, high, step=step or 1, log=log)
    return trial.suggest_float(key, float(low), float(high), step=step, log=log)


def _space_corners(space: dict[str, Any]) -> list[Variant]:
    """Overrides that put every range at its ends and every choice once, for the pre-flight check."""
    variants = []
    for key, spec in space.items():
        values = spec["choices"] if "choices" in spec else [spec["low"], spec["high"]]
        for value in values:
            variants.append(Variant(label=f"{key}={value}", overrides=[f"{key}={toml_literal(value)}"], folder=Path()))
    return variants


def _optuna_sweep(recipe_path: Path, overrides: list[str], base_recipe: Any, sweep_table: dict[str, Any],
                  trials: int, out: Path, plugins: Any, say: Callable[[str], None],
                  warn: Callable[[str], None] | None) -> SweepResult:
    try:
        import optuna
    except ImportError:
        raise MtbertError("--optuna needs Optuna: pip install 'mtbert[optuna]' (or pip install optuna)") from None
    space = sweep_table.get("space") or {}
    if not space:
        raise MtbertError(f"--optuna: {recipe_path} has no [sweep.space] table of ranges to search "
                          '(e.g. [sweep.space] "optim.lr" = { low = 1e-5, high = 1e-4, log = true })')
    metric = sweep_table.get("metric") or base_recipe.train.select
    preflight(recipe_path, overrides, _space_corners(space), plugins, flag="sweep.space:")

    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=base_recipe.name, storage=f"sqlite:///{(out / 'optuna.db').resolve()}", load_if_exists=True,
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=base_recipe.seed),
    )
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    remaining = max(0, trials - done)
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
            recipe = _load(recipe_path, overrides, extra, plugins, "sweep.space:")
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

    if remaining:
        study.optimize(objective, n_trials=remaining, catch=(Exception,))
    # every trial of the study, this invocation's and earlier ones', in trial order
    now = {v.folder: v for v in variants}
    variants = []
    for t in study.trials:
        folder = Path(t.user_attrs.get("folder", out / f"{base_recipe.name}-trial-{t.number}"))
        if folder in now:
            variants.append(now[folder])
            continue
        status = {"COMPLETE": "skipped"}.get(t.state.name, "failed")
        variants.append(Variant(label=" ".join(f"{k}={toml_literal(v)}" for k, v in t.params.items()),
                                overrides=[], folder=folder, status=status,
                                message="finished earlier" if status == "skipped" else f"trial {t.state.name.lower()}",
                                value=t.value))
    info = {"recipe": str(recipe_path), "overrides": overrides, "optuna": {"trials": trials, "metric": metric,
                                                                           "space": space}}
    table = _finish(out, variants, info, say)
    best = None
    completed = [v for v in variants if v.value is not None and v.status in ("finished", "skipped")]
    if completed:
        best = max(completed, key=lambda v: v.value)
        say(f"best trial: {best.folder.name}: dev {metric} {best.value:.4f} with {best.label}")
    return SweepResult(folder=out, variants=variants, table=table, best=best)
