"""(g) A whole training step in bf16 against fp32, where the hardware computes bf16 natively.

Two real runs of ``recipes/baseline.toml`` built the way ``mtbert run`` builds them, one with
``train.precision = "bf16"`` and one with ``"fp32"``, step through the same round-robin
batches of 16 (one task per sampler step, SST, Quora and STS in turn): the trainer's own step
(``_engine.one_step``: forward under autocast, heads and losses in fp32, backward, fused AdamW),
everything a training step costs beyond the encoder included. One round is three steps, one
per task.

**Target: bf16 >= 1.5x faster** (time ratio <= 0.667) on CPUs with AMX or AVX512-BF16 and on
CUDA devices with bf16; skipped with the reason elsewhere (``train.precision = "auto"`` keeps
fp32 there, because emulated bf16 is slower).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import _engine
from _bench import measure

REPO_ROOT = Path(__file__).resolve().parent.parent
TASKS = ("sst", "para", "sts")


def _trainer(plugins, data_dir, device, precision: str, folder: Path):
    overrides = [f'data.dir="{data_dir}"', "data.cache=false", f"train.device={device.type}",
                 f"train.precision={precision}", "train.progress=false", "train.predict=false"]
    for task in TASKS:
        overrides += [f"tasks.{task}.train_limit=160", f"tasks.{task}.dev_limit=8", f"tasks.{task}.test_limit=8"]
    recipe = _engine.recipe_file(REPO_ROOT / "recipes" / "baseline.toml", plugins, overrides)
    return _engine.build_trainer(recipe, plugins, folder)


def test_training_step_bf16_vs_fp32(benchmark, device, plugins, data_dir, minilm_dir, tmp_path):
    from mtbert.engine.device import resolve_precision

    chosen = resolve_precision("auto", device)
    if chosen.name != "bf16":
        pytest.skip(f"no native bf16 here ({chosen.reason}); auto keeps fp32")
    bf16 = _trainer(plugins, data_dir, device, "bf16", tmp_path / "bf16")
    fp32 = _trainer(plugins, data_dir, device, "fp32", tmp_path / "fp32")
    batches = _engine.freeze_batches(fp32)
    _engine.use_batches(bf16, batches)

    def steps(trainer):
        def fn():
            for task in TASKS:
                _engine.one_step(trainer, (task,))
        return fn

    measure(benchmark, steps(bf16), device=device, reference=steps(fp32), reference_name="the same steps in fp32",
            target_max_ratio=1 / 1.5, target="bf16 >= 1.5x faster (time ratio <= 0.667)", memory=True,
            group="step-precision", info={"batch_per_task": 16, "steps_per_round": len(TASKS),
                                          "reason": chosen.reason})
    _engine.release(bf16)
    _engine.release(fp32)
