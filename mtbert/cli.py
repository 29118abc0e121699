"""The ``mtbert`` command: run, validate, plugins, eval, predict, compare, sweep.

User mistakes end in one ``error:`` line per problem and exit status 2, never a traceback;
an interrupted run exits with 130 after saving its state.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
from pathlib import Path
from typing import Any, Callable

import click

import mtbert
from mtbert.errors import MtbertError, RecipeError


def _warn(message: str) -> None:
    text = message if message.startswith("warning:") else f"warning: {message}"
    click.echo(text, err=True)


def _plugins():
    from mtbert.plugins import get_plugins

    return get_plugins(warn=_warn)


def guard(fn: Callable) -> Callable:
    """Turn MtbertError into ``error:`` lines and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RecipeError as exc:
            for line in exc.problems:
                click.echo(f"error: {line}", err=True)
            raise SystemExit(2)
        except MtbertError as exc:
            from mtbert.engine.trainer import RunInterrupted

            if isinstance(exc, RunInterrupted):
                click.echo(f"interrupted: {exc}", err=True)
                raise SystemExit(130)
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(2)
        except KeyboardInterrupt:
            click.echo("aborted", err=True)
            raise SystemExit(130)

    return wrapper


set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
    help="Override a recipe key, e.g. --set optim.lr=3e-5 --set tasks.sts.head=cosine (repeatable).",
)


@click.group()
@click.version_option(mtbert.__version__, prog_name="mtbert")
def cli() -> None:
    """Multitask fine-tuning of BERT encoders, extended through plugins."""


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder (default runs/<name>-<time>).")
@click.option("--name", help="Run name (default: the recipe's name).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last saved state (--out names it).")
@guard
def run(recipe: Path, overrides: tuple[str, ...], out: Path | None, name: str | None, resume: bool) -> None:
    """Train RECIPE and write a run folder."""
    from mtbert.engine.run import run_recipe
    from mtbert.recipe import load_recipe

    overrides = list(overrides) + ([f"name={json.dumps(name)}"] if name else [])
    plugins = _plugins()
    resolved = load_recipe(recipe, overrides, plugins)
    folder, summary = run_recipe(resolved, plugins, out=out, resume=resume, say=click.echo, warn=_warn)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only the first process reports
        return
    best = summary.get("best")
    if best:
        shown = "  ".join(f"{k} {v:.4f}" for k, v in best["dev"].items() if k == "mean" or k.endswith(("_acc", "_pearson")))
        click.echo(f"best dev (epoch {best['epoch']}): {shown}")
    click.echo(f"run folder: {folder}")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--show", is_flag=True, help="Print the resolved recipe (includes, overrides and defaults applied).")
@guard
def validate(recipe: Path, overrides: tuple[str, ...], show: bool) -> None:
    """Check RECIPE (and its includes and overrides) and that its data files exist, without running it."""
    from mtbert.recipe import load_recipe

    from mtbert.engine.data import missing_data_files

    resolved = load_recipe(recipe, list(overrides), _plugins())
    missing = missing_data_files(resolved)
    if missing:
        raise RecipeError(missing)
    if show:
        click.echo(resolved.to_toml())
    tasks = ", ".join(f"{n} ({t.input.name}, {t.head.name})" for n, t in resolved.tasks.items())
    click.echo(f"{recipe}: ok — tasks {tasks}; sampler {resolved.sampler.name}; combiner {resolved.loss_combiner.name}")


def plugin_report() -> dict[str, Any]:
    """What ``mtbert plugins --json`` prints: plugins, and components by kind with options."""
    from mtbert.plugins import KINDS
    from mtbert.schema import describe, first_line

    plugins = _plugins()
    kinds: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        entries = []
        for name in plugins.registry.names(kind):
            component = plugins.registry.find(kind, name)
            factory = component.factory
            doc = getattr(factory, "description", None) if kind in ("task", "checkpoint") else first_line(factory.__doc__)
            entry = {
                "name": name, "plugin": component.plugin, "distribution": component.distribution,
                "version": component.version, "description": doc or "",
            }
            if kind not in ("task", "checkpoint"):
                entry["options"] = describe(factory)
            entries.append(entry)
        kinds[kind] = entries
    return {"mtbert": mtbert.__version__, "plugins": plugins.record(), "components": kinds, "failures": plugins.registry.failures}


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@guard
def plugins(as_json: bool) -> None:
    """List installed plugins and their components, by kind, with options."""
    report = plugin_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo("plugins:")
    for p in report["plugins"]:
        status = f"  FAILED: {p['error']}" if p["error"] else ""
        click.echo(f"  {p['name']} ({p['distribution']} {p['version']}) hooks: {', '.join(p['hooks']) or '-'}{status}")
    for kind, entries in report["components"].items():
        click.echo(f"\n{kind.replace('_', ' ')}s:")
        if not entries:
            click.echo("  (none)")
        for entry in entries:
            click.echo(f"  {entry['name']}  [{entry['distribution']} {entry['version']}]  {entry['description']}")
            for opt in entry.get("options", []):
                default = json.dumps(opt["default"]) if opt["default"] != "(required)" else "(required)"
                click.echo(f"      {opt['name']}: {opt['type']} = {default}  — {opt['help']}")


