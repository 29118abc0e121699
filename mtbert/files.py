"""Writing files so that a crash never leaves half of one, and hashing files.

Every file mtbert writes that a later command reads (run records, checkpoints, cached
tokenizations, exported weights) goes through :func:`atomic_path`: the content is written to a
temporary file beside the target and renamed over it, so readers see the old file or the new
one, never a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

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


@contextlib.contextmanager
def atomic_path(path: Path, *, mode: int | None = None, sync: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path``; when the block ends without error it replaces ``path``.

    Write the content to the yielded path (any writer: safetensors, ``Path.write_text``);
    ``mode`` sets its permissions (temporary files start as 0600); ``sync`` flushes it to disk
    before the rename. On an error the temporary file is removed and ``path`` is untouched; an
    OSError (a full disk, a read-only folder, a size limit) becomes a :class:`WriteError`
    naming ``path``.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        if sync:
            with tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(path, exc) from None
    finally:
        if tmp is not None:
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
