"""What every ``mtbert`` command shares: the command group, turning user errors into ``error:``
lines and exit statuses, ``--set``, and how a run's end is reported.

The commands themselves live in :mod:`mtbert.cli` (run, validate, plugins, eval, predict,
compare, sweep) and :mod:`mtbert.commands` (recipes, resume, export, archive); both register on
:data:`cli` here, so neither imports the other's module for it.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import click

from mtbert.errors import MtbertError, RecipeError, RunInterrupted
from mtbert.version import __version__


def warn(message: str) -> None:
    """A ``warning:`` line on stderr."""
    text = message if message.startswith("warning:") else f"warning: {message}"
    click.echo(text, err=True)


def cli_plugins() -> Any:
    """The installed plugins, their load problems printed as warnings."""
    from mtbert.plugins import get_plugins

    return get_plugins(warn=warn)


def guard(fn: Callable) -> Callable:
    """Turn MtbertError into ``error:`` lines and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():  # mtbert's deprecation notices as "warning:" lines
                warnings.showwarning = lambda message, *rest: warn(str(message))
                return fn(*args, **kwargs)
        except RecipeError as exc:
            for line in exc.problems:
                click.echo(f"error: {line}", err=True)
            raise SystemExit(2)
        except MtbertError as exc:
            if isinstance(exc, RunInterrupted):
                click.echo(f"interrupted: {exc}", err=True)
                raise SystemExit(130)
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(2)
        except KeyboardInterrupt:
            click.echo("aborted", err=True)
            raise SystemExit(130)
        except OSError as exc:  # a write no specific message covered: still one line naming the path
            from mtbert.files import describe_os_error

            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{describe_os_error(exc, exc.filename)}", err=True)
            raise SystemExit(2)

    return wrapper


set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
    help="Override a recipe key, e.g. --set optim.lr=3e-5 --set tasks.sts.head=cosine (repeatable).",
)


@click.group()
@click.version_option(__version__, prog_name="mtbert")
def cli() -> None:
    """Multitask fine-tuning of BERT encoders, extended through plugins."""


def report_run(folder: Path, summary: dict[str, Any]) -> None:
    """The end of ``mtbert run``/``resume``: the best scores, then the run folder alone on the last line."""
    if os.environ.get("RANK", "0") != "0":  # under torchrun only the first process reports
        return
    best = summary.get("best")
    if best:
        shown = "  ".join(f"{k} {v:.4f}" for k, v in best["dev"].items() if k == "mean" or k.endswith(("_acc", "_pearson")))
        click.echo(f"best dev (epoch {best['epoch']}): {shown}")
    click.echo(str(folder))  # on its own, so that scripts capture it: folder=$(mtbert run ... | tail -n 1)


recipe_argument = click.argument("recipe", metavar="RECIPE")
