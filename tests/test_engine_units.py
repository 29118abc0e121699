"""Unit tests of the engine's building blocks and the builtin plugins they drive.

Samplers, task streams, checkpoint serialisation, the flat shared-gradient buffer, learning-rate
schedules, optimizer groups, head losses and pooling, clipping, derived seeds and the progress
bar. Everything runs on the CPU with tiny tensors; the data tests read the real CS224N files
(``data_dir``) and tokenize them with the real MiniLM vocabulary (``minilm_dir``).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mtbert.engine.checkpoint import (
    atomic_write_json,
    join_tensors,
    load_training_state,
    load_weights,
    save_training_state,
    save_weights,
    split_tensors,
)
from mtbert.engine.components import Batch, EncodedExamples, Features
from mtbert.engine.data import (
    BUCKET_WINDOW,
    SplitData,
    TaskData,
    TaskStream,
    eval_batches,
    label_dtype,
    load_split,
    resolve_file,
    sample_rows,
)
from mtbert.engine.gradients import SharedGradients
from mtbert.engine.heads import (
    TaskHeadModule,
    check_class_weights,
    input_width,
    masked_mean,
    pair_features,
    pool,
    pooled_input,
)
from mtbert.engine.progress import Progress
from mtbert.engine.sampling import SeededSampler
from mtbert.engine.seeding import derive_seed
from mtbert.engine.trainer import build_optimizer, lr_lambda
from mtbert.errors import CheckpointError, DataError
from mtbert.recipe import OptimSection, TaskSection
from mtbert_plugins.combiner_basic import Sum
from mtbert_plugins.head_linear import LinearHead
from mtbert_plugins.input_concat_pair import ConcatPair
from mtbert_plugins.inputs import SeparatePair, SingleSentence
from mtbert_plugins.sampler_round_robin import RoundRobin, RoundRobinSampler
from mtbert_plugins.tasks_cs224n import PARA, SST, STS
from mtbert_plugins.transform_clip_norm import ClipNorm

TASK_ORDER = ["sst", "para", "sts"]
BATCHES = {"sst": 12, "para": 30, "sts": 5}


# =========================================================================== samplers
def test_round_robin_one_task_cycles_recipe_order_min_batches_each():
    sampler = RoundRobin().build(dict(BATCHES), seed=3, epochs=3)
    assert sampler.step_mode == "one-task"
    assert sampler.batches_per_epoch() == {"sst": 5, "para": 5, "sts": 5}
    plan = sampler.epoch(0)
    assert plan == [(t,) for _ in range(5) for t in TASK_ORDER]
    assert sampler.steps_per_epoch() == len(plan) == 15
    # Every epoch is the same fixed cycle without shuffle_order.
    assert sampler.epoch(1) == plan


def test_round_robin_all_tasks_mode_yields_every_task_per_step():
    sampler = RoundRobin(step="all-tasks").build(dict(BATCHES), seed=3, epochs=3)
    plan = sampler.epoch(0)
    assert plan == [("sst", "para", "sts")] * 5
    assert sampler.steps_per_epoch() == len(plan) == 5


def test_round_robin_shuffle_order_permutes_each_round_keeping_counts():
    sampler = RoundRobin(shuffle_order=True).build(dict(BATCHES), seed=11, epochs=3)
    plan = sampler.epoch(0)
    assert len(plan) == sampler.steps_per_epoch() == 15
    assert Counter(step for step in plan) == {("sst",): 5, ("para",): 5, ("sts",): 5}
    rounds = [[s[0] for s in plan[i:i + 3]] for i in range(0, 15, 3)]
    assert all(sorted(r) == sorted(TASK_ORDER) for r in rounds)  # each round: every task once
    assert any(r != TASK_ORDER for r in rounds)  # the order really is shuffled
    assert plan != sampler.epoch(1)  # the generator moved on: the next epoch differs


def test_round_robin_same_seed_same_plan_and_different_seed_differs():
    plans = [RoundRobin(shuffle_order=True).build(dict(BATCHES), seed=s, epochs=3).epoch(0) for s in (5, 5, 6)]
    assert plans[0] == plans[1]
    assert plans[0] != plans[2]


def test_round_robin_state_dict_round_trip_continues_identically():
    a = RoundRobin(shuffle_order=True).build(dict(BATCHES), seed=21, epochs=3)
    a.epoch(0)
    state = a.state_dict()
    # through the checkpoint serialisation as the engine stores it
    skeleton, tensors = split_tensors(state)
    restored = join_tensors(json.loads(json.dumps(skeleton)), tensors)
    expected = [a.epoch(1), a.epoch(2)]
    b = RoundRobin(shuffle_order=True).build(dict(BATCHES), seed=999, epochs=3)
    b.load_state_dict(restored)
    assert [b.epoch(1), b.epoch(2)] == expected


def test_round_robin_single_task_and_empty():
    sampler = RoundRobin().build({"sst": 4}, seed=0, epochs=3)
    assert sampler.epoch(0) == [("sst",)] * 4
    with pytest.raises(ValueError):
        RoundRobin().build({}, seed=0, epochs=3)


def test_round_robin_is_a_seeded_sampler_with_its_options():
    sampler = RoundRobin(step="all-tasks", shuffle_order=True).build({"a": 2, "b": 3}, seed=1, epochs=3)
    assert isinstance(sampler, RoundRobinSampler) and isinstance(sampler, SeededSampler)
    assert sampler.tasks == ["a", "b"] and sampler.shuffle_order is True
    assert sampler.step_mode == "all-tasks"


class _AllBatchesSampler(SeededSampler):
    """Every task's full batch count per epoch, via the base class helpers."""

    def batches_per_epoch(self):
        return dict(self.batches)

    def epoch(self, index):
        counts = self.batches_per_epoch()
        if self.step_mode == "all-tasks":
            return self.interleave_all_tasks(counts)
        return self.shuffled_steps(counts)


