"""Checkpoints: safetensors plus JSON, written atomically, never pickles.

* ``best.safetensors``: the model weights (encoder and heads) of the best evaluation, with
  the evaluation it came from in the file's metadata (and in ``best.json`` for people).
* ``last/``: everything ``--resume`` needs (weights, optimizer, scheduler, sampler and stream
  generators, RNG states, loss-combiner state, progress). Written into a temporary folder and
  renamed into place, so an interruption leaves either the old state or the new one.

Nested training state (dicts and lists holding tensors, numbers and strings) is split into a
tensor file and a JSON skeleton (see :func:`split_tensors`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from mtbert.errors import CheckpointError

#: What to do about a failed write, by errno (the message names the path and the cause).
_WRITE_HINTS = {
    errno.ENOSPC: "the disk is full: free space or choose another --out",
    errno.EDQUOT: "the disk quota is used up: free space or choose another --out",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "permission denied: choose a folder you may write to",
    errno.EPERM: "permission denied: choose a folder you may write to",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f): raise the limit",
    errno.ENOTDIR: "a path component is a file, not a folder: choose another --out",
    errno.EEXIST: "a file is in the way: choose another --out",
}


def describe_os_error(exc: OSError, path: Path | str | None = None) -> str:
    """``<cause> (<what to do>)`` for a failed write, in one line."""
    cause = exc.strerror or str(exc)
    hint = _WRITE_HINTS.get(exc.errno or 0)
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
    return f"{cause}{where}; {hint}" if hint else f"{cause}{where}"


class WriteError(CheckpointError):
    """A run file or checkpoint could not be written (full disk, read-only folder, size limit...)."""

    def __init__(self, path: Path, exc: OSError):
        self.path = path
        self.errno = exc.errno
        # The OS names the temporary file of the atomic write: the path itself says more.
        super().__init__(f"cannot write {path}: {describe_os_error(exc, exc.filename)}")

TENSOR_TAG = "__tensor__"
DICT_TAG = "__dict__"


def split_tensors(obj: Any, prefix: str = "t") -> tuple[Any, dict[str, torch.Tensor]]:
    """JSON-able skeleton of ``obj`` and the tensors it held, under generated keys.

    Dicts become ``{"__dict__": [[key, value], ...]}`` so keys keep their type (int, str,
    bool) and no user key can collide with the encoding; tensors become
    ``{"__tensor__": "<prefix><n>"}``; tuples come back as lists.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            key = f"{prefix}{len(tensors)}"
            tensors[key] = value.detach().to("cpu").contiguous().clone()
            return {TENSOR_TAG: key}
        if isinstance(value, dict):
            for k in value:
                if not (k is None or isinstance(k, (str, int, bool))):
                    raise TypeError(f"cannot checkpoint a dict key of type {type(k).__name__} at {path}")
            return {DICT_TAG: [[k, walk(v, f"{path}.{k}")] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"cannot checkpoint a value of type {type(value).__name__} at {path}")

    return walk(obj, "state"), tensors


def join_tensors(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`."""
    if isinstance(skeleton, dict):
        if TENSOR_TAG in skeleton:
            return tensors[skeleton[TENSOR_TAG]]
        return {k: join_tensors(v, tensors) for k, v in skeleton[DICT_TAG]}
    if isinstance(skeleton, list):
        return [join_tensors(v, tensors) for v in skeleton]
    return skeleton


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file and a rename: the old content survives any failure."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise WriteError(path, exc) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _state_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (tied weights): store independent contiguous copies.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> None:
    """Write a state dict as safetensors atomically, JSON metadata in the header.

    The file is serialized in memory and written by Python, so a failed write is an OSError
    with its errno (a full disk, a size limit), reported as a :class:`WriteError`.
    """
    meta = {"mtbert": json.dumps(metadata or {})}
    _atomic_write_bytes(path, safetensors_bytes(_state_tensors(state), metadata=meta))


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("mtbert", "{}"))
        return load_file(str(path)), meta
    except Exception as exc:  # corrupt or foreign file
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None


def save_training_state(folder: Path, model_state: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write ``folder`` (e.g. ``checkpoints/last``) atomically: temp folder, then rename."""
    parent = folder.parent
    tmp: Path | None = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
        _write_file(tmp / "model.safetensors", safetensors_bytes(_state_tensors(model_state)))
        skeleton, tensors = split_tensors(state)
        _write_file(tmp / "state.safetensors", safetensors_bytes(tensors))
        _write_file(tmp / "state.json", (json.dumps(skeleton) + "\n").encode("utf-8"))
        old = parent / f"{folder.name}.old"
        if old.exists():
            shutil.rmtree(old)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old.exists():
            shutil.rmtree(old)
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(folder, exc) from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_training_state(folder: Path, required: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The last saved state, or None when there is none (``<name>.old`` covers a crash mid-rename).

    A state lacking one of the ``required`` keys (``state.json`` holding ``{}``) is reported
    as damaged, naming the file.
    """
    for candidate in (folder, folder.parent / f"{folder.name}.old"):
        if (candidate / "state.json").is_file():
            try:
                model_state = load_file(str(candidate / "model.safetensors"))
                tensors = load_file(str(candidate / "state.safetensors"))
                skeleton = json.loads((candidate / "state.json").read_text(encoding="utf-8"))
            except Exception as exc:
                raise CheckpointError(f"{candidate}: unreadable training state ({type(exc).__name__}: {exc})") from None
            try:
                state = join_tensors(skeleton, tensors)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise CheckpointError(f"{candidate / 'state.json'} is damaged ({type(exc).__name__}: {exc}); "
                                      "the run cannot be resumed from it") from None
            missing = [key for key in required if not isinstance(state, dict) or key not in state]
            if missing:
                raise CheckpointError(f"{candidate / 'state.json'} is damaged (no {', '.join(missing)}); "
                                      "the run cannot be resumed from it") from None
            return model_state, state
    return None

