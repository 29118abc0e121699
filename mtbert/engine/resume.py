"""``mtbert resume RUN_DIR``: continue a run from its own folder, no recipe path needed.

The folder's ``recipe.toml`` is the fully resolved recipe the run started with, so it is all
that is needed besides ``checkpoints/last``; the data folder comes from ``run.json`` when
neither ``$MTBERT_DATA_DIR`` nor ``--set data.dir=...`` gives one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from mtbert.engine.run_records import is_resumable, run_status
from mtbert.errors import CheckpointError
from mtbert.plugins import Plugins


def resume_run(
    folder: str | Path, overrides: list[str], plugins: Plugins, *, say: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None, allow_data_change: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Continue the run in ``folder``; returns the folder and the metrics summary, as ``run_recipe``."""
    import tomllib

    from mtbert.engine.restore import _recorded_data_dir
    from mtbert.engine.run import run_recipe
    from mtbert.recipe import DATA_DIR_ENV, load_recipe

    folder = Path(folder)
    recipe_path = folder / "recipe.toml"
    if not recipe_path.is_file():
        raise CheckpointError(f"resume: {folder} is not a run folder (no recipe.toml)")
    if not is_resumable(folder):
        if run_status(folder) == "finished":
            raise CheckpointError(f"resume: {folder} has finished (run.json status 'finished'); there is nothing to continue")
        raise CheckpointError(f"resume: {folder} holds no saved training state (checkpoints/last): "
                              "it stopped before its first save (end of an epoch or train.checkpoint_every steps)")
    if run_status(folder) == "finished":
        raise CheckpointError(f"resume: {folder} has finished (run.json status 'finished'); there is nothing to continue")
    overrides = list(overrides)
    try:  # the saved recipe first: a damaged one is named as such, whatever else is set
        saved = tomllib.loads(recipe_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CheckpointError(f"resume: {recipe_path} is damaged ({str(exc).splitlines()[0]}); restore the file "
                              "or start a new run") from None
    recorded = _recorded_data_dir(folder)
    if recorded and not os.environ.get(DATA_DIR_ENV) and not any(o.strip().startswith("data.dir") for o in overrides):
        if "dir" not in saved.get("data", {}):
            overrides.insert(0, f"data.dir={json.dumps(recorded)}")
    recipe = load_recipe(recipe_path, overrides, plugins)
    return run_recipe(recipe, plugins, out=folder, resume=True, say=say, warn=warn, allow_data_change=allow_data_change)