def test_seeded_sampler_helpers_keep_counts_and_are_seeded():
    one = _AllBatchesSampler({"a": 3, "b": 7, "c": 1}, seed=4, step_mode="one-task")
    plan = one.epoch(0)
    assert Counter(plan) == {("a",): 3, ("b",): 7, ("c",): 1}
    assert one.steps_per_epoch() == 11
    assert plan == _AllBatchesSampler({"a": 3, "b": 7, "c": 1}, seed=4, step_mode="one-task").epoch(0)
    assert plan != [("a",)] * 3 + [("b",)] * 7 + [("c",)]
    every = _AllBatchesSampler({"a": 3, "b": 7, "c": 1}, seed=4, step_mode="all-tasks")
    assert every.epoch(0) == [("a", "b", "c")] * 7
    assert every.steps_per_epoch() == 7


def test_seeded_sampler_permutation_is_a_permutation():
    s = _AllBatchesSampler({"a": 1}, seed=9, step_mode="one-task")
    p = s.permutation(50)
    assert sorted(p) == list(range(50)) and p != list(range(50))


# =========================================================================== data
def _load(task_name, spec, input_format, data_dir, tokenizer, limit=None, split="train", max_length=128):
    task = TaskData(name=task_name, spec=spec, input_format=input_format,
                    input_format_name="single" if isinstance(input_format, SingleSentence) else "separate-pair")
    load_split(task, split, data_dir / spec.files[split], "data.dir", tokenizer=tokenizer, max_length=max_length,
               strict=False, limit=limit, warn=lambda m: None, slice_seed=0)
    return task


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    from mtbert.model.tokenizer import BertTokenizer

    return BertTokenizer.from_folder(minilm_dir)


@pytest.fixture(scope="session")
def sst_full(data_dir, tokenizer):
    return _load("sst", SST, SingleSentence(), data_dir, tokenizer)


@pytest.fixture(scope="session")
def sts_full(data_dir, tokenizer):
    return _load("sts", STS, SeparatePair(), data_dir, tokenizer)


@pytest.fixture(scope="session")
def sst_small(data_dir, tokenizer):
    return _load("sst", SST, SingleSentence(), data_dir, tokenizer, limit=1003)


@pytest.fixture(scope="session")
def sts_small(data_dir, tokenizer):
    return _load("sts", STS, SeparatePair(), data_dir, tokenizer, limit=501)


def test_load_split_limit_takes_a_sample_and_encodes_every_example(sst_small, sst_full):
    small = sst_small.splits["train"]
    assert len(small.examples) == len(small.encoded) == 1003
    assert small.total_rows == 8544 and small.skipped == 0
    full_ids = [e.id for e in sst_full.splits["train"].examples]
    positions = [full_ids.index(e.id) for e in small.examples]
    assert positions == sorted(positions)  # file order kept
    assert positions[-1] > 1003  # not the first rows
    # each encoding starts with [CLS] and ends with [SEP]
    seqs = small.encoded.sequences[0]
    assert all(s[0] == seqs[0][0] and s[-1] == seqs[0][-1] for s in seqs)


def test_load_split_missing_file_is_a_data_error(tmp_path, tokenizer):
    task = TaskData(name="sst", spec=SST, input_format=SingleSentence(), input_format_name="single")
    with pytest.raises(DataError, match="tasks.sst.train_file"):
        load_split(task, "train", tmp_path / "nope.csv", "tasks.sst.train_file", tokenizer=tokenizer,
                   max_length=32, strict=False, limit=None, warn=lambda m: None)


def _stream_pass(stream: TaskStream) -> list[Batch]:
    return [stream.next_batch() for _ in range(len(stream))]


@pytest.mark.parametrize("bucket", [False, True])
def test_task_stream_one_pass_covers_every_example_once(sst_small, bucket):
    stream = TaskStream(sst_small, batch_size=16, seed=1, bucket=bucket)
    n = len(sst_small.splits["train"].encoded)
    assert len(stream) == math.ceil(n / 16) == 63
    batches = _stream_pass(stream)
    ids = [i for b in batches for i in b.ids]
    assert len(ids) == n and set(ids) == set(sst_small.splits["train"].encoded.ids)
    assert sorted(len(b) for b in batches) == [n % 16] + [16] * (len(batches) - 1)
    assert stream.passes == 1 and stream.position == len(stream)
    # the next pass is a new shuffle of all examples again
    second = _stream_pass(stream)
    assert stream.passes == 2
    assert Counter(i for b in second for i in b.ids) == Counter(ids)
    assert [b.ids for b in second] != [b.ids for b in batches]


def test_task_stream_batches_are_labelled_and_padded(sst_small, sts_small):
    sst_batch = TaskStream(sst_small, batch_size=8, seed=0, bucket=False).next_batch()
    assert sst_batch.task == "sst" and sst_batch.labels.dtype == torch.long
    assert set(sst_batch.inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    encoded = sst_small.splits["train"].encoded
    idx = {e: i for i, e in enumerate(encoded.ids)}
    lengths = encoded.lengths()
    assert sst_batch.inputs["input_ids"].shape == (8, max(lengths[idx[i]] for i in sst_batch.ids))
    assert sst_batch.inputs["attention_mask"].sum(1).tolist() == [lengths[idx[i]] for i in sst_batch.ids]
    assert sst_batch.labels.tolist() == [encoded.labels[idx[i]] for i in sst_batch.ids]

    sts_batch = TaskStream(sts_small, batch_size=8, seed=0, bucket=True).next_batch()
    assert sts_batch.labels.dtype == torch.float32
    assert set(sts_batch.inputs) == {f"{k}_{s}" for k in ("input_ids", "attention_mask", "token_type_ids") for s in (1, 2)}
    assert label_dtype(SST) == torch.long and label_dtype(STS) == torch.float32 and label_dtype(PARA) == torch.float32


@pytest.mark.parametrize("fixture", ["sst_small", "sts_small"])
def test_task_stream_bucketed_batches_are_sorted_windows(request, fixture):
    task = request.getfixturevalue(fixture)
    stream = TaskStream(task, batch_size=8, seed=2, bucket=True)
    stream.next_batch()
    lengths = stream.lengths
    for batch in stream.batches:
        assert [lengths[i] for i in batch] == sorted(lengths[i] for i in batch)
    flat = sorted(i for b in stream.batches for i in b)
    assert flat == list(range(len(task.splits["train"].encoded)))


def _padding(stream: TaskStream) -> int:
    lengths = stream.lengths
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in stream.batches)


