"""The pre-tokenized dataset cache (mtbert/engine/cache.py) and fixed-length padding.

Hits return exactly what tokenizing returns; any change of the data file, the slice, the
tokenizer, max_length or the input format misses; a corrupt entry is ignored and rebuilt;
``data.cache = false`` writes nothing. ``data.padding = "max_length"`` pads every batch to
``data.max_length`` and a format that cannot do so is rejected by the validator.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtbert.engine import cache as cache_mod
from mtbert.engine.batches import TaskData, load_split
from mtbert.engine.cache import _pack, _unpack, encode_cached, entry_key, entry_path
from mtbert.engine.components import EncodedExamples
from mtbert.engine.seeding import derive_seed
from mtbert_plugins.input_concat_pair import ConcatPair
from mtbert_plugins.input_hybrid_pair import HybridPair
from mtbert_plugins.inputs import SeparatePair, SingleSentence
from mtbert_plugins.tasks_cs224n import SST, STS


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from mtbert.model.tokenizer import BertTokenizer

    return BertTokenizer.from_folder(minilm_dir)


def _copy_rows(source: Path, target: Path, rows: int) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    target.write_text("".join(lines[: rows + 1]), encoding="utf-8")  # header + rows
    return target


@pytest.fixture
def sst_file(data_dir, tmp_path):
    return _copy_rows(data_dir / "ids-sst-dev.csv", tmp_path / "sst.csv", 120)


@pytest.fixture
def sts_file(data_dir, tmp_path):
    return _copy_rows(data_dir / "sts-dev.csv", tmp_path / "sts.csv", 90)


class Counter:
    """Counts calls of an input format's ``encode_examples`` (monkeypatched on its class)."""

    def __init__(self, monkeypatch, cls):
        self.calls = 0
        original = cls.encode_examples

        def counted(fmt, *args, **kwargs):
            self.calls += 1
            return original(fmt, *args, **kwargs)

        monkeypatch.setattr(cls, "encode_examples", counted)


def _examples(spec, path: Path):
    return spec.read(path, "dev", strict=False, warn=lambda m: None, key="k").examples


def _encode(task, path, examples, tokenizer, root, *, max_length=64, limit=None, warn=None, enabled=True):
    return encode_cached(task, "dev", path, examples, tokenizer=tokenizer, max_length=max_length, limit=limit,
                         slice_seed=7, strict=False, warn=warn or (lambda m: None), enabled=enabled, root=root)


def _same(a: EncodedExamples, b: EncodedExamples) -> None:
    assert list(a.ids) == list(b.ids)
    assert a.sequences == b.sequences
    assert a.type_ids == b.type_ids
    assert list(a.labels) == list(b.labels)


def _entries(root: Path) -> list[Path]:
    return sorted(root.glob("*.safetensors")) if root.is_dir() else []


# --------------------------------------------------------------------------- hit and miss
@pytest.mark.parametrize("fmt, spec, fixture", [
    (SingleSentence(), SST, "sst_file"), (SeparatePair(), STS, "sts_file"), (ConcatPair(), STS, "sts_file"),
    (HybridPair(), STS, "sts_file"),
])
def test_miss_writes_an_entry_and_the_hit_returns_identical_encodings(request, tmp_path, tokenizer, monkeypatch,
                                                                       fmt, spec, fixture):
    path = request.getfixturevalue(fixture)
    root = tmp_path / "cache"
    counter = Counter(monkeypatch, type(fmt))
    task = TaskData(name="t", spec=spec, input_format=fmt, input_format_name="x")
    examples = _examples(spec, path)
    fresh = fmt.encode_examples(tokenizer, examples, 64)
    assert counter.calls == 1

    first = _encode(task, path, examples, tokenizer, root)
    assert counter.calls == 2 and len(_entries(root)) == 1  # miss: tokenized and written
    second = _encode(task, path, examples, tokenizer, root)
    assert counter.calls == 2  # hit: not tokenized again
    _same(first, fresh)
    _same(second, fresh)
    if isinstance(fmt, (ConcatPair, HybridPair)):  # segment ids survive the round trip, with their 1s
        assert any(1 in types for types in second.type_ids[-1])
    if spec is STS:  # float labels are exact
        assert all(isinstance(x, float) for x in second.labels) and second.labels == [e.label for e in examples]


