"""(c) One multitask optimizer step, three tasks, batch 16 each: plain sum vs PCGrad, GradNorm, SMART.

Each variant is a real run built the way ``mtbert run`` builds it (MiniLM-L6, linear heads,
SST single sentences, Quora and STS separate pairs, fused AdamW; bf16 autocast on CUDA) with
the round-robin sampler in ``all-tasks`` mode, so every step takes one batch of 16 real
examples from each task. Every variant steps on the *same* three batches (drawn once), and the
step is the trainer's own loop body (``_engine.one_step``: task losses, combiner, backward,
gradient transforms, optimizer).

* ``plain``: losses summed, one backward (the reference);
* ``pcgrad``: per-task backward passes into the flat ``[tasks, params]`` buffer, projection
  (Yu et al. 2020). **Target: <= 1.15x plain**;
* ``gradnorm``: GradNorm loss weights (Chen et al. 2018; alpha 1, last shared layer).
  **Target: <= 1.3x plain**;
* ``smart``: SMART smoothness regularizer with K = 1 ascent step (Jiang et al. 2020), its
  defaults. **Target: <= (2 + K)x = 3x plain** (one clean, K adversarial and one final forward).
  With the default ``dropout = "shared"`` the clean forward is the training forward too: its
  random state, captured by the trainer, is replayed for the adversarial and final passes;
* ``smart-independent``: the same with ``dropout = "independent"`` (the training forward is the
  clean one, fresh masks for the other passes), the same pass count. Same target.

Peak memory of a step (see _bench.py for how it is measured) goes beside each time.
"""

from __future__ import annotations

import gc

import pytest
import torch

import _engine
from _bench import measure

TASKS = ("sst", "para", "sts")
VARIANTS = {
    "plain": ({}, None, None),
    "pcgrad": ({"gradient_transforms": [{"name": "pcgrad"}]}, 1.15, "PCGrad <= 1.15x plain"),
    "gradnorm": ({"loss_combiner": {"name": "gradnorm", "alpha": 1.0}}, 1.3, "GradNorm <= 1.3x plain"),
    "smart": ({"regularizers": [{"name": "smart", "weight": 1.0, "steps": 1}]}, 3.0, "SMART (K=1) <= 3x plain"),
    "smart-independent": ({"regularizers": [{"name": "smart", "weight": 1.0, "steps": 1, "dropout": "independent"}]},
                          3.0, "SMART (K=1, independent dropout) <= 3x plain"),
}


def _table(data_dir, device: torch.device, extra: dict) -> dict:
    table = {
        "name": "benchmark-step",
        "seed": 11711,
        "model": {"checkpoint": "minilm-l6"},
        "data": {"dir": str(data_dir), "max_length": 128, "cache": False},
        "tasks": {name: {"head": "linear", "train_limit": 160, "dev_limit": 8, "test_limit": 8} for name in TASKS},
        "sampler": {"name": "round-robin", "step": "all-tasks"},
        "loss_combiner": {"name": "sum"},
        "optim": {"lr": 5e-5, "head_lr": 1e-3, "batch_size": 16, "epochs": 1},
        "train": {"device": device.type, "precision": "bf16" if device.type == "cuda" else "fp32",
                  "progress": False, "predict": False},
    }
    table.update(extra)
    return table


@pytest.fixture(scope="module")
def harness(plugins, data_dir, minilm_dir, tmp_path_factory):
    """Trainers by (device, variant), built on first use; the plain ones stay for the comparisons."""
    built: dict[tuple[str, str], object] = {}

    def get(device: torch.device, variant: str):
        key = (device.type, variant)
        if key not in built:
            for other in [k for k in built if k[1] != "plain" and k != key]:  # keep memory bounded
                _engine.release(built.pop(other))
            gc.collect()
            extra, _, _ = VARIANTS[variant]
            recipe = _engine.recipe_from(_table(data_dir, device, extra), plugins)
            trainer = _engine.build_trainer(recipe, plugins, tmp_path_factory.mktemp(f"{device.type}-{variant}"))
            plain = built.get((device.type, "plain"))
            if plain is None:
                trainer.frozen = _engine.freeze_batches(trainer)
            else:
                trainer.frozen = plain.frozen
                _engine.use_batches(trainer, plain.frozen)
            built[key] = trainer
        return built[key]

    yield get
    for trainer in built.values():
        _engine.release(trainer)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_multitask_step(benchmark, device, variant, harness):
    plain = harness(device, "plain")
    trainer = harness(device, variant)
    assert all(trainer.frozen[n] is plain.frozen[n] for n in TASKS)  # identical batches
    tokens = {n: int(b.inputs["attention_mask" if "attention_mask" in b.inputs else "attention_mask_1"].sum())
              for n, b in plain.frozen.items()}
    _, limit, target = VARIANTS[variant]

    def step(t=trainer):
        return lambda: _engine.one_step(t, TASKS)

    info = {"tasks": list(TASKS), "batch_per_task": 16, "variant": variant, "real_tokens_first_sequence": tokens}
    if variant == "plain":
        measure(benchmark, step(), device=device, memory=True, group="multitask-step", role="reference", info=info)
    else:
        measure(benchmark, step(), device=device, reference=step(plain), reference_name="plain sum (one backward)",
                target_max_ratio=limit, target=target, memory=True, group="multitask-step", info=info)