@pytest.mark.parametrize("fixture", ["sst_full", "sts_full"])
def test_bucketing_reduces_padding_on_real_lengths(request, fixture):
    task = request.getfixturevalue(fixture)
    plain = TaskStream(task, batch_size=16, seed=7, bucket=False)
    bucketed = TaskStream(task, batch_size=16, seed=7, bucket=True)
    plain.next_batch()
    bucketed.next_batch()
    assert len(plain.batches) == len(bucketed.batches) == len(plain)
    # bucketing by windows of BUCKET_WINDOW batches must at least halve the padding on these files
    assert BUCKET_WINDOW > 1
    assert _padding(bucketed) < 0.5 * _padding(plain)


@pytest.mark.parametrize("bucket", [False, True])
def test_task_stream_state_dict_mid_pass_continues_identically(sts_small, bucket):
    a = TaskStream(sts_small, batch_size=16, seed=5, bucket=bucket)
    for _ in range(10):
        a.next_batch()
    skeleton, tensors = split_tensors(a.state_dict())
    state = join_tensors(json.loads(json.dumps(skeleton)), tensors)
    expected = [a.next_batch() for _ in range(len(a) + 7)]  # rest of the pass and into the next
    b = TaskStream(sts_small, batch_size=16, seed=12345, bucket=bucket)
    b.load_state_dict(state)
    assert b.position == 10 and b.passes == 1
    got = [b.next_batch() for _ in range(len(b) + 7)]
    assert [x.ids for x in got] == [x.ids for x in expected]
    assert all(torch.equal(x.inputs["input_ids_1"], y.inputs["input_ids_1"]) for x, y in zip(got, expected))
    assert b.passes == a.passes == 2


def test_task_stream_fresh_state_round_trip(sst_small):
    fresh = TaskStream(sst_small, batch_size=16, seed=5, bucket=True)
    other = TaskStream(sst_small, batch_size=16, seed=6, bucket=True)
    other.load_state_dict(fresh.state_dict())
    assert other.next_batch().ids == fresh.next_batch().ids


def test_task_stream_seeds(sst_small):
    def first(seed):
        return TaskStream(sst_small, batch_size=16, seed=seed, bucket=True).next_batch().ids

    assert first(1) == first(1)
    assert first(1) != first(2)


def _examples(n):
    from mtbert.data.readers import Example

    return [Example(id=f"e{i}", texts=(f"t{i}",), label=i % 5, line=i + 2) for i in range(n)]


def test_sample_rows_keeps_file_order_is_deterministic_and_complete():
    rows = _examples(100)
    chosen = sample_rows(rows, 30, seed=4)
    assert len(chosen) == 30 and len(set(e.id for e in chosen)) == 30
    positions = [rows.index(e) for e in chosen]
    assert positions == sorted(positions)
    assert chosen != rows[:30]
    assert sample_rows(rows, 30, seed=4) == chosen
    assert sample_rows(rows, 30, seed=5) != chosen
    assert sample_rows(rows, 100, seed=4) == rows
    assert sample_rows(rows, 1000, seed=4) == rows
    assert sample_rows(rows, None, seed=4) == rows
    # a smaller limit with the same seed is not required to nest, but must stay within rows
    assert set(e.id for e in sample_rows(rows, 10, seed=4)) <= {e.id for e in rows}


def test_eval_batches_cover_all_indices_sorted_by_length():
    seqs = [[1] * n for n in (5, 2, 9, 2, 7, 1, 3, 3, 8, 4, 6)]
    encoded = EncodedExamples(ids=[str(i) for i in range(len(seqs))], sequences=[seqs], type_ids=[None],
                              labels=[0] * len(seqs))
    batches = eval_batches(encoded, 4)
    assert [len(b) for b in batches] == [4, 4, 3]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(seqs)))
    lengths = [len(seqs[i]) for i in flat]
    assert lengths == sorted(lengths)
    assert eval_batches(EncodedExamples(ids=[], sequences=[[]], type_ids=[None], labels=[]), 4) == []


def test_eval_batches_on_real_pairs_use_the_longer_sentence(sts_small):
    encoded = sts_small.splits["train"].encoded
    lengths = [max(len(a), len(b)) for a, b in zip(*encoded.sequences)]
    assert encoded.lengths() == lengths
    batches = eval_batches(encoded, 32)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(encoded)))
    assert [lengths[i] for i in flat] == sorted(lengths)