def test_disabled_cache_writes_nothing(tmp_path, tokenizer, sst_file):
    root = tmp_path / "cache"
    task = TaskData(name="sst", spec=SST, input_format=SingleSentence(), input_format_name="single")
    encoded = _encode(task, sst_file, _examples(SST, sst_file), tokenizer, root, enabled=False)
    assert len(encoded) == 120 and not root.exists()


# --------------------------------------------------------------------------- invalidation
def test_changing_the_data_file_misses_and_gives_the_new_encodings(tmp_path, tokenizer, sst_file, monkeypatch):
    root = tmp_path / "cache"
    counter = Counter(monkeypatch, SingleSentence)
    task = TaskData(name="sst", spec=SST, input_format=SingleSentence(), input_format_name="single")
    _encode(task, sst_file, _examples(SST, sst_file), tokenizer, root)
    # same row ids, one sentence changed: only the file hash can tell
    text = sst_file.read_text(encoding="utf-8")
    assert "lovely film" in text
    sst_file.write_text(text.replace("lovely film", "dreadful film", 1), encoding="utf-8")
    examples = _examples(SST, sst_file)
    changed = _encode(task, sst_file, examples, tokenizer, root)
    assert counter.calls == 2 and len(_entries(root)) == 2
    _same(changed, SingleSentence().encode_examples(tokenizer, examples, 64))
    assert tokenizer.vocab["dreadful"] in changed.sequences[0][0]


def test_changing_tokenizer_max_length_slice_or_format_misses(tmp_path, tokenizer, sst_file, sts_file, monkeypatch):
    from mtbert.model.tokenizer import BertTokenizer

    root = tmp_path / "cache"
    task = TaskData(name="sst", spec=SST, input_format=SingleSentence(), input_format_name="single")
    examples = _examples(SST, sst_file)
    _encode(task, sst_file, examples, tokenizer, root)
    assert len(_entries(root)) == 1
    cased = BertTokenizer(tokenizer.vocab, lowercase=False)
    out = _encode(task, sst_file, examples, cased, root)
    _same(out, SingleSentence().encode_examples(cased, examples, 64))
    assert len(_entries(root)) == 2
    bigger_vocab = BertTokenizer({**tokenizer.vocab, "zzzmtbert": len(tokenizer.vocab)})
    _encode(task, sst_file, examples, bigger_vocab, root)
    assert len(_entries(root)) == 3
    keep_accents = BertTokenizer(tokenizer.vocab, lowercase=True, strip_accents=False)  # same casing, other normalizer
    _encode(task, sst_file, examples, keep_accents, root)
    assert len(_entries(root)) == 4
    short = _encode(task, sst_file, examples, tokenizer, root, max_length=12)
    assert len(_entries(root)) == 5 and max(len(s) for s in short.sequences[0]) == 12
    _encode(task, sst_file, examples[:50], tokenizer, root, limit=50)
    assert len(_entries(root)) == 6
    pairs = _examples(STS, sts_file)
    for fmt in (SeparatePair(), ConcatPair()):
        _encode(TaskData(name="sts", spec=STS, input_format=fmt, input_format_name="x"), sts_file, pairs, tokenizer, root)
    assert len(_entries(root)) == 8
    # a tokenizer's key does not depend on the truncation its last call left behind
    used, fresh = BertTokenizer(tokenizer.vocab), BertTokenizer(tokenizer.vocab)
    used.encode(["x"], max_length=5)
    assert cache_mod.tokenizer_key(used) == cache_mod.tokenizer_key(fresh)
    # and every one of them still hits
    counter = Counter(monkeypatch, SingleSentence)
    _encode(task, sst_file, examples, cased, root)
    _encode(task, sst_file, examples, tokenizer, root, max_length=12)
    assert counter.calls == 0


