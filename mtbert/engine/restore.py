"""Rebuild a finished run's best model from its folder alone (for ``eval`` and ``predict``).

The run folder holds the resolved recipe, the encoder's config and vocabulary and the best
weights, so neither the original checkpoint nor the training data is needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs
import torch

from mtbert.engine.batches import TaskData
from mtbert.engine.checkpoint import load_weights
from mtbert.engine.device import choose_device
from mtbert.engine.multitask_model import build_model
from mtbert.engine.run_records import ENCODER_FILES
from mtbert.errors import CheckpointError
from mtbert.plugins import Plugins
from mtbert.recipe import DATA_DIR_ENV, Recipe, load_recipe


@attrs.define
class RestoredRun:
    folder: Path
    recipe: Recipe
    model: Any
    tokenizer: Any
    device: torch.device
    tasks: dict[str, TaskData]
    best: dict[str, Any]


def _recorded_data_dir(folder: Path) -> str | None:
    try:
        info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for files in (info.get("data") or {}).values():
        for key in ("dev", "train"):
            if key in files:
                return str(Path(files[key]).parent)
    return None


def encoder_files_folder(folder: Path) -> Path:
    """The run's encoder config and vocabulary (``checkpoints/encoder/`` in older run folders)."""
    new = folder / "checkpoints" / ENCODER_FILES
    old = folder / "checkpoints" / "encoder"
    return old if not new.is_dir() and old.is_dir() else new


def restore_run(folder: str | Path, overrides: list[str], plugins: Plugins) -> RestoredRun:
    from mtbert.model.bert import BertEncoder
    from mtbert.model.config import BertConfig
    from mtbert.model.tokenizer import BertTokenizer

    folder = Path(folder)
    recipe_path = folder / "recipe.toml"
    if not recipe_path.is_file():
        raise CheckpointError(f"{folder} is not a run folder (no recipe.toml)")
    best_path = folder / "checkpoints" / "best.safetensors"
    if not best_path.is_file():
        raise CheckpointError(f"{folder} has no best checkpoint yet ({best_path} is missing: did the run finish an epoch?)")
    overrides = list(overrides)
    recorded = _recorded_data_dir(folder)
    if recorded and not os.environ.get(DATA_DIR_ENV) and not any(o.startswith("data.dir=") for o in overrides):
        import tomllib

        if "dir" not in tomllib.loads(recipe_path.read_text(encoding="utf-8")).get("data", {}):
            overrides.insert(0, f"data.dir={json.dumps(recorded)}")
    recipe = load_recipe(recipe_path, overrides, plugins)
    encoder_dir = encoder_files_folder(folder)
    config = BertConfig.from_json_file(encoder_dir / "config.json")
    tokenizer = BertTokenizer.from_folder(encoder_dir)
    encoder = BertEncoder(config, attention=recipe.model.attention, unpad=recipe.model.unpad)
    tasks = {
        name: TaskData(name=name, spec=t.spec, input_format=t.input.options, input_format_name=t.input.name)
        for name, t in recipe.tasks.items()
    }
    model = build_model(recipe, encoder)
    for spec in recipe.regularizers:  # regularizers such as mixout change the module structure
        spec.options.build().setup(model)
    state, meta = load_weights(best_path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{best_path} does not fit the recipe's model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    device = choose_device(recipe.train.device)
    model.to(device).eval()
    return RestoredRun(folder=folder, recipe=recipe, model=model, tokenizer=tokenizer, device=device, tasks=tasks, best=meta)
