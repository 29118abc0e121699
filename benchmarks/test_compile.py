"""``train.compile``: does ``torch.compile`` of the encoder pay for training?

Our MiniLM encoder, training mode, forward and backward (as test_encoder.py's ``train``), batch
32 on *dynamically padded* batches, as mtbert trains: each round runs four batches of real
SST sentences padded to their longest sequence (four different lengths), compiled
(``encoder.compile()``, exactly what ``train.compile = true`` does) against eager. Compilation
happens in the warm-up, on every shape, and its cost is recorded in extra_info
(``compile_seconds``: the first pass over the four shapes, compiled minus eager), so the
steady-state ratio and the time it takes to earn the compilation back are both visible.
bf16 autocast on CUDA. Marked ``slow``: compiling on a 2-core CPU takes minutes.

No target: ``train.compile`` stays off by default on the CPU unless this shows it pays.
"""

from __future__ import annotations

import time

import pytest
import torch

from _bench import autocast, measure, sync

BATCH = 32


def _batches(tokenizer, sst_train, device):
    from mtbert.model.tokenizer import pad_batch

    texts = [e.texts[0] for e in sst_train]
    out = []
    for i in range(4):
        ids = tokenizer.encode(texts[i * BATCH:(i + 1) * BATCH], max_length=128)
        out.append({k: v.to(device) for k, v in pad_batch(ids, pad_id=tokenizer.pad_id).items()})
    assert len({b["input_ids"].shape[1] for b in out}) > 1  # really dynamic shapes
    return out


@pytest.mark.slow
def test_compile_encoder_train(benchmark, device, minilm_dir, tokenizer, sst_train):
    if device.type == "cpu":
        import shutil

        if shutil.which("g++") is None and shutil.which("c++") is None:
            pytest.skip("torch.compile (inductor) needs a C++ compiler on the CPU")
    from mtbert.model.weights import load_hf_folder

    eager = load_hf_folder(minilm_dir).encoder.to(device).train()
    compiled = load_hf_folder(minilm_dir).encoder.to(device).train()
    compiled.compile()
    batches = _batches(tokenizer, sst_train, device)

    def run(model):
        def fn():
            for inputs in batches:
                with autocast(device):
                    out = model(**inputs)
                    loss = out.last_hidden_state.float().square().mean() + out.pooler_output.float().mean()
                loss.backward()
                model.zero_grad(set_to_none=True)
        return fn

    def first_pass(fn):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    eager_first = first_pass(run(eager))
    compiled_first = first_pass(run(compiled))
    for _ in range(2):  # later passes settle the dynamic-shape recompilation
        run(compiled)()
    extra = measure(benchmark, run(compiled), device=device, reference=run(eager),
                    reference_name="eager (train.compile = false)", group="compile",
                    info={"batch": BATCH, "lengths": [b["input_ids"].shape[1] for b in batches],
                          "compile_seconds": compiled_first - eager_first})
    saved_per_step = (extra["reference_median_s"] - extra["median_s"]) / len(batches)
    # training steps until compilation has paid for itself (None: it never does)
    benchmark.extra_info["payback_steps"] = (
        (compiled_first - eager_first) / saved_per_step if saved_per_step > 0 else None
    )
