"""(g) Separately encoded pairs in training: both sentences in one encoder call against two calls.

``separate-pair`` (the default input of Quora and STS) stacks the two sentences of a training
batch into one encoder call of ``2B`` rows and splits the output; evaluation, under
``torch.inference_mode``, keeps one call per sentence (see ``plugins/inputs.py``). This
measures what the stacking buys where it is used: one optimizer step on a Quora batch and one
on an STS batch (batch 16, real rows, MiniLM-L6, linear heads, fused AdamW), the trainer's own
step (``_engine.one_step``), against the same steps with each sentence encoded in its own call
(``mtbert.api.encode_apart``, what every forward did before). Both sides step on the same
frozen batches, alternating within each round.

No target: a supporting figure for the epoch race and the multitask step (stacking halves the
kernel launches and the dense word-embedding gradients of a pair step).
"""

from __future__ import annotations

import pytest
import torch

import _engine
from _bench import measure


def _table(data_dir, device: torch.device) -> dict:
    return {
        "name": "benchmark-pairs",
        "seed": 11711,
        "model": {"checkpoint": "minilm-l6"},
        "data": {"dir": str(data_dir), "cache": False},
        "tasks": {name: {"head": "linear", "train_limit": 64, "dev_limit": 8, "test_limit": 8} for name in ("para", "sts")},
        "sampler": {"name": "round-robin"},
        "optim": {"lr": 5e-5, "head_lr": 1e-3, "batch_size": 16, "epochs": 1},
        "train": {"device": device.type, "precision": "auto", "progress": False, "predict": False},
    }


def test_pair_training_step_one_call_vs_two(benchmark, device, plugins, data_dir, minilm_dir, tmp_path, monkeypatch):
    from mtbert_plugins.inputs import SeparatePair

    trainer = _engine.build_trainer(_engine.recipe_from(_table(data_dir, device), plugins), plugins, tmp_path / "run")
    frozen = _engine.freeze_batches(trainer)
    stacked = SeparatePair.encode

    def two_calls(self, encoder, batch, inputs_embeds=None):
        from mtbert.api import encode_apart, sequence_inputs

        return encode_apart(encoder, sequence_inputs(batch.inputs, "_1"), sequence_inputs(batch.inputs, "_2"),
                            inputs_embeds)

    def steps(encode):
        def fn():
            monkeypatch.setattr(SeparatePair, "encode", encode)
            _engine.one_step(trainer, ("para",))
            _engine.one_step(trainer, ("sts",))
        return fn

    lengths = {name: [int(batch.inputs[f"input_ids_{side}"].shape[1]) for side in (1, 2)] for name, batch in frozen.items()}
    try:
        measure(benchmark, steps(stacked), device=device, reference=steps(two_calls),
                reference_name="each sentence in its own encoder call", group="pair-encoding",
                info={"steps": ["para", "sts"], "batch": 16, "padded_lengths": lengths})
    finally:
        monkeypatch.setattr(SeparatePair, "encode", stacked)
        _engine.release(trainer)