def _write_eval(folder: Path, record: dict[str, Any]) -> None:
    from mtbert.engine.checkpoint import atomic_write_json

    atomic_write_json(folder / "eval.json", record)
    with (folder / "evals.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@set_option
@guard
def eval_command(run_dir: Path, overrides: tuple[str, ...]) -> None:
    """Evaluate RUN_DIR's best checkpoint on the dev files (overrides may point them elsewhere)."""
    from mtbert.engine.data import load_split, resolve_file
    from mtbert.engine.evaluate import evaluate
    from mtbert.engine.restore import restore_run

    restored = restore_run(run_dir, list(overrides), _plugins())
    recipe = restored.recipe
    files = {}
    for name, task in restored.tasks.items():
        section = recipe.tasks[name].section
        path, key = resolve_file(recipe.data_dir(), name, section, task.spec, "dev")
        load_split(task, "dev", path, key, tokenizer=restored.tokenizer, max_length=recipe.data.max_length,
                   strict=recipe.data.strict, limit=section.dev_limit, warn=_warn,
                   slice_seed=recipe.data.slice_seed)
        files[name] = str(path)
    metrics, _ = evaluate(restored.model, restored.tasks, "dev", device=restored.device,
                          precision=recipe.train.precision, batch_size=recipe.data.eval_batch_size)
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
    from mtbert.engine.data import load_split
    from mtbert.engine.evaluate import predict_split
    from mtbert.schema import did_you_mean

    from mtbert.engine.restore import restore_run

    restored = restore_run(run_dir, list(overrides), _plugins())
    if task_name not in restored.tasks:
        raise MtbertError(f"--task: '{task_name}' is not a task of this run; its tasks: {', '.join(restored.tasks)}"
                          f"{did_you_mean(task_name, restored.tasks)}")
    task = restored.tasks[task_name]
    recipe = restored.recipe
    load_split(task, "test", input_path, "--input", tokenizer=restored.tokenizer, max_length=recipe.data.max_length,
               strict=recipe.data.strict, limit=None, warn=_warn)
    ids, predictions, _ = predict_split(restored.model, task, "test", device=restored.device,
                                        precision=recipe.train.precision, batch_size=recipe.data.eval_batch_size)
    task.spec.write_predictions(output_path, ids, predictions)
    click.echo(f"{len(ids)} predictions written to {output_path}")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--baseline", type=click.Path(file_okay=False, path_type=Path), help="Run whose scores the deltas are against.")
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv"]), default="markdown", show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write a PNG of dev mean per epoch.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Dev metric to show (repeatable; default: every task's primary metric and mean), e.g. --metric sst_macro_f1.")
@guard
def compare(run_dirs: tuple[Path, ...], baseline: Path | None, fmt: str, plot_path: Path | None,
            metrics: tuple[str, ...]) -> None:
    """Compare runs: the recipe values that differ, best dev scores, deltas, wall time."""
    from mtbert.compare import compare as build_table, plot

    folders = [p for p in run_dirs if p.is_dir()]
    table, records = build_table(folders, baseline, list(metrics) or None, registry=_plugins().registry)
    table.skipped = [f"{p}: not a folder" for p in run_dirs if not p.is_dir()] + table.skipped
    click.echo(table.markdown() if fmt == "markdown" else table.csv(), nl=False)
    if fmt == "csv":  # the Markdown table lists them under itself; CSV must stay parseable
        for skipped in table.skipped:
            click.echo(f"skipped {skipped}", err=True)
    if plot_path is not None:
        try:
            plot(records, plot_path)
        except ImportError:
            raise MtbertError("--plot needs matplotlib: pip install matplotlib") from None
        click.echo(f"plot written to {plot_path}", err=True)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--grid", "grid", multiple=True, metavar="KEY.PATH=V1,V2",
              help="Values to sweep, read like --set values, e.g. --grid optim.lr=2e-5,5e-5 (repeatable: the product).")
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
def sweep(recipe: Path, grid: tuple[str, ...], trials: int | None, storage: str | None, pbt: int | None,
          perturb_every: int, out: Path | None, overrides: tuple[str, ...]) -> None:
    """Run RECIPE's variants one after another, then print their compare table."""
    from mtbert.sweep import run_sweep

    result = run_sweep(recipe, list(grid), list(overrides), out=out, trials=trials, plugins=_plugins(),
                       say=click.echo, warn=_warn, storage=storage, pbt=pbt, perturb_every=perturb_every)
    click.echo(result.table.markdown(), nl=False)
    if result.failed:
        names = ", ".join(v.folder.name for v in result.failed)
        raise MtbertError(f"sweep: {len(result.failed)} of {len(result.variants)} variants failed ({names})")


def main() -> None:
    cli(prog_name="mtbert")


if __name__ == "__main__":
    main()
