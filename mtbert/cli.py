"""The ``mtbert`` command: run, validate, plugins, eval, predict, compare, sweep.

User mistakes end in one ``error:`` line per problem and exit status 2, never a traceback;
an interrupted run exits with 130 after saving its state.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from mtbert.cli_base import cli, cli_plugins, guard, recipe_argument, report_run, set_option, warn
from mtbert.errors import MtbertError, RecipeError
from mtbert.version import __version__


@cli.command()
@recipe_argument
@set_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder (default runs/<name>-<time>).")
@click.option("--name", help="Run name (default: the recipe's name).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last saved state (--out names it; see also mtbert resume).")
@click.option("--allow-data-change", is_flag=True,
              help="With --resume: continue although a data file changed since the run started (recorded in run.json).")
@guard
def run(recipe: str, overrides: tuple[str, ...], out: Path | None, name: str | None, resume: bool,
        allow_data_change: bool) -> None:
    """Train RECIPE (a file, or a shipped recipe's name: mtbert recipes lists them) and write a run folder.

    The last line printed is the run folder.
    """
    from mtbert.engine.run import run_recipe
    from mtbert.recipe import load_recipe
    from mtbert.shipped import resolve_recipe

    overrides = list(overrides) + ([f"name={json.dumps(name)}"] if name else [])
    plugins = cli_plugins()
    resolved = load_recipe(resolve_recipe(recipe), overrides, plugins)
    if allow_data_change and not resume:
        raise MtbertError("--allow-data-change only applies with --resume")
    folder, summary = run_recipe(resolved, plugins, out=out, resume=resume, say=click.echo, warn=warn,
                                 allow_data_change=allow_data_change)
    report_run(folder, summary)


@cli.command()
@recipe_argument
@set_option
@click.option("--show", is_flag=True, help="Print the resolved recipe (includes, overrides and defaults applied; unset keys as comments).")
@guard
def validate(recipe: str, overrides: tuple[str, ...], show: bool) -> None:
    """Check RECIPE (and its includes and overrides) and that its data files exist, without running it."""
    from mtbert.recipe import load_recipe
    from mtbert.shipped import resolve_recipe

    from mtbert.engine.batches import missing_data_files
    from mtbert.engine.device import choose_device

    resolved = load_recipe(resolve_recipe(recipe), list(overrides), cli_plugins())
    missing = missing_data_files(resolved)
    try:
        choose_device(resolved.train.device)  # "cuda" on a machine without CUDA fails here, not in run
    except RecipeError as exc:
        missing = missing + exc.problems
    if missing:
        raise RecipeError(missing)
    if show:
        from mtbert.show import show_recipe

        click.echo(show_recipe(resolved))
    tasks = ", ".join(f"{n} ({t.input.name}, {t.head.name})" for n, t in resolved.tasks.items())
    ensemble = f"; an ensemble of {resolved.train.ensemble} runs" if resolved.train.ensemble > 1 else ""
    click.echo(f"{recipe}: ok — tasks {tasks}; sampler {resolved.sampler.name}; combiner {resolved.loss_combiner.name}{ensemble}")


#: What ``mtbert plugins`` shows as a component's step mode, per kind: the attribute it reads.
STEP_MODE_KINDS = ("loss_combiner", "gradient_transform", "regularizer")


def _step_mode(kind: str, factory: Any) -> str | None:
    """The sampler step mode a component requires (combiners, transforms, regularizers) or gives (samplers)."""
    if kind == "sampler":
        from typing import get_args

        from mtbert.schema import fields_of

        field = fields_of(factory).get("step") if hasattr(factory, "__attrs_attrs__") else None
        if field is None:
            return "gives one-task"
        modes = [m for m in get_args(field.type) if isinstance(m, str)] or [field.default]
        return f"gives {' or '.join(modes)} (option step, default {field.default})"
    if kind in STEP_MODE_KINDS:
        return f"requires {getattr(factory, 'requires_step_mode', None) or 'any'}"
    return None


def normalize_kind(text: str) -> str:
    """``loss-combiners`` / ``loss_combiner`` -> ``loss_combiner``; unknown kinds raise one error line."""
    from mtbert.plugins import KINDS
    from mtbert.schema import did_you_mean

    kind = text.strip().lower().replace("-", "_").replace(" ", "_")
    if kind not in KINDS and kind.endswith("s") and kind[:-1] in KINDS:
        kind = kind[:-1]
    if kind not in KINDS:
        raise MtbertError(f"--kind: unknown kind '{text}'{did_you_mean(kind, KINDS)}; kinds: {', '.join(KINDS)}")
    return kind


def plugin_report(kind: str | None = None) -> dict[str, Any]:
    """What ``mtbert plugins --json`` prints: plugins, and components by kind with options.

    Third-party components come before mtbert's builtin ones in each kind.
    """
    from mtbert.plugins import BUILTIN_DISTRIBUTION, KINDS
    from mtbert.schema import describe, first_line

    plugins = cli_plugins()
    kinds: dict[str, list[dict[str, Any]]] = {}
    for kind_ in KINDS if kind is None else [kind]:
        entries = []
        for name in plugins.registry.names(kind_):
            component = plugins.registry.find(kind_, name)
            factory = component.factory
            doc = getattr(factory, "description", None) if kind_ in ("task", "checkpoint") else first_line(factory.__doc__)
            entry = {
                "name": name, "plugin": component.plugin, "distribution": component.distribution,
                "version": component.version, "description": doc or "",
                "builtin": component.distribution == BUILTIN_DISTRIBUTION,
            }
            step = _step_mode(kind_, factory)
            if step is not None:
                entry["step_mode"] = step
            if kind_ not in ("task", "checkpoint"):
                entry["options"] = describe(factory)
            if getattr(factory, "default_for", None):  # input formats and heads a recipe gets unasked
                entry["default_for"] = list(factory.default_for)
            entries.append(entry)
        kinds[kind_] = sorted(entries, key=lambda e: e["builtin"])  # stable: names stay sorted within each group
    records = sorted(plugins.record(), key=lambda p: p["distribution"] == BUILTIN_DISTRIBUTION)
    return {"mtbert": __version__, "plugins": records, "components": kinds, "failures": plugins.registry.failures}


@cli.command()
@click.option("--kind", help="Only this kind of component (head, sampler, loss_combiner, gradient_transform, ...).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@guard
def plugins(kind: str | None, as_json: bool) -> None:
    """List installed plugins and their components, by kind, with options (third-party ones first)."""
    kind = normalize_kind(kind) if kind else None
    report = plugin_report(kind)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if kind is None:
        click.echo("plugins:")
        for p in report["plugins"]:
            status = f"  FAILED: {p['error']}" if p["error"] else ""
            click.echo(f"  {p['name']} ({p['distribution']} {p['version']}) hooks: {', '.join(p['hooks']) or '-'}{status}")
    for kind_, entries in report["components"].items():
        label = kind_.replace("_", " ")
        click.echo(f"\n{label if label.endswith('s') else label + 's'}:")
        if not entries:
            click.echo("  (none)")
        for entry in entries:
            step = f"  (step mode: {entry['step_mode']})" if "step_mode" in entry else ""
            default = f"  (default for {' and '.join(entry['default_for'])} tasks)" if entry.get("default_for") else ""
            click.echo(f"  {entry['name']}  [{entry['distribution']} {entry['version']}]{step}  {entry['description']}{default}")
            for opt in entry.get("options", []):
                default = json.dumps(opt["default"]) if opt["default"] != "(required)" else "(required)"
                click.echo(f"      {opt['name']}: {opt['type']} = {default}  — {opt['help']}")


def _write_eval(folder: Path, record: dict[str, Any]) -> None:
    from mtbert.files import WriteError, atomic_write_json, describe_os_error

    try:
        atomic_write_json(folder / "eval.json", record)
        with (folder / "evals.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except WriteError as exc:
        raise MtbertError(f"{exc}; the metrics above were not saved in {folder}") from None
    except OSError as exc:
        raise MtbertError(f"cannot write {folder / 'evals.jsonl'}: {describe_os_error(exc)}; "
                          f"the metrics above were not saved in {folder}") from None


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@set_option
@guard
def eval_command(run_dir: Path, overrides: tuple[str, ...]) -> None:
    """Evaluate RUN_DIR's best checkpoint on the dev files (overrides may point them elsewhere)."""
    from mtbert.engine.evaluate import evaluate
    from mtbert.engine.restore import load_splits, restore_run

    restored = restore_run(run_dir, list(overrides), cli_plugins())
    recipe = restored.recipe
    files = {name: str(paths["dev"]) for name, paths in load_splits(restored, ("dev",), warn=warn, progress=True).items()}
    metrics, _ = evaluate(restored.model, restored.tasks, "dev", device=restored.device,
                          precision=recipe.train.precision, batch_size=recipe.data.eval_batch_size, progress=True)
    for key, value in metrics.items():
        click.echo(f"{key}\t{value:.4f}")
    _write_eval(run_dir, {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                          "overrides": list(overrides), "files": files, "metrics": metrics})
    click.echo(f"written: {run_dir / 'eval.json'}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--task", "task_name", required=True, help="Task whose head predicts (sst, para, sts, ...).")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File in the task's CS224N format.")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Where to write predictions.")
@set_option
@guard
def predict(run_dir: Path, task_name: str, input_path: Path, output_path: Path, overrides: tuple[str, ...]) -> None:
    """Predict a file with RUN_DIR's best checkpoint, in the CS224N submission format."""
    from mtbert.engine.batches import load_split
    from mtbert.engine.evaluate import predict_split
    from mtbert.schema import did_you_mean

    from mtbert.engine.restore import restore_run

    restored = restore_run(run_dir, list(overrides), cli_plugins())
    if task_name not in restored.tasks:
        raise MtbertError(f"--task: '{task_name}' is not a task of this run; its tasks: {', '.join(restored.tasks)}"
                          f"{did_you_mean(task_name, restored.tasks)}")
    task = restored.tasks[task_name]
    recipe = restored.recipe
    load_split(task, "test", input_path, "--input", tokenizer=restored.tokenizer, max_length=recipe.data.max_length,
               strict=recipe.data.strict, limit=None, warn=warn, progress=True)
    ids, predictions, _ = predict_split(restored.model, task, "test", device=restored.device,
                                        precision=recipe.train.precision, batch_size=recipe.data.eval_batch_size,
                                        progress=True)
    task.spec.write_predictions(output_path, ids, predictions)
    click.echo(f"{len(ids)} predictions written to {output_path}")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--baseline", type=click.Path(file_okay=False, path_type=Path), help="Run whose row the changes (with 95% intervals) are against.")
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv", "json"]), default="markdown", show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write a PNG of dev mean per epoch.")
@click.option("--resamples", type=click.IntRange(min=100), default=10_000, show_default=True,
              help="Bootstrap resamples of the intervals against --baseline.")
