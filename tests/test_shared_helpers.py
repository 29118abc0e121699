"""The helpers that hold knowledge once (CONTRIBUTING.md, "Where things live"): atomic writes and
file hashes, recipes as dotted keys, ``--set`` overrides, "is this folder resumable", the batch
planner, and ``MultitaskTrainer.step`` (what the loop and the benchmarks call)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from mtbert.engine.batches import pack_batches, plan_batches, unpack_batches
from mtbert.engine.run_records import find_resumable, is_resumable
from mtbert.files import atomic_path, atomic_write_json, file_sha1
from mtbert.recipe import NEUTRAL_KEYS, apply_overrides, changed_keys, flatten_recipe, override_key


# --------------------------------------------------------------------------- files
def test_atomic_path_replaces_the_file_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "sub" / "state.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise RuntimeError("crash while writing")
    assert target.read_text(encoding="utf-8") == '{\n  "a": 1\n}\n'  # untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]  # no temporary left
    with atomic_path(target, mode=0o644) as tmp:
        tmp.write_text("new", encoding="utf-8")
    assert target.read_text(encoding="utf-8") == "new" and (target.stat().st_mode & 0o777) == 0o644


def test_file_sha1_is_the_sha1_of_the_bytes(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"id\tsentence\n" * 100_000)
    assert file_sha1(path) == hashlib.sha1(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- recipes as keys
def test_flatten_recipe_indexes_lists_of_tables_and_keeps_other_lists():
    table = {"optim": {"lr": 1e-3, "betas": [0.9, 0.99]}, "tasks": {"sts": {"head": {"name": "cosine"}}},
             "gradient_transforms": [{"name": "pcgrad"}], "regularizers": []}
    assert flatten_recipe(table) == {"optim.lr": 1e-3, "optim.betas": [0.9, 0.99], "tasks.sts.head.name": "cosine",
                                     "gradient_transforms[0].name": "pcgrad", "regularizers": []}


def test_changed_keys_ignore_what_does_not_change_results():
    old = {"optim": {"lr": 1e-3}, "train": {"progress": True, "device": "cpu"}, "data": {"dir": "a"}}
    new = {"optim": {"lr": 2e-3}, "train": {"progress": False, "device": "cuda"}, "data": {"dir": "b"},
           "sampler": {"name": "loop"}}
    assert changed_keys(old, new) == ["optim.lr", "sampler.name"]
    assert {"train.progress", "train.device", "data.dir"} <= NEUTRAL_KEYS


def test_apply_overrides_in_order_and_override_key():
    table = {"tasks": {"sts": {"head": "linear"}}}
    apply_overrides(table, ["tasks.sts.head.pooling=cls", "optim.lr=3e-5", "optim.lr=4e-5"])
    assert table == {"tasks": {"sts": {"head": {"name": "linear", "pooling": "cls"}}}, "optim": {"lr": 4e-5}}
    assert override_key("tasks.sts.head.pooling=cls") == "tasks.sts.head.pooling"


# --------------------------------------------------------------------------- run folders
def test_is_resumable_and_find_resumable(tmp_path):
    runs = tmp_path / "runs"
    done, broken, open_ = runs / "r-1", runs / "r-2", runs / "r-3"
    for folder, status in ((done, "finished"), (broken, "failed"), (open_, "interrupted")):
        folder.mkdir(parents=True)
        atomic_write_json(folder / "run.json", {"status": status})
    for folder in (done, open_):
        (folder / "checkpoints" / "last").mkdir(parents=True)
        (folder / "checkpoints" / "last" / "state.json").write_text("{}", encoding="utf-8")
    assert is_resumable(done) and is_resumable(open_) and not is_resumable(broken)
    assert find_resumable("r", runs) == open_  # a finished run is not continued
    (broken / "checkpoints" / "last.old").mkdir(parents=True)  # killed between the two renames
    assert not is_resumable(broken)  # an empty folder is no saved state
    (broken / "checkpoints" / "last.old" / "state.json").write_text("{}", encoding="utf-8")
    assert is_resumable(broken)


# --------------------------------------------------------------------------- the batch planner
@pytest.mark.parametrize("bucket", [False, True])
def test_plan_batches_covers_every_example_once_and_packs_losslessly(bucket):
    lengths = [(i * 7) % 23 + 1 for i in range(101)]
    plan = plan_batches(lengths, 8, torch.Generator().manual_seed(3), bucket)
    assert sorted(i for batch in plan for i in batch) == list(range(101))
    assert [len(b) for b in plan].count(8) == 12
    assert plan == plan_batches(lengths, 8, torch.Generator().manual_seed(3), bucket)  # seeded
    assert unpack_batches(*pack_batches(plan)) == plan


# --------------------------------------------------------------------------- MultitaskTrainer.step
def test_trainer_step_steps_the_optimizer_once_per_accumulation(tmp_path):
    from mtbert.engine.context import RunContext
    from mtbert.engine.trainer import MultitaskTrainer
    from mtbert.recipe import validate
    from mtbert.testing import installed_plugins, one_thread, tiny_plugins, tiny_recipe_table

    plugins = tiny_plugins()
    table = tiny_recipe_table(optim={"lr": 1e-3, "epochs": 1, "batch_size": 4, "grad_accumulation": 2})
    with installed_plugins(plugins), one_thread():
        recipe = validate(table, plugins, source="tiny.toml")
        run = RunContext(recipe, plugins, Path(tmp_path), say=lambda m: None, warn=lambda m: None)
        run.build()
        trainer = MultitaskTrainer(run, 0, "multitask", list(recipe.tasks), 1, select_best=False)
        before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
        total, logs, stepped = trainer.step(("tiny_sentiment",))
        assert not stepped and run.global_step == 0 and "lr" not in logs and torch.isfinite(torch.tensor(total))
        assert all(torch.equal(before[n], p) for n, p in run.model.named_parameters())  # gradients only
        total, logs, stepped = trainer.step(("tiny_paraphrase",))
        assert stepped and run.global_step == 1 and "lr" in logs and "loss/tiny_paraphrase" in logs
        assert any(not torch.equal(before[n], p) for n, p in run.model.named_parameters())
        _, _, stepped = trainer.step(("tiny_similarity",), end_of_epoch=True)  # an epoch's last step always steps
        assert stepped and run.global_step == 2