def test_resolve_file(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    section = TaskSection()
    assert resolve_file(data, "sst", section, SST, "train") == (data / "ids-sst-train.csv", "data.dir")
    section = TaskSection(dev_file=str(tmp_path / "abs.csv"))
    assert resolve_file(data, "sst", section, SST, "dev") == (tmp_path / "abs.csv", "tasks.sst.dev_file")
    # relative: the working folder first, then data.dir
    monkeypatch.chdir(tmp_path)
    section = TaskSection(train_file="mine.csv")
    assert resolve_file(data, "sst", section, SST, "train") == (data / "mine.csv", "tasks.sst.train_file")
    (tmp_path / "mine.csv").write_text("x")
    assert resolve_file(data, "sst", section, SST, "train") == (Path("mine.csv"), "tasks.sst.train_file")
    # a task without a default file for the split
    no_test = type("Spec", (), {"files": {"train": "t.csv"}})()
    assert resolve_file(data, "x", TaskSection(), no_test, "test") == (None, "tasks.x.test_file")


# =========================================================================== checkpoints
def test_split_join_round_trip_nested_with_int_keys():
    state = {
        "epoch": 3, "best": None, "ok": True, "lr": 1e-5, "name": "sts",
        "plan": [["sst"], ["para", "sts"]],
        "per_param": {0: {"step": torch.tensor(2.0), "m": torch.randn(2, 3)}, 7: {"m": torch.arange(4)}},
        "rngs": [torch.Generator().manual_seed(1).get_state(), torch.zeros(0)],
        "deep": {"a": {"b": [{"c": torch.ones(1, dtype=torch.bfloat16)}]}},
        "empty": {}, "nan": float("inf"),
    }
    skeleton, tensors = split_tensors(state)
    text = json.dumps(skeleton)  # the skeleton is JSON
    assert all(isinstance(t, torch.Tensor) for t in tensors.values()) and len(tensors) == 6
    back = join_tensors(json.loads(text), tensors)
    assert set(back) == set(state)
    assert back["per_param"].keys() == {0, 7}
    assert torch.equal(back["per_param"][0]["m"], state["per_param"][0]["m"])
    assert back["per_param"][0]["step"].shape == () and back["per_param"][0]["step"].item() == 2.0
    assert torch.equal(back["rngs"][0], state["rngs"][0]) and back["rngs"][1].numel() == 0
    assert back["deep"]["a"]["b"][0]["c"].dtype == torch.bfloat16
    assert back["plan"] == state["plan"] and back["empty"] == {} and back["nan"] == math.inf
    assert {k: back[k] for k in ("epoch", "best", "ok", "lr", "name")} == {
        "epoch": 3, "best": None, "ok": True, "lr": 1e-5, "name": "sts"}


def test_split_tensors_copies_tensors_to_cpu_contiguous():
    t = torch.arange(6.0).reshape(2, 3).t()
    _, tensors = split_tensors({"t": t})
    (stored,) = tensors.values()
    assert stored.is_contiguous() and torch.equal(stored, t)
    t.add_(1)  # later changes to the live tensor do not leak into the checkpoint
    assert not torch.equal(stored, t)


@pytest.mark.parametrize("bad", [object(), {1, 2}, b"bytes", Path("x")])
def test_split_tensors_rejects_unsupported_types(bad):
    with pytest.raises(TypeError, match="cannot checkpoint"):
        split_tensors({"ok": 1, "inner": [bad]})


def test_split_tensors_keys_with_dots_do_not_collide():
    state = {"a.b": torch.ones(2), "a": {"b": torch.zeros(2)}}
    skeleton, tensors = split_tensors(state)
    back = join_tensors(skeleton, tensors)
    assert torch.equal(back["a.b"], torch.ones(2))
    assert torch.equal(back["a"]["b"], torch.zeros(2))


def test_split_tensors_keeps_key_types_and_tag_like_user_keys():
    state = {1: "int", "1": "str", True: "bool", "__tensor__": "looks like a tag", "__dict__": [1]}
    skeleton, tensors = split_tensors(state)
    assert join_tensors(json.loads(json.dumps(skeleton)), tensors) == state


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))


def test_adamw_and_generator_state_survive_save_and_load_training_state(tmp_path):
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    model = _tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    gen = torch.Generator().manual_seed(77)
    torch.randn(3, generator=gen)
    folder = tmp_path / "checkpoints" / "last"
    save_training_state(folder, model.state_dict(), {"optimizer": opt.state_dict(), "gen": gen.get_state(), "epoch": 1})

    loaded = load_training_state(folder)
    assert loaded is not None
    model_state, state = loaded
    model2 = _tiny_model(seed=1)
    model2.load_state_dict(model_state)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(state["optimizer"])
    gen2 = torch.Generator().manual_seed(0)
    gen2.set_state(state["gen"])
    assert state["epoch"] == 1
    assert torch.equal(torch.randn(5, generator=gen2), torch.randn(5, generator=gen))
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        F.mse_loss(m(x), y).backward()
        o.step()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_save_training_state_replaces_existing_folder_and_leaves_no_temp(tmp_path):
    folder = tmp_path / "last"
    save_training_state(folder, {"w": torch.zeros(2)}, {"step": 1})
    (folder / "stale.txt").write_text("from the old state")
    save_training_state(folder, {"w": torch.ones(2)}, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "state.json", "state.safetensors"]
    model_state, state = load_training_state(folder)
    assert torch.equal(model_state["w"], torch.ones(2)) and state == {"step": 2}


def test_load_training_state_falls_back_to_old_and_none(tmp_path):
    folder = tmp_path / "last"
    assert load_training_state(folder) is None
    save_training_state(folder, {"w": torch.full((2,), 3.0)}, {"step": 3})
    os.replace(folder, tmp_path / "last.old")  # a crash between the two renames
    model_state, state = load_training_state(folder)
    assert state == {"step": 3} and torch.equal(model_state["w"], torch.full((2,), 3.0))
    # a main folder wins over .old
    save_training_state(folder, {"w": torch.zeros(2)}, {"step": 4})
    assert load_training_state(folder)[1] == {"step": 4}


def test_load_training_state_corrupt_is_checkpoint_error(tmp_path):
    folder = tmp_path / "last"
    save_training_state(folder, {"w": torch.zeros(2)}, {"step": 1})
    (folder / "state.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="unreadable training state"):
        load_training_state(folder)


def test_save_weights_atomic_with_metadata(tmp_path):
    path = tmp_path / "ck" / "best.safetensors"
    base = torch.randn(3, 4)
    state = {"enc.w": base, "tied": base, "t": base.t(), "i": torch.arange(3)}
    meta = {"epoch": 2, "metrics": {"mean": 0.61, "sst_acc": 0.5}, "tasks": ["sst", "sts"]}
    save_weights(path, state, meta)
    assert [p.name for p in path.parent.iterdir()] == ["best.safetensors"]
    loaded, got_meta = load_weights(path)
    assert got_meta == meta
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    save_weights(path, {"x": torch.zeros(1)})
    assert load_weights(path)[1] == {}


def test_save_weights_failure_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "best.safetensors"
    save_weights(path, {"x": torch.ones(2)}, {"epoch": 1})
    with pytest.raises(Exception):
        save_weights(path, {"x": "not a tensor"}, {"epoch": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]
    assert load_weights(path)[1] == {"epoch": 1}


def test_load_weights_missing_or_corrupt_is_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_weights(corrupt)
    truncated = tmp_path / "truncated.safetensors"
    save_weights(truncated, {"x": torch.randn(100)})
    truncated.write_bytes(truncated.read_bytes()[:-50])
    with pytest.raises(CheckpointError):
        load_weights(truncated)


def test_atomic_write_json(tmp_path):
    path = tmp_path / "a" / "best.json"
    atomic_write_json(path, {"x": [1, 2]})
    atomic_write_json(path, {"x": [3]})
    assert json.loads(path.read_text()) == {"x": [3]}
    assert [p.name for p in path.parent.iterdir()] == ["best.json"]


# =========================================================================== shared gradients
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))


