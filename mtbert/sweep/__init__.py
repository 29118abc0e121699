"""``mtbert sweep``: run a recipe's variants one after another, then compare them.

A grid (``--grid KEY=V1,V2`` and the recipe's ``[sweep.grid]``; :mod:`mtbert.sweep.grid`) or an
Optuna search over the recipe's ``[sweep.space]`` (``--optuna N``; :mod:`mtbert.sweep.search`)
gives the variants (population-based training on Ray Tune, ``--pbt N``, is :mod:`mtbert.sweep.pbt`); each is a normal run folder under ``DIR`` (default ``runs/sweep-<name>``),
validated before the first starts, skipped when it finished earlier and resumed when it was
interrupted (:mod:`mtbert.sweep.variants`). The sweep ends with the compare table of all
variants in ``DIR/compare.md`` and each variant's overrides and status in ``DIR/sweep.json``.
README.md, "A sweep", shows the commands; the ``[sweep]`` table is checked with the recipe
(:mod:`mtbert.recipe.sweep_table`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mtbert.errors import MtbertError, RecipeError
from mtbert.sweep.grid import grid_variants, parse_grid, parse_seeds, split_values, toml_literal
from mtbert.sweep.search import optuna_sweep, suggest
from mtbert.sweep.variants import (
    SweepResult, Variant, finish, load_variant, preflight, read_table, run_variant, same_recipe,
)

__all__ = [
    "SweepResult", "Variant", "grid_variants", "load_variant", "parse_grid", "parse_seeds", "preflight", "read_table", "run_sweep",
    "run_variant", "same_recipe", "split_values", "suggest", "toml_literal",
]


def run_sweep(
    recipe_path: Path, grid_texts: list[str], overrides: list[str], *, out: Path | None = None,
    trials: int | None = None, plugins: Any = None, say: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None, seeds: str | None = None, storage: str | None = None,
    pbt: int | None = None, perturb_every: int = 1,
) -> SweepResult:
    """Run a grid sweep (``grid_texts`` and the recipe's ``[sweep.grid]``, times ``seeds``), an Optuna
    search (``trials``, in ``storage``) or population-based training on Ray Tune (``pbt`` trials)."""
    from mtbert.plugins import get_plugins

    plugins = plugins or get_plugins()
    recipe_path = Path(recipe_path)
    base_recipe = load_variant(recipe_path, overrides, [], plugins, "--set")  # the recipe itself, with --set
    sweep_table = read_table(recipe_path, overrides).get("sweep") or {}
    out = out or Path("runs") / f"sweep-{base_recipe.name}"

    if sum(x is not None for x in (trials, pbt)) + bool(grid_texts) > 1:
        raise MtbertError("--optuna, --pbt and --grid: give one of them (a search samples the keys a grid would fix)")
    if seeds is not None and trials is not None:
        raise MtbertError("--optuna and --seeds: give one of them (repeat the best trial with --seeds afterwards)")
    if seeds is not None and pbt is not None:
        raise MtbertError("--pbt and --seeds: give one of them (repeat the best trial with --seeds afterwards)")
    if storage is not None and trials is None:
        raise MtbertError("--storage is the study of an Optuna search: give it with --optuna N")
    if pbt is not None:
        from mtbert.sweep.pbt import pbt_sweep

        return pbt_sweep(recipe_path, overrides, base_recipe, sweep_table, pbt, out, plugins, say,
                         perturb_every=perturb_every)
    if trials is not None:
        return optuna_sweep(recipe_path, overrides, base_recipe, sweep_table, trials, out, plugins, say, warn,
                            storage=storage)

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
    table = finish(out, variants, info, say)
    return SweepResult(folder=out, variants=variants, table=table)
