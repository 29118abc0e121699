"""The optimizer and learning-rate schedule every training stage uses.

AdamW (fused on CUDA when this torch has it) whose parameter groups leave biases and
normalisation weights without weight decay, and the schedules ``optim.schedule`` names. The
multitask trainer and the ``mlm`` stage both build theirs here, so a change to the decay rule
or the schedule reaches every stage.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from mtbert.engine.device import use_fused_adamw
from mtbert.engine.extensions import apply_groups


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The learning-rate factor of optimizer step ``step`` (for ``LambdaLR``)."""

    def factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant-warmup":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "cosine-warmup":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)  # linear-warmup: linear decay to 0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int,
                    warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """``schedule`` over ``total_steps`` optimizer steps, ``warmup`` of them (a fraction) warming up."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, total_steps, int(round(warmup * total_steps))))


def decays(name: str, parameter: nn.Parameter) -> bool:
    """Whether weight decay applies: matrices yes; biases and LayerNorm (any norm) weights no."""
    return parameter.ndim >= 2 and "norm" not in name.lower()


def decay_groups(named: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float,
                 label: str) -> list[dict[str, Any]]:
    """The trainable ``named`` parameters as AdamW groups: ``label`` (decayed) and ``label-no-decay``."""
    params = [(n, p) for n, p in named if p.requires_grad]
    decay = [p for n, p in params if decays(n, p)]
    no_decay = [p for n, p in params if not decays(n, p)]
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": label})
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{label}-no-decay"})
    return groups


def adamw(groups: list[dict[str, Any]], device: torch.device, betas: Iterable[float], eps: float,
          lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW over ``groups``: fused on devices that have it, else ``foreach`` off the CPU."""
    kwargs: dict[str, Any] = {"betas": tuple(betas), "eps": eps}
    if lr is not None:
        kwargs["lr"] = lr
    if use_fused_adamw(device):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # an older torch without fused AdamW here
            pass
    return torch.optim.AdamW(groups, foreach=device.type != "cpu", **kwargs)


def build_optimizer(
    model: Any, optim: Any, extra_params: list[nn.Parameter], device: torch.device, extra_lr: float | None = None,
    group_rules: Sequence[Any] = (),
) -> torch.optim.Optimizer:
    """The multitask optimizer: encoder at ``optim.lr``, heads at ``optim.head_lr`` (default lr),
    a loss combiner's own parameters at ``extra_lr`` without decay.

    ``group_rules``: the recipe's ``[[optimizer_groups]]`` components, applied to the groups in order.
    """
    groups = decay_groups(model.encoder.named_parameters(), optim.lr, optim.weight_decay, "encoder")
    groups += decay_groups(model.heads.named_parameters(), optim.head_lr or optim.lr, optim.weight_decay, "heads")
    if extra_params:
        groups.append({"params": extra_params, "lr": extra_lr or optim.head_lr or optim.lr, "weight_decay": 0.0,
                       "name": "combiner"})
    if group_rules:
        groups = apply_groups(model, groups, list(group_rules))
    return adamw(groups, device, optim.betas, optim.eps)