def _cat_grads(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def test_shared_gradients_accumulate_into_the_flat_buffer():
    model = _mlp()
    grads = SharedGradients(list(model.parameters()), torch.device("cpu"))
    assert grads.numel == 3 * 5 + 5 + 5 * 2 + 2 == grads.buffer.numel()
    model(torch.randn(4, 3)).pow(2).sum().backward()
    assert grads._bound()  # autograd accumulated into the views
    assert torch.equal(grads.flat(), _cat_grads(model))
    assert grads.flat().abs().sum() > 0
    # a second backward accumulates
    before = grads.flat().clone()
    model(torch.randn(4, 3)).sum().backward()
    assert torch.allclose(grads.flat(), _cat_grads(model))
    assert not torch.equal(grads.flat(), before)


def test_shared_gradients_assign_and_zero_change_p_grad():
    model = _mlp()
    grads = SharedGradients(list(model.parameters()), torch.device("cpu"))
    model(torch.randn(2, 3)).sum().backward()
    vector = torch.arange(grads.numel, dtype=torch.float32)
    grads.assign(vector)
    assert torch.equal(_cat_grads(model), vector)
    assert torch.equal(model[0].weight.grad, vector[:15].view(5, 3))
    grads.zero()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    # assign also reaches a .grad that was replaced by a fresh tensor
    model[2].weight.grad = torch.ones_like(model[2].weight)
    grads.assign(-vector)
    assert torch.equal(_cat_grads(model), -vector)


def test_shared_gradients_rebind_after_set_to_none():
    model = _mlp()
    grads = SharedGradients(list(model.parameters()), torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    grads.rebind()
    assert grads._bound() and not grads.buffer.any()
    model(torch.randn(2, 3)).sum().backward()
    assert grads._bound()
    assert torch.equal(grads.flat(), _cat_grads(model))


def test_shared_gradients_flat_recovers_replaced_or_missing_grads():
    model = _mlp()
    grads = SharedGradients(list(model.parameters()), torch.device("cpu"))
    model(torch.randn(2, 3)).sum().backward()
    params = list(model.parameters())
    params[0].grad = torch.full_like(params[0], 3.0)  # a fresh tensor, not the view
    params[3].grad = None
    expected = torch.cat([params[0].grad.reshape(-1), params[1].grad.reshape(-1), params[2].grad.reshape(-1),
                          torch.zeros(2)])
    flat = grads.flat()
    assert torch.equal(flat, expected)
    assert params[0].grad.data_ptr() == grads.views[0].data_ptr()  # bound again
    # without rebind, a backward after set_to_none still gives correct values
    for p in params:
        p.grad = None
    model(torch.randn(2, 3)).sum().backward()
    assert torch.equal(grads.flat(), _cat_grads(model))


def test_shared_gradients_skip_frozen_parameters():
    model = _mlp()
    model[2].bias.requires_grad_(False)
    grads = SharedGradients(list(model.parameters()), torch.device("cpu"))
    assert grads.numel == 15 + 5 + 10
    assert model[2].bias.grad is None


# =========================================================================== schedules and optimizer
def test_lr_lambda_linear_warmup():
    f = lr_lambda("linear-warmup", total_steps=20, warmup_steps=4)
    assert [f(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)
    decay = [f(i) for i in range(4, 21)]
    assert decay == pytest.approx([1 - k / 16 for k in range(17)])
    assert f(20) == 0.0 and f(25) == 0.0
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_lr_lambda_without_warmup_and_constant():
    f = lr_lambda("linear-warmup", total_steps=10, warmup_steps=0)
    assert f(0) == 1.0 and f(5) == pytest.approx(0.5) and f(10) == 0.0
    c = lr_lambda("constant", total_steps=10, warmup_steps=3)
    assert [c(i) for i in range(12)] == [1.0] * 12
    cw = lr_lambda("constant-warmup", total_steps=10, warmup_steps=2)
    assert [cw(i) for i in range(6)] == pytest.approx([0.5, 1, 1, 1, 1, 1])
    assert cw(100) == 1.0


def test_lr_lambda_cosine_warmup():
    f = lr_lambda("cosine-warmup", total_steps=12, warmup_steps=4)
    assert [f(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # a quarter of the decay: 0.854
    assert f(8) == pytest.approx(0.5)
    assert f(10) == pytest.approx(0.5 * (1 + math.cos(3 * math.pi / 4)))
    assert f(12) == pytest.approx(0.0, abs=1e-12)
    values = [f(i) for i in range(4, 13)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_lr_lambda_drives_lambda_lr():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("linear-warmup", 4, 2))
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.2, 0.4, 0.4, 0.2])
    assert opt.param_groups[0]["lr"] == 0.0


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.embed_norm = nn.LayerNorm(4)
        self.dense = nn.Linear(4, 4)
        self.LayerNorm = nn.LayerNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.rms_norm_gain = nn.Parameter(torch.ones(1, 4))  # a 2-d normalisation scale: no decay


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = _Encoder()
        self.heads = nn.ModuleDict({"sst": nn.Linear(4, 5), "sts": nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 1))})


def _ids(params):
    return {id(p) for p in params}


@pytest.mark.parametrize("head_lr", [None, 1e-3])
def test_build_optimizer_groups(head_lr):
    model = _Model()
    extra = [nn.Parameter(torch.ones(3))]
    optim = OptimSection(lr=2e-5, head_lr=head_lr, weight_decay=0.05, betas=[0.8, 0.9], eps=1e-6)
    opt = build_optimizer(model, optim, extra, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["encoder", "encoder-no-decay", "heads", "heads-no-decay", "combiner"]
    enc = model.encoder
    assert _ids(groups["encoder"]["params"]) == _ids([enc.embed.weight, enc.dense.weight])
    assert _ids(groups["encoder-no-decay"]["params"]) == _ids(
        [enc.embed_norm.weight, enc.embed_norm.bias, enc.dense.bias, enc.LayerNorm.weight, enc.LayerNorm.bias,
         enc.rms_norm_gain])
    heads = model.heads
    assert _ids(groups["heads"]["params"]) == _ids([heads["sst"].weight, heads["sts"][1].weight])
    assert _ids(groups["heads-no-decay"]["params"]) == _ids(
        [heads["sst"].bias, heads["sts"][0].weight, heads["sts"][0].bias, heads["sts"][1].bias])
    assert _ids(groups["combiner"]["params"]) == _ids(extra)
    assert groups["encoder"]["weight_decay"] == 0.05 and groups["heads"]["weight_decay"] == 0.05
    assert all(groups[n]["weight_decay"] == 0.0 for n in ("encoder-no-decay", "heads-no-decay", "combiner"))
    expected_head_lr = head_lr or 2e-5
    assert groups["encoder"]["lr"] == groups["encoder-no-decay"]["lr"] == 2e-5
    assert groups["heads"]["lr"] == groups["heads-no-decay"]["lr"] == groups["combiner"]["lr"] == expected_head_lr
    assert all(tuple(g["betas"]) == (0.8, 0.9) and g["eps"] == 1e-6 for g in opt.param_groups)
    # no frozen parameter, and no parameter twice
    everything = [p for g in opt.param_groups for p in g["params"]]
    assert len(everything) == len(_ids(everything))
    assert _ids([enc.frozen.weight, enc.frozen.bias]).isdisjoint(_ids(everything))
    # and it steps
    model.heads["sst"](model.encoder.dense(model.encoder.embed(torch.tensor([1, 2])))).sum().backward()
    opt.step()


# =========================================================================== heads
def test_masked_mean_ignores_padding_exactly():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]], [[5.0, 5.0], [7.0, 9.0], [9.0, 1.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(masked_mean(hidden, mask), torch.tensor([[2.0, 3.0], [7.0, 5.0]]))
    # an all-padding row gives zeros, not NaN
    assert torch.equal(masked_mean(hidden[:1], torch.zeros(1, 3, dtype=torch.long)), torch.zeros(1, 2))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 3), real=st.integers(1, 6), pad=st.integers(1, 5), dim=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3),
)
def test_masked_mean_appending_padding_never_changes_it(rows, real, pad, dim, seed, scale):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, real, dim, generator=g) * scale
    lengths = torch.randint(1, real + 1, (rows,), generator=g)
    mask = (torch.arange(real)[None, :] < lengths[:, None]).long()
    padded_hidden = torch.cat([hidden, torch.randn(rows, pad, dim, generator=g) * 1e4], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(rows, pad, dtype=torch.long)], dim=1)
    base = masked_mean(hidden, mask)
    assert torch.allclose(masked_mean(padded_hidden, padded_mask), base, rtol=1e-5, atol=1e-6 * scale)
    expected = torch.stack([hidden[r, : lengths[r]].mean(0) for r in range(rows)])
    assert torch.allclose(base, expected, rtol=1e-5, atol=1e-6 * scale)


