"""Rebuild a finished run's best model from its folder alone (for ``eval`` and ``predict``).

The run folder holds the resolved recipe, the encoder's config and vocabulary and the best
weights, so neither the original checkpoint nor the training data is needed. An ensemble's
folder (``train.ensemble``, :mod:`mtbert.engine.ensemble`) restores as the mean of its members.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Callable

import attrs
import torch
from torch import nn

from mtbert.engine.batches import TaskData, load_split, resolve_file
from mtbert.engine.checkpoint import load_weights
from mtbert.engine.device import choose_device
from mtbert.engine.multitask_model import build_model
from mtbert.engine.run_records import ENCODER_FILES
from mtbert.errors import CheckpointError, DataError
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


class EnsembleModel(nn.Module):
    """Members' raw outputs (logits, scores) averaged: what ``evaluate`` and ``predict`` need of a model."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        # Heads' predict is a fixed function of the raw output (argmax, sign, clamp), the same in
        # every member, so member 1's map the mean output to predictions.
        self.heads = dict(members[0].heads.items())

    def forward(self, batch: Any) -> torch.Tensor:
        return torch.stack([member(batch).float() for member in self.members]).mean(dim=0)


def member_folders(folder: Path, count: int) -> list[Path]:
    """``members/1`` .. ``members/<count>``: each a complete run folder of one member."""
    return [folder / "members" / str(k) for k in range(1, count + 1)]


def restore_run(folder: str | Path, overrides: list[str], plugins: Plugins) -> RestoredRun:
    """The run's best model; for an ensemble (``train.ensemble`` > 1) the mean of its members' best."""
    from mtbert.model.bert import BertEncoder
    from mtbert.model.config import BertConfig
    from mtbert.model.tokenizer import BertTokenizer

    folder = Path(folder)
    recipe_path = folder / "recipe.toml"
    if not recipe_path.is_file():
        raise CheckpointError(f"{folder} is not a run folder (no recipe.toml)")
    if (folder / "members").is_dir():
        return _restore_ensemble(folder, overrides, plugins)
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


def _restore_ensemble(folder: Path, overrides: list[str], plugins: Plugins) -> RestoredRun:
    count = int(tomllib.loads((folder / "recipe.toml").read_text(encoding="utf-8")).get("train", {}).get("ensemble", 1))
    members = []
    for member in member_folders(folder, count):
        if not member.is_dir():
            raise CheckpointError(f"{folder} is an ensemble of {count} members and {member} is missing: "
                                  f"finish it with mtbert resume {folder}")
        members.append(restore_run(member, overrides, plugins))
    first = members[0]
    model = EnsembleModel([m.model for m in members]).to(first.device).eval()
    best: dict[str, Any] = {}
    try:
        best = json.loads((folder / "metrics.json").read_text(encoding="utf-8")).get("best") or {}
    except (OSError, ValueError):
        pass
    return RestoredRun(folder=folder, recipe=first.recipe, model=model,
                       tokenizer=first.tokenizer, device=first.device, tasks=first.tasks, best=best)


def load_splits(restored: RestoredRun, splits: tuple[str, ...], *, warn: Callable[[str], None],
                optional: tuple[str, ...] = (), progress: bool = False) -> dict[str, dict[str, Path]]:
    """Load every task's ``splits`` files as the run's recipe names them (overrides applied).

    A missing file of a split in ``optional`` (an ensemble's test predictions) is skipped; any
    other missing file is a one-line :class:`~mtbert.errors.DataError`. Returns the files read,
    by task and split, for the records that cite them (``eval.json``).
    """
    recipe = restored.recipe
    files: dict[str, dict[str, Path]] = {}
    for name, task in restored.tasks.items():
        section = recipe.tasks[name].section
        for split in splits:
            path, key = resolve_file(recipe.data_dir(), name, section, task.spec, split)
            if split in optional and (path is None or not path.is_file()):
                continue
            if path is None:
                raise DataError(f"{key}: task '{name}' has no default {split} file; set {key}")
            load_split(task, split, path, key, tokenizer=restored.tokenizer, max_length=recipe.data.max_length,
                       strict=recipe.data.strict, limit=getattr(section, f"{split}_limit"), warn=warn,
                       slice_seed=recipe.data.slice_seed, cache=recipe.data.cache, progress=progress)
            files.setdefault(name, {})[split] = path
    return files
