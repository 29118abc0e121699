"""(b) The encoder: ours against transformers' BertModel (sdpa), and gradient checkpointing.

Both load the same all-MiniLM-L6-v2 weights and run on identical inputs: 32 real SST
training sentences tokenized with our tokenizer, truncated and padded to exactly 64 or 128
tokens (attention mask marks the padding; token type ids all 0), as a fixed-length pipeline
feeds them. Each shape runs in fp32 and under bf16 autocast (``precision``); bf16 on a CPU
without native bf16 (AMX or AVX512-BF16) is skipped with the reason, as mtbert's
``train.precision = "auto"`` would not use it there.

* ``forward``: evaluation mode under ``torch.inference_mode`` (how mtbert evaluates).
* ``train``: training mode (dropout on, as fine-tuning runs) forward and backward of
  ``mean(last_hidden_state[real tokens]**2) + mean(pooler_output)``; gradients are dropped each call.

**Target: ours >= 1.1x transformers**, i.e. time(ours) / time(transformers) <= 0.91, at the
same precision. Ours runs with its defaults: fused QKV, one attention bias for all layers and,
on the CPU, the token-wise layers on real tokens only (``model.unpad = "auto"``), which is
where most of the lead comes from on padded batches. ``test_encoder_full_rows`` (no target)
shows the other side: rows with no padding at all, where both run the same kernels.

Utilization: ``useful_gflops`` is the floating-point work on real tokens (matmuls of the
Linear layers and of attention over the real keys, x3 in training for the backward) per
second; ``matmul_gflops`` a plain 1024x1024 matmul in the same precision, timed in the same
session; ``utilization`` their ratio: how close the encoder comes to the machine's limit.

``test_gradient_checkpointing``: ours at length 256, batch 8 (sentences joined so every row is full),
forward and backward with ``gradient_checkpointing`` on against off: the time it costs and
the activation memory it saves (peak memory in extra_info). No target; it is an option for
long sequences (``model.gradient_checkpointing``).
"""

from __future__ import annotations

import contextlib
import statistics
import time

import pytest
import torch

from _bench import measure

BATCH = 32
LONG_BATCH = 8  # length 256: 8 full rows keep one call within seconds on a laptop CPU
TARGET = 1 / 1.1  # ours at least 1.1x transformers