def _features(two: bool):
    torch.manual_seed(0)
    hidden = tuple(torch.randn(2, 3, 4) for _ in range(2 if two else 1))
    masks = tuple(torch.tensor([[1, 1, 0], [1, 1, 1]]) for _ in hidden)
    pooled = tuple(torch.randn(2, 4) for _ in hidden)
    return Features(hidden=hidden, masks=masks, pooled=pooled)


def test_pool_pair_features_and_pooled_input():
    f = _features(two=True)
    assert torch.equal(pool(f, 1, "pooler"), f.pooled[1])
    assert torch.equal(pool(f, 0, "cls"), f.hidden[0][:, 0])
    assert torch.equal(pool(f, 1, "mean"), masked_mean(f.hidden[1], f.masks[1]))
    with pytest.raises(ValueError):
        pool(f, 0, "max")
    u, v = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 5.0]])
    assert torch.equal(pair_features(u, v, ["u", "v", "abs-diff", "product"]),
                       torch.tensor([[1.0, -2.0, 3.0, 5.0, 2.0, 7.0, 3.0, -10.0]]))
    assert torch.equal(pair_features(u, v, ["product", "u"]), torch.tensor([[3.0, -10.0, 1.0, -2.0]]))
    assert torch.equal(pooled_input(f, "pooler", ["u", "v"]), torch.cat(f.pooled, dim=-1))
    assert torch.equal(pooled_input(_features(two=False), "cls", ["u", "v"]), _features(two=False).hidden[0][:, 0])
    assert input_width(4, 1, ["u", "v"]) == 4 and input_width(4, 2, ["u", "v", "product"]) == 12
    assert SeparatePair().num_sequences == 2 and SingleSentence().num_sequences == 1 and ConcatPair().num_sequences == 1


def test_head_loss_multiclass_matches_cross_entropy():
    head = TaskHeadModule(SST)
    assert head.out_features == 5
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 2])
    assert torch.allclose(head.loss(logits, labels), F.cross_entropy(logits, labels))
    weighted = TaskHeadModule(SST, class_weights=[1.0, 2.0, 0.5, 1.0, 3.0])
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    assert torch.allclose(weighted.loss(logits, labels), F.cross_entropy(logits, labels, weight=w))
    assert not torch.allclose(weighted.loss(logits, labels), head.loss(logits, labels))
    assert head.predict(logits).tolist() == logits.argmax(-1).tolist()
    # bf16 logits are upcast before the loss
    assert head.loss(logits.bfloat16(), labels).dtype == torch.float32


