"""Guards of a run folder: one process at a time, leftovers cleaned, resumes checked.

* :class:`RunLock`: an OS lock (``fcntl.flock``) on ``<run>/.lock``, held for the run's life.
  The kernel releases it when the process dies (even under ``kill -9``), so a stale lock never
  blocks a resume, while a second ``mtbert run`` (or ``--resume``) into a folder still in use
  is refused naming the holder's pid, instead of mixing both runs' files. A run that ends
  (finished, failed or interrupted) removes the file, so finished folders hold only results;
  one left by a killed process is harmless and reused.
* :func:`clean_stale_temps`: interrupted atomic writes leave hidden temporary files and
  folders (``checkpoints/.last.*``, ``.best.safetensors.*``); under the lock nobody else can
  be writing them, so the next start removes them.
* :func:`check_data_unchanged`: a resume compares every data file's SHA-1 with the one
  run.json recorded; a changed file would silently train on other rows.
* :func:`trim_evaluations`: evaluations logged after the saved state (a kill between an
  evaluation and the save that follows it) are dropped from ``metrics.jsonl`` on resume, so
  the resumed run does not log them twice.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from mtbert.errors import CheckpointError, MtbertError, RecipeError
from mtbert.files import describe_os_error

LOCK_NAME = ".lock"


class RunFolderBusy(MtbertError):
    """Another process holds the run folder's lock."""


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``folder/.lock`` holding the owner's pid."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self, what: str = "--out") -> "RunLock":
        # The owner unlinks the file when it releases the lock, so a process that opened the
        # old file just before may lock an inode no longer at the path: retry until the lock
        # held is on the file the path names (the usual flock-and-unlink protocol).
        while True:
            fd = self._lock_once(what)
            if _same_file(fd, self.path):
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is for messages only; the lock itself is held
        self.fd = fd
        return self

    def _lock_once(self, what: str) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise MtbertError(f"{what}: cannot create the lock file {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                pid = f"pid {holder}" if holder else "another process"
                raise RunFolderBusy(f"{what}: {self.folder} is in use by a running mtbert ({pid}); wait for it to end, "
                                    f"stop it (Ctrl-C or kill {holder or '<pid>'}) before resuming, or choose another folder") from None
            raise MtbertError(f"{what}: cannot lock {self.path}: {exc.strerror or exc}") from None
        return fd

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in that order: see :meth:`acquire`)."""
        if self.fd is not None:
            if _same_file(self.fd, self.path):
                try:
                    self.path.unlink()
                except OSError:
                    pass  # a read-only folder keeps the file; the next run reuses it
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open ``fd`` is still the file at ``path`` (not unlinked or replaced)."""
    try:
        held, named = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def folder_holds_files(folder: Path) -> bool:
    """Whether a folder holds anything besides a lock file (a new run must start empty)."""
    return folder.exists() and any(p.name != LOCK_NAME for p in folder.iterdir())


def set_aside(folder: Path) -> Path:
    """Rename an unfinished attempt that cannot be resumed to ``<name>.failed-<n>`` (kept, not deleted)."""
    n = 1
    while folder.with_name(f"{folder.name}.failed-{n}").exists():
        n += 1
    aside = folder.with_name(f"{folder.name}.failed-{n}")
    folder.rename(aside)
    return aside


def clean_stale_temps(folder: Path, say: Callable[[str], None]) -> list[Path]:
    """Remove temporary files and folders of interrupted atomic writes; returns what went."""
    removed: list[Path] = []
    for place in (folder, folder / "checkpoints", folder / "checkpoints" / "encoder"):
        if not place.is_dir():
            continue
        for entry in place.iterdir():
            # Atomic writes name their temporaries ".<target>.<random>"; ".lock" is ours and kept.
            if not entry.name.startswith(".") or entry.name == LOCK_NAME or entry.name.count(".") < 2:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        say(f"removed {len(removed)} temporary file(s) left by an interrupted write in {folder}")
    return removed


def recorded_data(folder: Path) -> dict[str, dict[str, str]] | None:
    """The data files run.json recorded, or None when run.json is missing or damaged."""
    try:
        info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    data = info.get("data") if isinstance(info, dict) else None
    return data if isinstance(data, dict) else None


