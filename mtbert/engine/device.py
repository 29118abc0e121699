"""Device choice and mixed precision.

``auto`` picks CUDA when available, then Apple's MPS, else the CPU. ``bf16`` runs the forward
pass under ``torch.autocast`` in bfloat16 (parameters, gradients and optimizer state stay in
fp32, so no loss scaling is needed); losses are computed in fp32 by the heads.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from mtbert.errors import RecipeError


def choose_device(spec: str) -> torch.device:
    """The torch device a recipe's ``train.device`` names, or a one-line error."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise RecipeError(f"train.device: {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"train.device: {spec!r} asked for, but CUDA is not available on this machine; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RecipeError(f"train.device: {spec!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RecipeError("train.device: 'mps' asked for, but MPS is not available on this machine")
    return device


def autocast(device: torch.device, precision: str) -> ContextManager:
    """The autocast context for a forward pass under ``train.precision``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_fused_adamw(device: torch.device) -> bool:
    """Fused AdamW (one kernel for all parameters): CUDA, and the CPU since torch 2.4.

    On this project's 2-core CPU one MiniLM AdamW step took 19 ms fused against 99 ms for
    torch's per-parameter loop timed beside it, 5.2x faster (medians; ``python -m pytest
    benchmarks``, benchmarks/test_optimizer.py; figures in benchmarks/README.md).
    """
    return device.type in ("cuda", "cpu")