def _precision_context(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _skip_without_native_bf16(device: torch.device, precision: str) -> None:
    from mtbert.engine.device import resolve_precision

    if precision == "bf16" and resolve_precision("auto", device).name != "bf16":
        pytest.skip(f"bf16 on {device.type}: {resolve_precision('auto', device).reason}")


_MATMUL: dict[tuple[str, str], float] = {}


def matmul_gflops(device: torch.device, precision: str) -> float:
    """GFLOP/s of a 1024x1024 @ 1024x1024 matmul in ``precision`` (median of 9; once per session)."""
    key = (device.type, precision)
    if key not in _MATMUL:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        a = torch.randn(1024, 1024, device=device, dtype=dtype)
        b = torch.randn(1024, 1024, device=device, dtype=dtype)
        times = []
        for _ in range(10):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        _MATMUL[key] = 2 * 1024**3 / statistics.median(times[1:]) / 1e9
    return _MATMUL[key]


def useful_flops(config, attention_mask: torch.Tensor, mode: str) -> float:
    """Matmul FLOPs of a forward on the real tokens only (x3 with the backward)."""
    H, I, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    lengths = attention_mask.sum(dim=1).double()
    tokens = float(lengths.sum())
    linear = 2 * tokens * (4 * H * H + 2 * H * I) * L  # qkv + proj + ffn up/down
    attention = 4 * float((lengths * lengths).sum()) * H * L  # QK^T and PV over the real keys
    pooler = 2 * attention_mask.shape[0] * H * H
    forward = linear + attention + pooler
    return forward * (3 if mode == "train" else 1)


@pytest.fixture(scope="module")
def hf_bert():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers


def _inputs(tokenizer, sentences, length: int, device: torch.device, fill: bool = False,
            batch: int = BATCH) -> dict[str, torch.Tensor]:
    from mtbert.model.tokenizer import pad_batch

    texts = [e.texts[0] for e in sentences]
    if fill:  # join consecutive sentences until each row has `length` real tokens
        rows, current = [], ""
        for text in texts:
            current = f"{current} {text}".strip()
            if len(tokenizer.encode([current], max_length=None)[0]) >= length:
                rows.append(current)
                current = ""
            if len(rows) == batch:
                break
        texts = rows
    ids = tokenizer.encode(texts[:batch], max_length=length)
    padded = pad_batch(ids, pad_id=tokenizer.pad_id, pad_to=length)
    assert padded["input_ids"].shape == (batch, length)
    return {k: v.to(device) for k, v in padded.items()}


def _ours(minilm_dir, device):
    from mtbert.model.weights import load_hf_folder

    return load_hf_folder(minilm_dir).encoder.to(device)


def _loss(out, keep: torch.Tensor) -> torch.Tensor:
    last, pooled = (out.last_hidden_state, out.pooler_output)
    return last[keep].float().square().mean() + pooled.float().mean()


def _call(model, inputs, device, mode: str, precision: str = "fp32"):
    keep = inputs["attention_mask"].bool()
    if mode == "forward":
        model.eval()

        def fn():
            with torch.inference_mode(), _precision_context(device, precision):
                model(**inputs)
    else:
        model.train()

        def fn():
            with _precision_context(device, precision):
                loss = _loss(model(**inputs), keep)
            loss.backward()
            model.zero_grad(set_to_none=True)
    return fn


def _versus(benchmark, device, mode, length, precision, ours, theirs, inputs, *, target: bool, group: str) -> None:
    keep = inputs["attention_mask"].bool()
    with torch.inference_mode(), _precision_context(device, precision):  # same weights and inputs: same outputs
        ours.eval(), theirs.eval()
        a, b = ours(**inputs).last_hidden_state.float(), theirs(**inputs).last_hidden_state.float()
        tolerance = 1e-4 if precision == "fp32" else 0.25
        assert (a - b)[keep].abs().max() <= tolerance, float((a - b)[keep].abs().max())
    flops = useful_flops(ours.config, inputs["attention_mask"], mode)
    extra = measure(benchmark, _call(ours, inputs, device, mode, precision), device=device,
                    reference=_call(theirs, inputs, device, mode, precision),
                    reference_name=f"transformers BertModel (sdpa), {precision}",
                    target_max_ratio=TARGET if target else None,
                    target="ours >= 1.1x transformers (time ratio <= 0.91)" if target else None,
                    memory=mode == "train", group=group,
                    info={"batch": BATCH, "length": length, "mode": mode, "precision": precision,
                          "real_token_share": float(keep.float().mean())})
    peak = matmul_gflops(device, precision)
    ours_gflops = flops / extra["median_s"] / 1e9
    benchmark.extra_info.update(useful_gflops=ours_gflops, matmul_gflops=peak, utilization=ours_gflops / peak)
    if "reference_median_s" in extra:
        benchmark.extra_info["reference_useful_gflops"] = flops / extra["reference_median_s"] / 1e9


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("length", [64, 128])
@pytest.mark.parametrize("mode", ["forward", "train"])
def test_encoder_ours_vs_transformers(benchmark, device, mode, length, precision, minilm_dir, tokenizer, sst_train,
                                      hf_bert):
    _skip_without_native_bf16(device, precision)
    ours = _ours(minilm_dir, device)
    theirs = hf_bert.BertModel.from_pretrained(minilm_dir, attn_implementation="sdpa").to(device)
    inputs = _inputs(tokenizer, sst_train, length, device)
    _versus(benchmark, device, mode, length, precision, ours, theirs, inputs, target=True, group=f"encoder-{mode}")


@pytest.mark.parametrize("length", [64, 128])
@pytest.mark.parametrize("mode", ["forward", "train"])
def test_encoder_full_rows(benchmark, device, mode, length, minilm_dir, tokenizer, sst_train, hf_bert):
    """No padding to skip: both run the same kernels (fp32; no target, the honest baseline)."""
    ours = _ours(minilm_dir, device)
    theirs = hf_bert.BertModel.from_pretrained(minilm_dir, attn_implementation="sdpa").to(device)
    inputs = _inputs(tokenizer, sst_train, length, device, fill=True)
    assert bool(inputs["attention_mask"].all())
    _versus(benchmark, device, mode, length, "fp32", ours, theirs, inputs, target=False, group=f"encoder-full-{mode}")


def test_gradient_checkpointing(benchmark, device, minilm_dir, tokenizer, sst_train):
    length = 256
    plain = _ours(minilm_dir, device)
    checkpointed = _ours(minilm_dir, device)
    checkpointed.gradient_checkpointing = True
    inputs = _inputs(tokenizer, sst_train, length, device, fill=True, batch=LONG_BATCH)
    precision = "bf16" if device.type == "cuda" else "fp32"
    measure(benchmark, _call(checkpointed, inputs, device, "train", precision), device=device,
            reference=_call(plain, inputs, device, "train", precision), reference_name="ours without checkpointing",
            memory=True, group="encoder-checkpointing",
            info={"batch": LONG_BATCH, "length": length, "mode": "train",
                  "real_tokens": int(inputs["attention_mask"].sum())})
