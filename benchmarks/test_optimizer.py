"""(f) AdamW on MiniLM's parameters: fused vs foreach vs the per-parameter for-loop.

All 22.7 M parameters of the MiniLM-L6 encoder in the two groups mtbert builds (weight decay
0.01 on matrices, none on biases and LayerNorms), fixed random gradients; one round is one
``optimizer.step()``. The reference is torch's per-parameter loop (``foreach=False,
fused=False``). mtbert uses ``fused=True`` on CUDA and on the CPU
(``mtbert.engine.device.use_fused_adamw``, whose docstring quotes this benchmark's CPU figures).
No target in the issue; the fused path should be the fastest, or the engine's choice is wrong.
"""

from __future__ import annotations

import pytest
import torch

from _bench import measure

KINDS = {"for-loop": {"foreach": False, "fused": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _optimizer(minilm_dir, device: torch.device, kind: str) -> torch.optim.Optimizer:
    from mtbert.model.weights import load_hf_folder

    encoder = load_hf_folder(minilm_dir).encoder.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    decay, no_decay = [], []
    for name, p in encoder.named_parameters():
        p.grad = torch.randn(p.shape, generator=generator, device=device) * 1e-3
        (decay if p.ndim >= 2 and "norm" not in name.lower() else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=5e-5, **KINDS[kind])
    optimizer.step()  # the first step allocates the moment buffers
    return optimizer


@pytest.mark.parametrize("kind", list(KINDS))
def test_adamw_step(benchmark, device, kind, minilm_dir):
    optimizer = _optimizer(minilm_dir, device, kind)
    params = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    info = {"kind": kind, "parameters": params, "tensors": sum(len(g["params"]) for g in optimizer.param_groups)}
    if kind == "for-loop":
        measure(benchmark, optimizer.step, device=device, group="adamw", role="reference", info=info)
        return
    reference = _optimizer(minilm_dir, device, "for-loop")
    measure(benchmark, optimizer.step, device=device, reference=reference.step,
            reference_name="AdamW per-parameter for-loop", group="adamw", info=info)
