"""A sweep's variants: validated before the first runs, each run (or skipped when its folder holds
the same finished recipe, or resumed from its saved state) without stopping the sweep on failure,
and the compare table of them all written at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import attrs

from mtbert.engine.run_records import is_resumable, run_status, same_recipe
from mtbert.engine.runfolder import set_aside
from mtbert.errors import MtbertError, RecipeError, RunInterrupted
from mtbert.files import atomic_write_json, atomic_write_text
from mtbert.recipe import apply_overrides, load_recipe, override_key, read_with_includes


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


def read_table(recipe_path: Path, overrides: list[str]) -> dict[str, Any]:
    """The recipe table with includes and ``--set`` overrides applied (before validation)."""
    table, _ = read_with_includes(Path(recipe_path))
    return apply_overrides(table, overrides)


def load_variant(recipe_path: Path, base: list[str], extra: list[str], plugins: Any, flag: str = "--grid") -> Any:
    """Validate the recipe with ``base`` (--set) then ``extra`` overrides; ``extra``'s errors say ``flag``."""
    try:
        return load_recipe(recipe_path, [*base, *extra], plugins)
    except RecipeError as exc:
        keys = [override_key(text) for text in extra]
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
            recipes.append(load_variant(recipe_path, base, variant.overrides, plugins, flag))
        except RecipeError as exc:
            problems += [p for p in exc.problems if p not in problems]
    if problems:
        raise RecipeError(problems)
    return recipes


def _one_line(exc: BaseException) -> str:
    text = "; ".join(exc.problems) if isinstance(exc, RecipeError) else str(exc)
    text = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, MtbertError) else text


def run_variant(variant: Variant, recipe: Any, plugins: Any, say: Callable[[str], None],
                warn: Callable[[str], None] | None) -> None:
    """Run (or skip, or resume) one variant; failures are recorded on it, not raised."""
    from mtbert.engine.run import run_recipe  # the engine loads only when a variant runs

    folder = variant.folder
    resume = False
    if folder.exists() and any(folder.iterdir()):
        status = run_status(folder)
        if status == "finished":
            if same_recipe(folder, recipe, plugins):
                variant.status = "skipped"
                variant.message = "finished earlier"
                return
            variant.status = "failed"
            variant.compared = False
            variant.message = (f"{folder} holds a finished run of a different recipe; "
                               "remove it or sweep into another --out")
            return
        if is_resumable(folder) and same_recipe(folder, recipe, plugins):
            resume = True
        else:
            aside = set_aside(folder)
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


@attrs.define
class SweepResult:
    folder: Path
    variants: list[Variant]
    table: Any  # mtbert.compare.Table
    best: Variant | None = None

    @property
    def failed(self) -> list[Variant]:
        return [v for v in self.variants if v.status == "failed"]


def finish(out: Path, variants: list[Variant], info: dict[str, Any], say: Callable[[str], None]) -> Any:
    from mtbert.compare import compare

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
