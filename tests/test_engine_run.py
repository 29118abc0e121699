"""Engine behaviours on the tiny random BERT (fast): seeding, early stopping, modes, precision, logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtbert.engine.run import run_recipe
from mtbert.model.backbone import load_backbone
from mtbert.recipe import load_recipe
from conftest import random_tiny_recipe

LIMITS = {"train_limit": 64, "dev_limit": 48, "test_limit": 16}
TINY = "# Run: mtbert run recipes/x.toml\n" + random_tiny_recipe("tiny", 7, {"sst": LIMITS, "sts": LIMITS}, optim={"epochs": 2})


def quiet(_message: str) -> None:
    pass


def tiny_run(write_recipe, plugins, data_dir, out: Path, overrides=(), text=TINY):
    path = write_recipe(text, name="tiny.toml")
    recipe = load_recipe(path, [f"data.dir={json.dumps(str(data_dir))}", *overrides], plugins)
    return run_recipe(recipe, plugins, out=out, say=quiet, warn=quiet)


def test_same_recipe_and_seed_give_the_same_metrics(write_recipe, builtin_plugins, data_dir, minilm_dir, tmp_path):
    _, a = tiny_run(write_recipe, builtin_plugins, data_dir, tmp_path / "a")
    _, b = tiny_run(write_recipe, builtin_plugins, data_dir, tmp_path / "b")
    _, c = tiny_run(write_recipe, builtin_plugins, data_dir, tmp_path / "c", ["seed=8"])
    assert a == b
    assert a["last"]["dev"] != c["last"]["dev"]


def test_early_stopping_after_patience(write_recipe, builtin_plugins, data_dir, minilm_dir, tmp_path):
    # A learning rate too small to change any prediction: the first evaluation stays the best.
    folder, summary = tiny_run(write_recipe, builtin_plugins, data_dir, tmp_path / "run",
                               ["optim.lr=1e-12", "optim.head_lr=1e-12", "optim.epochs=6", "train.patience=2"])
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # epoch 1 (best), then 2 evaluations without improvement
    assert summary["best"]["epoch"] == 1 and summary["last"]["epoch"] == 3


def test_pretrain_mode_freezes_the_encoder(write_recipe, builtin_plugins, data_dir, minilm_dir, tmp_path):
    folder, _ = tiny_run(write_recipe, builtin_plugins, data_dir, tmp_path / "run", ["model.mode=pretrain"])
    initial = load_backbone("random:tiny", seed=7).encoder.state_dict()
    trained = load_file(str(folder / "checkpoints" / "best.safetensors"))
    for key, value in initial.items():
        assert torch.equal(trained[f"encoder.{key}"], value), key
    head_keys = [k for k in trained if k.startswith("heads.")]
    assert head_keys


def test_finetune_mode_changes_the_encoder(write_recipe, builtin_plugins, data_dir, minilm_dir, tmp_path):
    folder, _ = tiny_run(write_recipe, builtin_plugins, data_dir, tmp_path / "run")
    initial = load_backbone("random:tiny", seed=7).encoder.state_dict()
    trained = load_file(str(folder / "checkpoints" / "best.safetensors"))
    assert not torch.equal(trained["encoder.layers.0.attn.qkv.weight"], initial["layers.0.attn.qkv.weight"])


def test_dropout_setting_reaches_the_encoder(write_recipe, builtin_plugins, data_dir, minilm_dir, tmp_path):
    folder, _ = tiny_run(write_recipe, builtin_plugins, data_dir, tmp_path / "run",
                         ["model.hidden_dropout=0.3", "model.attention_dropout=0.2", "optim.epochs=1"])
    config = json.loads((folder / "checkpoints" / "encoder-config" / "config.json").read_text())
    assert config["hidden_dropout_prob"] == 0.3 and config["attention_probs_dropout_prob"] == 0.2


def test_bf16_autocast_trains_on_cpu(write_recipe, builtin_plugins, data_dir, minilm_dir, tmp_path):
    _, summary = tiny_run(write_recipe, builtin_plugins, data_dir, tmp_path / "run",
                          ["train.precision=bf16", "optim.epochs=1"])
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["last"]["dev"].values())


def test_gradient_accumulation_and_clip_norm_run(write_recipe, builtin_plugins, data_dir, minilm_dir, tmp_path):
    text = TINY + '\n[[gradient_transforms]]\nname = "clip-norm"\nmax_norm = 0.5\n'
    folder, summary = tiny_run(write_recipe, builtin_plugins, data_dir, tmp_path / "run",
                               ["optim.grad_accumulation=2", "optim.epochs=1"], text=text)
    # 64 rows / 16 = 4 batches per task, round-robin: 8 sampler steps -> 4 optimizer steps.
    assert summary["last"]["step"] == 4


def test_tensorboard_has_the_promised_scalars(write_recipe, builtin_plugins, data_dir, minilm_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, _ = tiny_run(write_recipe, builtin_plugins, data_dir, tmp_path / "run", ["train.log_every=1"])
    events = EventAccumulator(str(folder))  # the event files lie in the run folder itself
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss/sst", "train/loss/sts", "train/loss/total", "train/lr", "train/weight/sst",
            "dev/sst_acc", "dev/sts_pearson", "dev/mean"} <= tags
    dev = [e.value for e in events.Scalars("dev/mean")]
    lines = [json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines()]
    assert dev == pytest.approx([l["metrics"]["mean"] for l in lines])
    assert len(events.Scalars("train/lr")) == 16  # 2 epochs x 8 optimizer steps, log_every = 1
    # every evaluation line carries its epoch's training and evaluation time
    info = json.loads((folder / "run.json").read_text())
    assert all(l["train_seconds"] > 0 and l["eval_seconds"] > 0 for l in lines)
    assert sum(l["train_seconds"] for l in lines) <= info["train_seconds"]


def test_precision_auto_is_recorded_with_its_reason(write_recipe, builtin_plugins, data_dir, minilm_dir, tmp_path):
    from mtbert.engine.device import resolve_precision

    folder, _ = tiny_run(write_recipe, builtin_plugins, data_dir, tmp_path / "run", ["optim.epochs=1"])
    device = json.loads((folder / "run.json").read_text())["device"]
    expected = resolve_precision("auto", torch.device("cpu"))
    assert device["precision_requested"] == "auto"
    assert device["precision"] == expected.name and device["precision_reason"] == expected.reason


def test_run_json_counts_training_tokens_and_padding(write_recipe, builtin_plugins, data_dir, minilm_dir, tmp_path):
    records = {}
    for unpad in ("never", "always"):
        folder, _ = tiny_run(write_recipe, builtin_plugins, data_dir, tmp_path / unpad, ["optim.epochs=1", f"model.unpad={unpad}"])
        records[unpad] = json.loads((folder / "run.json").read_text())["tokens"]
    padded, packed = records["never"], records["always"]
    assert 0 < padded["real"] < padded["positions"] == padded["computed"]
    assert padded["padding_efficiency"] == padded["batch_fill"] == padded["real"] / padded["positions"]
    # Same batches either way; packed, the token-wise layers compute the real tokens only.
    assert packed["real"] == packed["computed"] == padded["real"] and packed["positions"] == padded["positions"]
    assert packed["padding_efficiency"] == 1.0