def test_head_loss_binary_matches_bce_with_logits():
    head = TaskHeadModule(PARA)
    assert head.out_features == 1
    logits, labels = torch.tensor([2.0, -1.0, 0.5, -3.0]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert torch.allclose(head.loss(logits, labels), F.binary_cross_entropy_with_logits(logits, labels))
    weighted = TaskHeadModule(PARA, class_weights=[1.0, 3.0])
    per = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    w = torch.tensor([3.0, 1.0, 1.0, 3.0])
    assert torch.allclose(weighted.loss(logits, labels), (per * w).sum() / w.sum())
    assert head.predict(logits).tolist() == [1, 0, 1, 0]
    assert head.predict(torch.tensor([0.0])).tolist() == [0]


def test_head_loss_regression_is_mse_and_predict_clamps():
    head = TaskHeadModule(STS)
    scores, labels = torch.tensor([0.5, 4.0, 6.0, -1.0]), torch.tensor([1.0, 4.5, 5.0, 0.0])
    assert torch.allclose(head.loss(scores, labels), F.mse_loss(scores, labels))
    assert head.predict(scores).tolist() == [0.5, 4.0, 5.0, 0.0]
    assert head.out_features == 1


def test_check_class_weights():
    assert check_class_weights(SST, None) is None
    assert check_class_weights(SST, [1.0] * 5) is None
    assert "5 numbers" in check_class_weights(SST, [1.0, 2.0])
    assert "positive" in check_class_weights(PARA, [1.0, 0.0])
    assert "classification" in check_class_weights(STS, [1.0])


def test_linear_head_widths_and_forward():
    hidden = 4
    single = LinearHead(pooling="pooler").build(hidden, SST, SingleSentence())
    assert single.linear.in_features == hidden and single.linear.out_features == 5
    pair = LinearHead(pooling="pooler", pair=["u", "v"]).build(hidden, STS, SeparatePair())
    assert pair.linear.in_features == 2 * hidden and pair.linear.out_features == 1
    sbert = LinearHead().build(hidden, PARA, SeparatePair())  # the default: all four views
    assert sbert.linear.in_features == 4 * hidden
    concat = LinearHead(pair=["u", "v", "abs-diff", "product"]).build(hidden, PARA, ConcatPair())
    assert concat.linear.in_features == hidden
    for head in (single, pair, sbert):
        head.eval()
    f1, f2 = _features(two=False), _features(two=True)
    out = single(f1)
    assert out.shape == (2, 5)
    assert torch.allclose(out, single.linear(f1.pooled[0]))
    assert pair(f2).shape == (2,)
    assert torch.allclose(pair(f2), pair.linear(torch.cat(f2.pooled, -1)).squeeze(-1))
    mean_head = LinearHead(pooling="mean", pair=["u", "v", "abs-diff", "product"]).build(hidden, PARA, SeparatePair()).eval()
    u, v = masked_mean(f2.hidden[0], f2.masks[0]), masked_mean(f2.hidden[1], f2.masks[1])
    expected = mean_head.linear(torch.cat([u, v, (u - v).abs(), u * v], -1)).squeeze(-1)
    assert torch.allclose(mean_head(f2), expected)
    assert LinearHead(pair=[]).check(SST, SingleSentence()) is not None
    assert LinearHead(class_weights=[1.0, 1.0]).check(SST, SingleSentence()) is not None
    assert LinearHead().check(SST, SingleSentence()) is None


def test_input_formats_encode_and_check(tokenizer):
    from mtbert.data.readers import Example

    ex = [Example(id="a", texts=("A good film.", "Nice movie."), label=3.5, line=2),
          Example(id="b", texts=("Bad.", "A truly terrible film indeed."), label=0.0, line=3)]
    pair = SeparatePair().encode_examples(tokenizer, ex, max_length=6)
    assert pair.ids == ["a", "b"] and pair.labels == [3.5, 0.0] and len(pair.sequences) == 2
    assert all(len(s) <= 6 for slot in pair.sequences for s in slot)
    assert pair.sequences[0][0] == tokenizer.encode(["A good film."], max_length=6)[0]
    batch = SeparatePair().collate(pair, [1, 0], "sts", torch.float32)
    assert batch.ids == ["b", "a"] and batch.labels.tolist() == [0.0, 3.5]
    assert batch.inputs["attention_mask_2"].sum(1).tolist() == [len(pair.sequences[1][1]), len(pair.sequences[1][0])]
    single = SingleSentence().encode_examples(tokenizer, [Example(id="x", texts=("hi",), label=None, line=2)], 16)
    assert SingleSentence().collate(single, [0], "sst", torch.long).labels is None
    assert SingleSentence().check(SST) is None and SingleSentence().check(STS) is not None
    assert SeparatePair().check(STS) is None and SeparatePair().check(SST) is not None


# =========================================================================== combiner and clipping
def test_sum_combiner():
    combiner = Sum().build(["sst", "sts"], None)
    losses = {"sst": torch.tensor(1.5, requires_grad=True), "sts": torch.tensor(0.25)}
    combined = combiner.combine(losses)
    assert combined.weights == {"sst": 1.0, "sts": 1.0}
    assert combined.weighted["sst"] is losses["sst"]
    assert combined.total.item() == 1.75
    combined.total.backward()
    assert losses["sst"].grad.item() == 1.0
    assert combiner.combine({"sts": torch.tensor(2.0)}).total.item() == 2.0
    assert combiner.state_dict() == {}
    combiner.load_state_dict({})
    combiner.after_step()


def _params_with_grads(values):
    params = []
    for v in values:
        p = nn.Parameter(torch.zeros(len(v)))
        p.grad = torch.tensor(v)
        params.append(p)
    return params


def test_clip_norm_clips_to_max_norm():
    params = _params_with_grads([[3.0, 0.0], [0.0, 4.0]])  # global norm 5
    state = ClipNorm(max_norm=1.0).build(params[:1])
    assert state.needs == "parameters"
    state.apply(params, tasks=["sst"])
    total = torch.cat([p.grad for p in params]).norm()
    assert total.item() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(params[0].grad, torch.tensor([0.6, 0.0]), atol=1e-6)
    assert torch.allclose(params[1].grad, torch.tensor([0.0, 0.8]), atol=1e-6)
    assert state.logs() == {"grad_norm": pytest.approx(5.0), "clipped": 1.0}


def test_clip_norm_below_bound_is_untouched_and_shared_scope():
    params = _params_with_grads([[0.3, 0.0], [0.0, 0.4]])
    state = ClipNorm(max_norm=1.0).build(params)
    state.apply(params, tasks=[])
    assert params[0].grad.tolist() == pytest.approx([0.3, 0.0]) and params[1].grad.tolist() == pytest.approx([0.0, 0.4])
    assert state.logs() == {"grad_norm": pytest.approx(0.5), "clipped": 0.0}

    params = _params_with_grads([[3.0, 4.0], [30.0, 40.0]])
    shared_only = ClipNorm(max_norm=1.0, scope="shared").build(params[:1])
    shared_only.apply(params, tasks=[])
    assert params[0].grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert params[1].grad.tolist() == [30.0, 40.0]  # head gradients untouched
    assert shared_only.logs()["grad_norm"] == pytest.approx(5.0)

    inf = _params_with_grads([[3.0, -7.0]])
    state = ClipNorm(max_norm=2.0, norm_type=math.inf).build(inf)
    state.apply(inf, tasks=[])
    assert inf[0].grad.abs().max().item() == pytest.approx(2.0, rel=1e-5)
    assert state.last_norm == pytest.approx(7.0)


# =========================================================================== seeds and progress
def test_derive_seed_is_stable_and_separates_streams():
    p = 1_000_003
    m = 2**63 - 1
    assert derive_seed(42) == 42
    assert derive_seed(1, "a") == ((1 * p + ord("a")) * p + 7) % m
    assert derive_seed(11711, "stream", 0, "sst") == derive_seed(11711, "stream", 0, "sst")
    seeds = {derive_seed(11711, "stream", 0, t) for t in ("sst", "para", "sts")}
    seeds |= {derive_seed(11711, "sampler", 0), derive_seed(11711, "stream", 1, "sst"), derive_seed(11712, "stream", 0, "sst")}
    assert len(seeds) == 6
    assert derive_seed(5, "ab") != derive_seed(5, "a", "b")  # parts are separated
    assert derive_seed(5, 1) == derive_seed(5, "1")
    big = derive_seed(2**62, "x" * 100)
    assert 0 <= big < m
    torch.Generator().manual_seed(big)  # always a valid torch seed


def test_progress_prints_every_tenth_off_terminal():
    out = io.StringIO()
    bar = Progress(100, "train", stream=out)
    for _ in range(100):
        bar.update(1, loss=0.123456)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    assert [line.split("| ")[1].split(" ")[0] for line in lines] == [f"{k}/100" for k in range(10, 101, 10)]
    assert lines[-1].startswith("train: 100%|") and "loss=0.1235" in lines[-1]


def test_progress_disabled_and_resumed_and_tty():
    out = io.StringIO()
    bar = Progress(10, "x", stream=out, enabled=False)
    bar.update(3, loss=1.0)
    bar.close()
    assert out.getvalue() == "" and bar.count == 3

    out = io.StringIO()
    bar = Progress(10, "x", stream=out, start=6)
    bar.update(1)
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]]
    assert " 7/10 " in out.getvalue()
    assert Progress(0, "empty", stream=io.StringIO()).total == 1

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    bar = Progress(3, "t", stream=tty)
    for _ in range(3):
        bar.update(1)
    bar.close()
    text = tty.getvalue()
    assert "\r" in text and text.endswith("\n") and "3/3" in text


