"""More ``mtbert`` commands: ``recipes`` (list, copy), ``resume``, ``export`` and ``archive``.

Registered on :data:`mtbert.cli_base.cli` (``mtbert.cli`` imports this module); kept apart so
each command module stays small.
"""

from __future__ import annotations

from pathlib import Path

import click

from mtbert.cli_base import cli, cli_plugins, guard, report_run, set_option, warn


@cli.group(invoke_without_command=True)
@click.pass_context
@guard
def recipes(ctx: click.Context) -> None:
    """List the recipes shipped with mtbert (run one by name: mtbert run quickstart)."""
    if ctx.invoked_subcommand is not None:
        return
    from mtbert.shipped import recipes_root, shipped_recipes

    found = shipped_recipes()
    if not found:
        click.echo("no shipped recipes found (this installation lacks mtbert/recipes)", err=True)
        raise SystemExit(2)
    width = max(len(r.name) for r in found)
    for recipe in found:
        click.echo(f"{recipe.name:<{width}}  {recipe.description}")
    click.echo(f"\n({len(found)} recipes in {recipes_root()}; mtbert run NAME runs one, "
               "mtbert recipes copy NAME [DEST] writes an editable copy)", err=True)


@recipes.command(name="copy")
@click.argument("name")
@click.argument("dest", required=False, type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
@guard
def recipes_copy(name: str, dest: Path | None, force: bool) -> None:
    """Write an editable copy of shipped recipe NAME to DEST (a file or folder; default: here).

    Files the recipe includes are copied beside it, so the copy runs as it is.
    """
    from mtbert.shipped import copy_recipe

    for path in copy_recipe(name, dest, force=force):
        click.echo(f"written: {path}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@set_option
@click.option("--allow-data-change", is_flag=True,
              help="Continue although a data file changed since the run started (recorded in run.json).")
@guard
def resume(run_dir: Path, overrides: tuple[str, ...], allow_data_change: bool) -> None:
    """Continue the interrupted run in RUN_DIR from its last saved state (its own recipe.toml).

    Only keys that do not change what is computed may be overridden (train.device,
    train.threads, train.progress, data.dir, ...).
    """
    from mtbert.engine.resume import resume_run

    folder, summary = resume_run(run_dir, list(overrides), cli_plugins(), say=click.echo, warn=warn,
                                 allow_data_change=allow_data_change)
    report_run(folder, summary)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["hf", "sentence-transformers"]), default="hf", show_default=True,
              help="hf: a Hugging Face BERT folder; sentence-transformers: the same plus modules.json and pooling.")
@click.option("--pooling-from", "pooling_task", metavar="TASK",
              help="With sentence-transformers: the task whose head's pooling the export uses "
                   "(needed only when the heads pool differently).")
@click.option("--force", is_flag=True, help="Write into OUT_DIR even if it holds files.")
@guard
def export(run_dir: Path, out_dir: Path, fmt: str, pooling_task: str | None, force: bool) -> None:
    """Write RUN_DIR's best checkpoint as a Hugging Face BERT folder OUT_DIR (heads beside it)."""
    from mtbert.export import export_run

    written = export_run(run_dir, out_dir, cli_plugins(), fmt=fmt, pooling_task=pooling_task, force=force)
    click.echo(f"exported {run_dir} ({written['checkpoint']}) to {out_dir}: {', '.join(written['files'])}")


@cli.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--tensorboard", is_flag=True, help="Keep the TensorBoard event files too.")
@click.option("--test-predictions", is_flag=True, help="Keep the test-split predictions too.")
@click.option("--force", is_flag=True, help="Overwrite files DEST already holds.")
@guard
def archive(sources: tuple[Path, ...], dest: Path, tensorboard: bool, test_predictions: bool, force: bool) -> None:
    """Copy what compare and reproduction need from runs (no checkpoints) into DEST.

    Each SOURCE is a run folder or a folder of runs (a sweep, a campaign); it lands as
    DEST/<its name>/... . mtbert compare reads the archive as it reads run folders.
    """
    from mtbert.archive import archive_runs

    runs = archive_runs(list(sources), dest, tensorboard=tensorboard, test_predictions=test_predictions,
                        force=force, registry=cli_plugins().registry, say=click.echo)
    click.echo(f"{len(runs)} run(s) archived in {dest}")
