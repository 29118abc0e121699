"""Writing files so that a crash never leaves half of one, and hashing files.

Every file mtbert writes that a later command reads (run records, checkpoints, cached
tokenizations, exported weights) goes through :func:`atomic_path`: the content is written to a
temporary file beside the target and renamed over it, so readers see the old file or the new
one, never a torn one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: Path, *, mode: int | None = None, sync: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path``; when the block ends without error it replaces ``path``.

    Write the content to the yielded path (any writer: safetensors, ``Path.write_text``);
    ``mode`` sets its permissions (temporary files start as 0600); ``sync`` flushes it to disk
    before the rename. On an error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        if sync:
            with tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path, sync=True) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def file_sha1(path: Path) -> str:
    """The SHA-1 of a file's bytes (data files in run.json, cache keys)."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha1").hexdigest()