def test_key_covers_every_input(tmp_path, tokenizer, sst_file):
    base = dict(task="sst", split="dev", path=sst_file, input_format=SingleSentence(), tokenizer=tokenizer,
                max_length=64, limit=None, slice_seed=3, strict=False, rows="r")
    key = entry_key(**base)
    assert key["file_sha1"] == cache_mod.file_sha1(sst_file)
    changes = dict(task="para", split="train", max_length=65, limit=10, slice_seed=4, strict=True, rows="s",
                   input_format=ConcatPair())
    paths = {entry_path(key, tmp_path)}
    for name, value in changes.items():
        paths.add(entry_path(entry_key(**{**base, name: value}), tmp_path))
    assert len(paths) == 1 + len(changes)
    assert entry_path(entry_key(**base), tmp_path) == entry_path(key, tmp_path)  # deterministic


# --------------------------------------------------------------------------- corruption
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_entry_is_ignored_and_rebuilt(tmp_path, tokenizer, sst_file, monkeypatch, damage):
    root = tmp_path / "cache"
    task = TaskData(name="sst", spec=SST, input_format=SingleSentence(), input_format_name="single")
    examples = _examples(SST, sst_file)
    good = _encode(task, sst_file, examples, tokenizer, root)
    (entry,) = _entries(root)
    data = entry.read_bytes()
    entry.write_bytes({"garbage": b"\x00not a safetensors file" * 10, "truncated": data[: len(data) // 2],
                       "empty": b""}[damage])
    counter = Counter(monkeypatch, SingleSentence)
    warnings: list[str] = []
    rebuilt = _encode(task, sst_file, examples, tokenizer, root, warn=warnings.append)
    assert counter.calls == 1 and len(warnings) == 1 and "rebuilding" in warnings[0]
    _same(rebuilt, good)
    again = _encode(task, sst_file, examples, tokenizer, root, warn=warnings.append)
    assert counter.calls == 1 and len(warnings) == 1  # the rewritten entry is a clean hit
    _same(again, good)
    assert [p.name for p in root.iterdir()] == [entry.name]  # no temporary files left behind


def test_entry_written_for_another_key_is_not_used(tmp_path, tokenizer, sst_file, monkeypatch):
    root = tmp_path / "cache"
    task = TaskData(name="sst", spec=SST, input_format=SingleSentence(), input_format_name="single")
    examples = _examples(SST, sst_file)
    _encode(task, sst_file, examples, tokenizer, root, max_length=12)
    (short,) = _entries(root)
    key = entry_key(task="sst", split="dev", path=sst_file, input_format=SingleSentence(), tokenizer=tokenizer,
                    max_length=64, limit=None, slice_seed=7, strict=False,
                    rows=cache_mod.rows_fingerprint(examples))
    short.rename(entry_path(key, root))  # a 12-token entry under the 64-token name
    out = _encode(task, sst_file, examples, tokenizer, root, max_length=64, warn=lambda m: None)
    _same(out, SingleSentence().encode_examples(tokenizer, examples, 64))


def test_unwritable_cache_warns_and_still_encodes(tmp_path, tokenizer, sst_file):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    task = TaskData(name="sst", spec=SST, input_format=SingleSentence(), input_format_name="single")
    warnings: list[str] = []
    out = _encode(task, sst_file, _examples(SST, sst_file), tokenizer, blocker / "cache", warn=warnings.append)
    assert len(out) == 120 and len(warnings) == 1 and "could not write" in warnings[0]


# --------------------------------------------------------------------------- packing
@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(min_value=0, max_value=2**31 - 1), max_size=9), max_size=30))
def test_pack_unpack_round_trip(lists):
    flat, offsets = _pack(lists)
    assert flat.dtype == torch.int32 and offsets.tolist()[-1] == sum(map(len, lists))
    assert _unpack(flat, offsets) == lists


