"""(a) The attention kernel: our SDPA path against our explicit math path.

One MiniLM-sized self-attention module (hidden 384, 12 heads; ``mtbert.model.bert.SelfAttention``,
the module every layer runs), batch 32, sequence lengths 32 to 256, a padding mask whose
rows keep between a quarter and all of the tokens (the additive bias the encoder builds once
per forward). ``forward``: evaluation mode, under ``torch.inference_mode``; ``train``:
training mode (attention dropout 0.1, as MiniLM) with a backward pass. bf16 autocast on CUDA.

The ratio is time(sdpa) / time(math), measured side by side. The issue sets no target here;
the SDPA path is the default, so a ratio above 1 at some length is worth a note in the README.
"""

from __future__ import annotations

import pytest
import torch

from _bench import autocast, measure

LENGTHS = [32, 64, 128, 256]
BATCH = 32


def _attention(device: torch.device, length: int):
    from mtbert.model.bert import BertEncoder
    from mtbert.model.config import BertConfig

    torch.manual_seed(0)
    config = BertConfig(vocab_size=128, hidden_size=384, num_hidden_layers=1, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512, attention_probs_dropout_prob=0.1)
    encoder = BertEncoder(config).to(device)
    x = torch.randn(BATCH, length, config.hidden_size, device=device)
    keep = torch.randint(max(1, length // 4), length + 1, (BATCH,), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(length)[None, :] < keep[:, None]).long().to(device)
    with autocast(device):
        bias = encoder._attention_bias(mask, x)
    return encoder.layers[0].attn, x, bias


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("mode", ["forward", "train"])
def test_attention_sdpa_vs_math(benchmark, device, mode, length):
    attn, x, bias = _attention(device, length)
    if mode == "train":
        attn.train()
        x = x.requires_grad_()

        def call(kind: str):
            def fn():
                with autocast(device):
                    y = attn(x, bias, kind)
                y.float().sum().backward()
                x.grad = None
                attn.zero_grad(set_to_none=True)
            return fn
    else:
        attn.eval()

        def call(kind: str):
            def fn():
                with torch.inference_mode(), autocast(device):
                    attn(x, bias, kind)
            return fn

    measure(benchmark, call("sdpa"), device=device, reference=call("math"), reference_name="our math path",
            group=f"attention-{mode}", info={"batch": BATCH, "length": length, "mode": mode})
