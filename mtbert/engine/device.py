"""Device choice and mixed precision.

``auto`` picks CUDA when available, then Apple's MPS, else the CPU. ``bf16`` runs the forward
pass under ``torch.autocast`` in bfloat16 (parameters, gradients and optimizer state stay in
fp32, so no loss scaling is needed); losses are computed in fp32 by the heads.

``train.precision = "auto"`` (the default) takes bf16 only where the hardware computes it
natively: CUDA devices that support it, and CPUs with AMX or AVX512-BF16 instructions. Elsewhere
a CPU emulates bf16 through fp32 and conversions, which is slower than fp32 itself, so auto
stays in fp32 there. :func:`resolve_precision` says what it chose and why (``run.json``).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import ContextManager

import attrs
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


#: CPU instruction sets that compute bf16 natively (Linux /proc/cpuinfo flag names).
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """The native-bf16 instruction flags this CPU reports (empty off Linux or without them)."""
    if not sys.platform.startswith("linux"):
        return ()
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)
    return ()


@functools.lru_cache(maxsize=None)
def _this_cpu_flags() -> tuple[str, ...]:
    return cpu_bf16_flags()


@attrs.frozen
class Precision:
    """The precision a run computes in: ``name`` (fp32 or bf16), what the recipe asked and why."""

    name: str
    requested: str
    reason: str

    def record(self) -> dict[str, str]:
        return {"precision": self.name, "precision_requested": self.requested, "precision_reason": self.reason}


def resolve_precision(requested: str, device: torch.device, cpu_flags: tuple[str, ...] | None = None) -> Precision:
    """``train.precision`` made concrete for ``device`` (``cpu_flags``: for tests; default: this CPU's)."""
    if requested != "auto":
        return Precision(requested, requested, "set in the recipe")
    if device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return Precision("bf16", "auto", f"CUDA device {torch.cuda.get_device_name(device)} supports bf16")
        return Precision("fp32", "auto", "this CUDA device has no native bf16")
    if device.type == "cpu":
        flags = _this_cpu_flags() if cpu_flags is None else cpu_flags
        if flags:
            return Precision("bf16", "auto", f"the CPU computes bf16 natively ({', '.join(flags)})")
        return Precision("fp32", "auto", "the CPU has neither AMX nor AVX512-BF16: bf16 would be emulated, slower than fp32")
    return Precision("fp32", "auto", f"no bf16 autocast on {device.type}")


@functools.lru_cache(maxsize=None)
def _auto(device: torch.device) -> str:
    return resolve_precision("auto", device).name


def autocast(device: torch.device, precision: str) -> ContextManager:
    """The autocast context for a forward pass under ``train.precision`` (``auto`` resolved for ``device``)."""
    if precision == "auto":
        precision = _auto(device)
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