# --------------------------------------------------------------------------- the engine call site
def test_load_split_uses_the_cache_folder_from_the_environment(tmp_path, tokenizer, sst_file, monkeypatch):
    root = tmp_path / "env-cache"
    monkeypatch.setenv("MTBERT_CACHE_DIR", str(root))
    counter = Counter(monkeypatch, SingleSentence)
    outs = []
    for _ in range(2):
        task = TaskData(name="sst", spec=SST, input_format=SingleSentence(), input_format_name="single")
        outs.append(load_split(task, "dev", sst_file, "k", tokenizer=tokenizer, max_length=64, strict=False,
                               limit=40, warn=lambda m: None, slice_seed=5, cache=True))
    assert counter.calls == 1 and len(_entries(root)) == 1
    _same(outs[0].encoded, outs[1].encoded)
    assert len(outs[1].encoded) == 40 and [e.id for e in outs[1].examples] == outs[1].encoded.ids
    task = TaskData(name="sst", spec=SST, input_format=SingleSentence(), input_format_name="single")
    load_split(task, "dev", sst_file, "k", tokenizer=tokenizer, max_length=64, strict=False, limit=40,
               warn=lambda m: None, slice_seed=6, cache=True)  # another slice: another entry
    assert counter.calls == 2 and len(_entries(root)) == 2
    assert derive_seed(5, "sst", "dev") != derive_seed(6, "sst", "dev")


# --------------------------------------------------------------------------- padding
@pytest.mark.parametrize("fmt, spec, fixture", [
    (SingleSentence(), SST, "sst_file"), (SeparatePair(), STS, "sts_file"), (ConcatPair(), STS, "sts_file"),
    (HybridPair(), STS, "sts_file"),
])
def test_max_length_padding_pads_every_batch_to_max_length(request, tokenizer, fmt, spec, fixture):
    path = request.getfixturevalue(fixture)
    examples = _examples(spec, path)
    dynamic = TaskData(name="t", spec=spec, input_format=fmt, input_format_name="x")
    fixed = TaskData(name="t", spec=spec, input_format=fmt, input_format_name="x", pad_to=64)
    for task in (dynamic, fixed):
        load_split(task, "dev", path, "k", tokenizer=tokenizer, max_length=64, strict=False, limit=None,
                   warn=lambda m: None)
    indices = [3, 1, 4, 1, 5, 9, 2, 6]
    a, b = dynamic.collate("dev", indices), fixed.collate("dev", indices)
    assert a.inputs.keys() == b.inputs.keys()
    for name, tensor in b.inputs.items():
        short = a.inputs[name]
        assert tensor.shape == (8, 64) and short.shape[1] < 64
        assert torch.equal(tensor[:, : short.shape[1]], short)  # same tokens, then padding
        assert not tensor[:, short.shape[1]:].any()  # pad id, mask and segment ids 0
    assert torch.equal(a.labels, b.labels)


def test_recipe_padding_and_cache_options_validate(builtin_plugins):
    from mtbert.plugins import load_plugins
    from mtbert.recipe import validate

    table = {"tasks": {"sst": {}, "sts": {"input": "concat-pair"}}}
    recipe = validate(table, builtin_plugins)
    assert recipe.data.padding == "dynamic" and recipe.data.cache is True
    recipe = validate({**table, "data": {"padding": "max_length", "cache": False}}, builtin_plugins)
    assert recipe.data.padding == "max_length" and recipe.data.cache is False
    with pytest.raises(Exception, match="data.padding"):
        validate({**table, "data": {"padding": "longest"}}, builtin_plugins)

    @attrs.define
    class OldFormat(SingleSentence):  # a third-party format written before pad_to existed
        def collate(self, encoded, indices, task, label_dtype):
            return super().collate(encoded, indices, task, label_dtype)

    class Plugin:
        from mtbert import hookimpl

        @staticmethod
        @hookimpl
        def mtbert_register_input_formats(register):
            register("old-single", OldFormat)

    plugins = load_plugins([("old", Plugin)])
    old = {"tasks": {"sst": {"input": "old-single"}}}
    assert validate(old, plugins).data.padding == "dynamic"
    with pytest.raises(Exception, match=r"tasks\.sst\.input: 'old-single' pads batches dynamically only"):
        validate({**old, "data": {"padding": "max_length"}}, plugins)