def test_build_optimizer_state_resumes_identically_through_training_state(tmp_path):
    """The engine's own optimizer (fused AdamW on the CPU) and schedule, saved and restored mid-run."""
    optim = OptimSection(lr=1e-2, head_lr=5e-2, weight_decay=0.1)
    tokens = torch.tensor([1, 4, 7, 2])

    def make(seed):
        torch.manual_seed(seed)
        model = _Model()
        opt = build_optimizer(model, optim, [], torch.device("cpu"))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("linear-warmup", 10, 2))
        return model, opt, sched

    def step(model, opt, sched):
        opt.zero_grad(set_to_none=True)
        enc = model.encoder
        h = enc.LayerNorm(enc.dense(enc.embed_norm(enc.embed(tokens))) * enc.rms_norm_gain)
        model.heads["sst"](h).logsumexp(-1).sum().backward()
        opt.step()
        sched.step()

    model, opt, sched = make(0)
    for _ in range(3):
        step(model, opt, sched)
    save_training_state(tmp_path / "last", model.state_dict(),
                        {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "cuda_rng": []})
    model2, opt2, sched2 = make(1)
    model_state, state = load_training_state(tmp_path / "last")
    model2.load_state_dict(model_state)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert state["cuda_rng"] == []
    for _ in range(3):
        step(model, opt, sched)
        step(model2, opt2, sched2)
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_regression_heads_start_at_the_middle_of_the_label_range():
    from mtbert_plugins.head_mlp import MLPHead
    from mtbert_plugins.head_pair_classifier import PairClassifierHead

    for head in (LinearHead().build(8, STS, SeparatePair()), MLPHead(hidden=[4]).build(8, STS, SeparatePair()),
                 PairClassifierHead().build(8, STS, SeparatePair())):
        layer = head.linear if hasattr(head, "linear") else head.mlp[-1]
        assert torch.all(layer.bias == 2.5)
    sst = LinearHead().build(8, SST, SingleSentence())
    assert not torch.all(sst.linear.bias == 2.5)  # classification heads keep the default init
