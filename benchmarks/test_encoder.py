"""(b) The encoder: ours against transformers' BertModel (sdpa), and gradient checkpointing.

Both load the same all-MiniLM-L6-v2 weights and run on identical inputs: 32 real SST
training sentences tokenized with our tokenizer, truncated and padded to exactly 64 or 128
tokens (attention mask marks the padding; token type ids all 0). bf16 autocast on CUDA.

* ``forward``: evaluation mode under ``torch.inference_mode`` (how mtbert evaluates).
* ``train``: training mode (dropout on, as fine-tuning runs) forward and backward of
  ``mean(last_hidden_state**2) + mean(pooler_output)``; gradients are dropped each call.

**Target: ours >= 1.0x transformers**, i.e. time(ours) / time(transformers) <= 1.0.

``test_gradient_checkpointing``: ours at length 256, batch 8 (sentences joined so every row is full),
forward and backward with ``gradient_checkpointing`` on against off: the time it costs and
the activation memory it saves (peak memory in extra_info). No target; it is an option for
long sequences (``model.gradient_checkpointing``).
"""

from __future__ import annotations

import pytest
import torch

from _bench import autocast, measure

BATCH = 32
LONG_BATCH = 8  # length 256: 8 full rows keep one call within seconds on a laptop CPU


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


def _loss(out) -> torch.Tensor:
    last, pooled = (out.last_hidden_state, out.pooler_output)
    return last.float().square().mean() + pooled.float().mean()


def _call(model, inputs, device, mode: str):
    if mode == "forward":
        model.eval()

        def fn():
            with torch.inference_mode(), autocast(device):
                model(**inputs)
    else:
        model.train()

        def fn():
            with autocast(device):
                loss = _loss(model(**inputs))
            loss.backward()
            model.zero_grad(set_to_none=True)
    return fn


@pytest.mark.parametrize("length", [64, 128])
@pytest.mark.parametrize("mode", ["forward", "train"])
def test_encoder_ours_vs_transformers(benchmark, device, mode, length, minilm_dir, tokenizer, sst_train, hf_bert):
    ours = _ours(minilm_dir, device)
    theirs = hf_bert.BertModel.from_pretrained(minilm_dir, attn_implementation="sdpa").to(device)
    inputs = _inputs(tokenizer, sst_train, length, device)
    with torch.inference_mode():  # same weights, same inputs: same outputs (a benchmark of equals)
        ours.eval(), theirs.eval()
        a, b = ours(**inputs).last_hidden_state, theirs(**inputs).last_hidden_state
        assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
    measure(benchmark, _call(ours, inputs, device, mode), device=device,
            reference=_call(theirs, inputs, device, mode), reference_name="transformers BertModel (sdpa)",
            target_max_ratio=1.0, target="ours >= 1.0x transformers (time ratio <= 1.0)",
            memory=mode == "train", group=f"encoder-{mode}",
            info={"batch": BATCH, "length": length, "mode": mode,
                  "precision": "bf16 autocast" if device.type == "cuda" else "fp32"})


def test_gradient_checkpointing(benchmark, device, minilm_dir, tokenizer, sst_train):
    length = 256
    plain = _ours(minilm_dir, device)
    checkpointed = _ours(minilm_dir, device)
    checkpointed.gradient_checkpointing = True
    inputs = _inputs(tokenizer, sst_train, length, device, fill=True, batch=LONG_BATCH)
    measure(benchmark, _call(checkpointed, inputs, device, "train"), device=device,
            reference=_call(plain, inputs, device, "train"), reference_name="ours without checkpointing",
            memory=True, group="encoder-checkpointing",
            info={"batch": LONG_BATCH, "length": length, "mode": "train",
                  "real_tokens": int(inputs["attention_mask"].sum())})
