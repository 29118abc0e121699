"""The Python API for training: ``mtbert.run(recipe, overrides=[...], out=...)`` (this module's ``run``).

What ``mtbert run`` does, callable from a script or a notebook. ``recipe`` is a recipe file,
a shipped recipe's name (``"quickstart"``; a path that exists wins) or a dict with a recipe's
keys (its ``include`` paths are relative to the current folder). ``overrides`` are ``--set``
strings (``"optim.lr=3e-5"``, ``"gradient_transforms[0].c=0.2"``). Mistakes raise
:class:`mtbert.errors.RecipeError` (``.problems``: one line each) before any work starts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, NamedTuple

from mtbert.errors import RecipeError


class RunResult(NamedTuple):
    """The run folder and its metrics (``metrics.json``: ``{"best": ..., "last": ...}``)."""

    folder: Path
    metrics: dict[str, Any]

    @property
    def best(self) -> dict[str, float]:
        """The best evaluation's dev metrics (empty when the run never evaluated)."""
        return dict((self.metrics.get("best") or {}).get("dev") or {})


def _table_recipe(table: dict[str, Any], overrides: list[str], plugins: Any) -> Any:
    """Validate a recipe given as a dict; its problems name ``recipe[...]`` or ``--set``."""
    from mtbert.recipe import _deep_merge, apply_override, key_label, parse_override, read_with_includes, validate

    table = copy.deepcopy(table)
    includes = table.pop("include", [])
    merged: dict[str, Any] = {}
    for include in [includes] if isinstance(includes, str) else list(includes):
        sub, _ = read_with_includes(Path(include))
        merged = _deep_merge(merged, sub)
    table = _deep_merge(merged, table)
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(table, parts, value, text)
    keys = [key_label(parse_override(t)[0]) for t in overrides]
    try:
        return validate(table, plugins, source="")
    except RecipeError as exc:
        lines = []
        for problem in exc.problems:
            key = problem.split(": ", 1)[0]
            by_set = any(key == k or key.startswith((f"{k}.", f"{k}[")) for k in keys)
            lines.append(f"--set {problem}" if by_set else f"recipe dict: {problem}")
        raise RecipeError(lines) from None


def run(recipe: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = (), out: str | Path | None = None,
        *, resume: bool = False, plugins: Any = None, say: Callable[[str], None] | None = print,
        progress: bool | None = None) -> RunResult:
    """Train ``recipe`` into the run folder ``out`` (default ``runs/<name>-<time>``); return folder and metrics.

    ``say=None`` silences the per-epoch lines; ``progress=False`` turns the bars off
    (``train.progress``; by default the recipe's value, bars only on a terminal).
    """
    from mtbert.engine.run import run_recipe
    from mtbert.plugins import get_plugins
    from mtbert.recipe import load_recipe
    from mtbert.shipped import resolve_recipe

    plugins = plugins or get_plugins()
    overrides = [*overrides, *([f"train.progress={str(progress).lower()}"] if progress is not None else [])]
    if isinstance(recipe, dict):
        resolved = _table_recipe(recipe, overrides, plugins)
    else:
        resolved = load_recipe(resolve_recipe(recipe), overrides, plugins)
    folder, summary = run_recipe(resolved, plugins, out=Path(out) if out is not None else None, resume=resume,
                                 say=say or (lambda _message: None))
    return RunResult(Path(folder), summary)