@click.option("--bootstrap-seed", type=int, default=0, show_default=True, help="Seed of the bootstrap (same seed, same intervals).")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Dev metric to show (repeatable; default: every task's primary metric and mean), e.g. --metric sst_macro_f1.")
@guard
def compare(run_dirs: tuple[Path, ...], baseline: Path | None, fmt: str, plot_path: Path | None, resamples: int,
            bootstrap_seed: int, metrics: tuple[str, ...]) -> None:
    """Compare runs: replicates pooled (n, mean ± std), changes against --baseline with 95% intervals."""
    from mtbert.compare import compare as build_table, plot

    folders = [p for p in run_dirs if p.is_dir()]
    table, records = build_table(folders, baseline, list(metrics) or None, plugins=cli_plugins(), resamples=resamples,
                                 seed=bootstrap_seed)
    table.skipped = [f"{p}: not a folder" for p in run_dirs if not p.is_dir()] + table.skipped
    text = {"markdown": table.markdown, "csv": table.csv, "json": table.json}[fmt]()
    click.echo(text, nl=False)
    if fmt == "csv":  # the Markdown table lists them under itself; CSV must stay parseable
        for line in [*table.notes, *(f"skipped {s}" for s in table.skipped)]:
            click.echo(line, err=True)
    if plot_path is not None:
        try:
            plot(records, plot_path)
        except ImportError:
            raise MtbertError("--plot needs matplotlib: pip install matplotlib") from None
        click.echo(f"plot written to {plot_path}", err=True)


@cli.command()
@recipe_argument
@click.option("--grid", "grid", multiple=True, metavar="KEY.PATH=V1,V2",
              help="Values to sweep, read like --set values, e.g. --grid optim.lr=2e-5,5e-5 (repeatable: the product).")
@click.option("--seeds", metavar="N|S1,S2,..",
              help="Run every variant once per seed: a count (the recipe's seed, then 1, 2, ...) or a list (one seed: 7,); compare pools them.")
@click.option("--optuna", "trials", type=click.IntRange(min=1), metavar="N",
              help="Search N trials with Optuna over the recipe's [sweep.space] ranges instead of a grid.")
@click.option("--storage", metavar="URL",
              help="Optuna storage of the study (default sqlite:///DIR/optuna.db); processes given the same URL share it.")
@click.option("--pbt", "pbt", type=click.IntRange(min=2), metavar="N",
              help="Population-based training of N trials on Ray Tune over the recipe's [sweep.space].")
@click.option("--perturb-every", type=click.IntRange(min=1), default=1, show_default=True, metavar="K",
              help="With --pbt: evaluations between two exploit/explore decisions.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Sweep folder holding one run folder per variant (default runs/sweep-<name>).")
@set_option
@guard
def sweep(recipe: str, grid: tuple[str, ...], seeds: str | None, trials: int | None, storage: str | None,
          pbt: int | None, perturb_every: int, out: Path | None, overrides: tuple[str, ...]) -> None:
    """Run RECIPE's variants (times --seeds) one after another, then print their compare table."""
    from mtbert.shipped import resolve_recipe
    from mtbert.sweep import run_sweep

    result = run_sweep(resolve_recipe(recipe), list(grid), list(overrides), out=out, trials=trials, plugins=cli_plugins(),
                       say=click.echo, warn=warn, seeds=seeds, storage=storage, pbt=pbt, perturb_every=perturb_every)
    click.echo(result.table.markdown(), nl=False)
    if result.failed:
        names = ", ".join(v.folder.name for v in result.failed)
        raise MtbertError(f"sweep: {len(result.failed)} of {len(result.variants)} variants failed ({names})")


from mtbert import commands as _commands  # noqa: E402,F401  (registers recipes, resume and export on cli)


def main() -> None:
    import signal

    if hasattr(signal, "SIGXFSZ"):  # a file-size limit (ulimit -f): a write error with a message, not a silent kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    cli(prog_name="mtbert")


if __name__ == "__main__":
    main()