def data_changes(recorded: dict[str, dict[str, str]], current: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    """The (task, split) files whose SHA-1 differs from the recorded one."""
    changes = []
    for task, files in current.items():
        before = recorded.get(task) or {}
        for key, sha1 in files.items():
            if not key.endswith("_sha1"):
                continue
            split = key[: -len("_sha1")]
            old = before.get(key)
            if old is not None and old != sha1:
                changes.append({"task": task, "split": split, "file": files.get(split, ""), "recorded_sha1": old, "sha1": sha1})
    return changes


def check_data_unchanged(folder: Path, current: dict[str, dict[str, str]], *, allow: bool,
                         warn: Callable[[str], None]) -> list[dict[str, str]]:
    """Refuse a resume whose data files changed since the run started (unless ``allow``)."""
    recorded = recorded_data(folder)
    if recorded is None:
        warn(f"warning: --resume: {folder / 'run.json'} is missing or damaged; the data files cannot be checked")
        return []
    changes = data_changes(recorded, current)
    if changes and not allow:
        first = changes[0]
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        raise CheckpointError(
            f"--resume: data file {first['file']} ({first['task']} {first['split']}) changed since {folder} started "
            f"(SHA-1 {first['sha1'][:12]}, recorded {first['recorded_sha1'][:12]}){more}; restore it, or add "
            f"--allow-data-change to continue on the new data")
    for change in changes:
        warn(f"warning: --resume: data file {change['file']} ({change['task']} {change['split']}) changed since the "
             f"run started; continuing on the new data (--allow-data-change)")
    return changes


def trim_evaluations(folder: Path, global_step: int, stage_index: int) -> int:
    """Drop ``metrics.jsonl`` records logged after the saved state; returns how many went."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by the kill: it cannot be read back, drop it
            dropped += 1
            continue
        step, index = int(record.get("step", 0)), int(record.get("stage_index", 0))
        if step > global_step or (step == global_step and index > stage_index):
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        from mtbert.files import atomic_write_text

        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    return dropped


def _make_folder(folder: Path) -> None:
    """Create a run folder, or one line saying why it cannot be (a file in the way, read-only...)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"--out: cannot create the run folder {folder}: {describe_os_error(exc, folder)}") from None


def claim_run_folder(recipe: Any, plugins: Any, *, out: Path | None, resume: bool, allow_data_change: bool,
                     say: Callable[[str], None], warn: Callable[[str], None], locks: list[RunLock],
                     ) -> tuple[Path, list[dict[str, str]]]:
    """The run folder, locked (the lock is appended to ``locks``), and the data changes a resume accepted.

    A new run needs an empty folder (``out`` or ``runs/<name>-<time>``); a resume needs ``out`` (or
    the newest unfinished run of the recipe) started with the same recipe on the same data.
    """
    from mtbert.engine.run_records import check_resume, data_hashes, default_run_folder, find_resumable

    changes: list[dict[str, str]] = []
    if resume:
        folder = out or find_resumable(recipe.name)
        if folder is None:
            raise CheckpointError(f"--resume: no unfinished run of '{recipe.name}' under runs/; give its folder with --out")
        if not folder.is_dir():
            raise CheckpointError(f"--resume: {folder} is not a run folder (it is not a folder)")
        locks.append(RunLock(folder).acquire("--resume"))
        check_resume(folder, recipe, plugins)
        changes = check_data_unchanged(folder, data_hashes(recipe), allow=allow_data_change, warn=warn)
    else:
        folder = out or default_run_folder(recipe.name)
        if folder_holds_files(folder):  # before locking: the lock file itself would make it non-empty
            raise RecipeError(f"--out: {folder} already holds files; choose another folder or add --resume to continue it")
        _make_folder(folder)
        locks.append(RunLock(folder).acquire("--out"))
        if folder_holds_files(folder):  # another process filled it between the check and the lock
            raise RecipeError(f"--out: {folder} already holds files; choose another folder or add --resume to continue it")
    clean_stale_temps(folder, say)
    return folder, changes
