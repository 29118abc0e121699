"""A run folder's records (what run.json, metrics and TensorBoard hold) and the checks before resuming one.

The folder holds (README.md, "Run folders"): ``recipe.toml`` (resolved), ``run.json``
(versions, commit, plugins, device, seed, data file hashes, times, status), ``metrics.jsonl``
(one line per evaluation), ``metrics.json`` (best and last), TensorBoard event files (in the
folder itself, so TensorBoard names the run after its folder), ``checkpoints/`` (``best.safetensors`` and ``last/`` for ``--resume``, plus the encoder's
config and vocabulary so the run is self-contained) and ``predictions/``.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable

import torch

from mtbert.engine.batches import resolve_file
from mtbert.errors import CheckpointError, RecipeError
from mtbert.files import file_sha1
from mtbert.plugins import Plugins
from mtbert.recipe import RESULT_NEUTRAL_KEYS, Recipe, changed_keys, validate
from mtbert.version import __version__


#: Folder under checkpoints/ with the encoder's config and vocabulary (no weights).
ENCODER_FILES = "encoder-config"


def now() -> str:
    """The time for records: UTC, ISO 8601, seconds."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_commit(path: Path) -> dict[str, Any] | None:
    """The commit (and whether the tree is dirty) of the checkout holding ``path``, if any."""
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def default_run_folder(name: str, root: Path = Path("runs")) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = root / f"{name}-{stamp}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = root / f"{name}-{stamp}-{suffix}"
    return folder


class RunLog:
    """metrics.jsonl, TensorBoard scalars and console lines.

    The event files go into the run folder itself: TensorBoard names a run by the folder that
    holds its event files, relative to ``--logdir``, so ``tensorboard --logdir runs`` shows
    ``baseline``, not ``baseline/tb`` (the other files of a run folder hold no events).
    """

    def __init__(self, folder: Path, say: Callable[[str], None], purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        self.say = say
        # On resume, events logged after the saved state (by the interrupted process) are purged.
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text)

    def evaluation(self, record: dict[str, Any]) -> None:
        with (self.folder / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def run_status(folder: Path) -> str | None:
    """``run.json``'s status (running, finished, failed, interrupted), None when unreadable."""
    try:
        return json.loads((folder / "run.json").read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def is_resumable(folder: Path) -> bool:
    """Whether ``folder`` holds saved training state for ``--resume``: ``checkpoints/last``, or
    ``last.old`` when a crash came between the two renames of a save."""
    if (folder / "members").is_dir():  # an ensemble (mtbert.engine.ensemble): its members resume
        return True
    return any((folder / "checkpoints" / name / "state.json").is_file() for name in ("last", "last.old"))


def same_recipe(folder: Path, recipe: Recipe, plugins: Plugins) -> bool:
    """Whether ``folder/recipe.toml`` is ``recipe`` (keys that do not change results aside).

    The saved recipe is validated again, so an option added to mtbert since that run (absent
    from its recipe.toml) compares equal at its default, as for ``--resume``. A recipe's name
    and description are labels: a renamed copy of a recipe (``best.toml`` including the recipe
    it promotes) adopts the original's finished runs.
    """
    try:
        table = tomllib.loads((folder / "recipe.toml").read_text(encoding="utf-8"))
        old = validate(table, plugins, source=str(folder / "recipe.toml")).to_dict()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecipeError):
        return False
    return not changed_keys(old, recipe.to_dict(), RESULT_NEUTRAL_KEYS)


def find_resumable(name: str, root: Path = Path("runs")) -> Path | None:
    """The newest unfinished run folder of recipe ``name`` under ``root``."""
    candidates = sorted(root.glob(f"{name}-*"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []
    for folder in candidates:
        if is_resumable(folder) and run_status(folder) != "finished":
            return folder
    return None


def check_resume(folder: Path, recipe: Recipe, plugins: Plugins) -> None:
    """Refuse to resume with a recipe that trains differently from the saved one.

    The saved recipe is validated again with today's defaults, so options added to mtbert since
    the run started (absent from its recipe.toml) compare equal at their default values.
    """
    saved = folder / "recipe.toml"
    if not saved.is_file():
        raise CheckpointError(f"--resume: {folder} is not a run folder (no recipe.toml)")
    try:
        table = tomllib.loads(saved.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CheckpointError(f"--resume: {saved} is damaged ({str(exc).splitlines()[0]}); the run cannot be "
                              f"checked against it: restore the file or start a new run") from None
    try:
        old = validate(table, plugins, source=str(saved)).to_dict()
    except RecipeError as exc:
        raise RecipeError(f"--resume: the saved recipe {saved} no longer validates: {exc.problems[0]}") from None
    changed = changed_keys(old, recipe.to_dict())
    if changed:
        raise RecipeError(f"--resume: the recipe differs from the one {folder} was started with at {', '.join(changed[:5])}")


def data_hashes(recipe: Recipe) -> dict[str, dict[str, str]]:
    """The data files a run of ``recipe`` reads and their SHA-1, keyed as run.json's ``data``."""
    data_dir = recipe.data_dir()
    out: dict[str, dict[str, str]] = {}
    for name, task_recipe in recipe.tasks.items():
        for split in ("train", "dev", "test"):
            path, _ = resolve_file(data_dir, name, task_recipe.section, task_recipe.spec, split)
            if path is not None and path.is_file():
                out.setdefault(name, {})[split] = str(path.resolve())
                out[name][f"{split}_sha1"] = file_sha1(path)
    return out


def token_record(run: Any, previous: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Training tokens of this run (``previous``: run.json's record before a resume, added in):
    real tokens, padded positions and computed positions, with their ratios."""
    encoder = getattr(getattr(run, "model", None), "encoder", None)
    tokens = getattr(encoder, "tokens", None)
    if tokens is None:
        return None
    record = tokens.record()
    if previous:
        for key in ("real", "positions", "computed"):
            record[key] += int(previous.get(key, 0))
        record["padding_efficiency"] = record["real"] / record["computed"] if record["computed"] else 1.0
        record["batch_fill"] = record["real"] / record["positions"] if record["positions"] else 1.0
    return record


def run_record(run: Any, status: str, started: str, extra: dict[str, Any]) -> dict[str, Any]:
    device = run.device
    info = {
        "mtbert_version": __version__,
        "git": git_commit(Path(__file__).resolve().parents[1]),  # mtbert's own checkout
        "command": sys.argv,
        "recipe": run.recipe.name,
        "recipe_source": run.recipe.source,
        "seed": run.recipe.seed,
        "status": status,
        "started": started,
        "device": {
            "type": device.type,
            "name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            **run.precision.record(),
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()},
        "plugins": run.plugins.record(),
        "components": {
            "tasks": {n: {"input": t.input.name, "head": t.head.name, "head_provider": t.head.component.provider}
                      for n, t in run.recipe.tasks.items()},
            "sampler": run.recipe.sampler.component.provider,
            "loss_combiner": run.recipe.loss_combiner.component.provider,
            "gradient_transforms": [c.component.provider for c in run.recipe.gradient_transforms],
            "regularizers": [c.component.provider for c in run.recipe.regularizers],
            "stages": [c.component.provider for c in run.recipe.stages],
        },
        "data": run.data_files,
        "checkpoint": run.recipe.model.checkpoint,
        "distributed": {**run.distributed.record(), **run.distributed_info},
    }
    info.update(extra)
    return info
