"""``load_splits``: the one loader of a restored run's dev/test files (``mtbert eval``, ensembles)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from mtbert.engine.restore import RestoredRun, load_splits
from mtbert.errors import DataError


def restored_with(tmp_path: Path, files: dict[str, str], dev_file: str | None = None) -> RestoredRun:
    """A restored run of one task whose spec names ``files`` (no model is needed to load splits)."""
    section = SimpleNamespace(dev_file=dev_file, test_file=None, dev_limit=None, test_limit=None)
    data = SimpleNamespace(max_length=64, strict=False, slice_seed=0, cache=False)
    recipe = SimpleNamespace(data_dir=lambda: tmp_path, tasks={"plug": SimpleNamespace(section=section)}, data=data)
    task = SimpleNamespace(name="plug", spec=SimpleNamespace(files=files))
    return RestoredRun(folder=tmp_path, recipe=recipe, model=None, tokenizer=None, device=None, tasks={"plug": task}, best={})


def test_a_task_without_a_dev_file_is_a_one_line_error_naming_the_key(tmp_path):
    with pytest.raises(DataError) as info:
        load_splits(restored_with(tmp_path, files={"train": "t.csv"}), ("dev",), warn=print)
    assert str(info.value) == "tasks.plug.dev_file: task 'plug' has no default dev file; set tasks.plug.dev_file"


def test_a_missing_optional_split_is_skipped_and_a_missing_required_one_is_named(tmp_path):
    restored = restored_with(tmp_path, files={"dev": "dev.csv", "test": "test.csv"})
    with pytest.raises(DataError) as info:
        load_splits(restored, ("dev", "test"), warn=print, optional=("test",))
    assert "data.dir" in str(info.value) and "dev" in str(info.value) and "not found" in str(info.value)
    assert load_splits(restored_with(tmp_path, files={"dev": "dev.csv"}), ("test",), warn=print, optional=("test",)) == {}
