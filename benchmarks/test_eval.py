"""(f) Evaluation of the three full dev sets: mtbert's defaults against the path it took before.

Both evaluate the same MiniLM weights of ``recipes/baseline.toml`` (untrained heads: the time
does not depend on them) on the full dev sets (SST 1,101 sentences, Quora 2,999 pairs, STS
863 pairs; about 8,800 encoded sequences) with :func:`mtbert.engine.evaluate.evaluate`,
length-sorted batches under ``torch.inference_mode``:

* reference, the path before issue 16: fp32, batches of 128, every position of a padded
  batch computed (``model.unpad = "never"``);
* candidate, the defaults: ``train.precision = "auto"`` (bf16 where the hardware computes it
  natively), ``data.eval_batch_size`` and ``model.unpad = "auto"`` (token-wise layers on real
  tokens only, which matters for pairs: each sentence of a pair batch is padded to the
  longest of its side).

**Target: >= 1.5x faster** (time ratio <= 0.667). Both give the same predictions in fp32 (checked
first). ``MTBERT_EVAL_ROWS=N`` cuts each dev set to N rows for a quick look.
"""

from __future__ import annotations

import os
from pathlib import Path

import _engine
from _bench import measure

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_eval_defaults_vs_before(benchmark, device, plugins, data_dir, minilm_dir, tmp_path):
    from mtbert.engine.device import resolve_precision
    from mtbert.engine.evaluate import evaluate

    rows = os.environ.get("MTBERT_EVAL_ROWS")
    overrides = [f'data.dir="{data_dir}"', "data.cache=false", f"train.device={device.type}", "train.progress=false",
                 "train.predict=false"]
    for task in ("sst", "para", "sts"):
        overrides += [f"tasks.{task}.train_limit=16", f"tasks.{task}.test_limit=8"]
        if rows:
            overrides.append(f"tasks.{task}.dev_limit={int(rows)}")
    recipe = _engine.recipe_file(REPO_ROOT / "recipes" / "baseline.toml", plugins, overrides)
    trainer = _engine.build_trainer(recipe, plugins, tmp_path / "eval")
    run = trainer.run
    model, tasks = run.model, run.tasks
    encoder = model.encoder
    precision = resolve_precision(recipe.train.precision, device)
    batch_size = recipe.data.eval_batch_size

    def evaluation(unpad: str, precision_name: str, size: int):
        def fn():
            encoder.unpad = unpad
            return evaluate(model, tasks, "dev", device=device, precision=precision_name, batch_size=size)
        return fn

    before = evaluation("never", "fp32", 128)
    now = evaluation(recipe.model.unpad, precision.name, batch_size)
    same_precision = evaluation(recipe.model.unpad, "fp32", batch_size)
    metrics_before, _ = before()
    metrics_fp32, _ = same_precision()
    for key, value in metrics_before.items():  # same scores in fp32: only the speed differs
        assert abs(value - metrics_fp32[key]) < 1e-3, (key, value, metrics_fp32[key])
    sequences = sum(len(t.splits["dev"].encoded) * len(t.splits["dev"].encoded.sequences) for t in tasks.values())
    measure(benchmark, now, device=device, reference=before,
            reference_name="fp32, batches of 128, padded positions computed (before issue 16)",
            target_max_ratio=1 / 1.5, target="defaults >= 1.5x faster (time ratio <= 0.667)", group="eval",
            warmup=0, info={"precision": precision.name, "precision_reason": precision.reason,
                            "eval_batch_size": batch_size, "unpad": recipe.model.unpad, "sequences": sequences,
                            "dev_rows": {n: len(t.splits["dev"].encoded) for n, t in tasks.items()}})
    _engine.release(trainer)
