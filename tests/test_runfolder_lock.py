"""The run folder's lock: held for a run's life, refused to a second process, removed at the end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtbert.engine.runfolder import LOCK_NAME, RunFolderBusy, RunLock, _same_file


def test_release_removes_the_lock_file(tmp_path: Path) -> None:
    lock = RunLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
    lock.release()
    assert list(tmp_path.iterdir()) == []


def test_a_second_holder_is_refused_and_removes_nothing(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from mtbert.engine.runfolder import RunLock; "
            "RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid}"):
            RunLock(tmp_path).acquire()
        assert (tmp_path / LOCK_NAME).exists()  # still the holder's
    finally:
        holder.kill()
        holder.wait()
    # The killed holder's file stays behind; the next run locks and then removes it.
    lock = RunLock(tmp_path).acquire("--resume")
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_taken_on_an_unlinked_file_is_retaken_on_the_new_one(tmp_path: Path) -> None:
    """The race the unlink opens: B opens the file, A releases (unlinks), B locks the old inode."""
    first = RunLock(tmp_path).acquire()
    stale_fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR)
    try:
        first.release()
        assert not _same_file(stale_fd, tmp_path / LOCK_NAME)  # what acquire checks before keeping a lock
    finally:
        os.close(stale_fd)
    second = RunLock(tmp_path).acquire()
    try:
        assert _same_file(second.fd, tmp_path / LOCK_NAME)
        with pytest.raises(RunFolderBusy):
            RunLock(tmp_path).acquire()
    finally:
        second.release()
