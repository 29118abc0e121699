"""Signs that training destroyed the model, checked at every evaluation.

A learning rate that stays finite but far too high (``optim.lr = 1e2``) trains to the end with
finite losses and a model that answers the same thing for every input (STS r 0.0000). Two
signs are checked on each dev evaluation, and a loud one-line warning names them:

* a regression task whose dev predictions are all the same number, or every task predicting
  one value for its whole dev set (one class alone can happen early in training, so a single
  classification task is not enough);
* a weight norm more than :data:`NORM_GROWTH` times the norm the model started with, or not
  finite.
"""

from __future__ import annotations

import math
from typing import Any

import torch

#: The weight norm growth (against the run's start) that counts as exploding.
NORM_GROWTH = 10.0


def weight_norm(model: torch.nn.Module) -> float:
    """The L2 norm of all floating-point parameters together."""
    total = 0.0
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                total += float(p.detach().float().pow(2).sum())
    return math.sqrt(total) if math.isfinite(total) else math.inf


def _constant(values: list[Any]) -> bool:
    return len(values) > 1 and all(v == values[0] for v in values[1:])


class ModelHealth:
    """Remembers the start's weight norm; :meth:`check` returns what looks collapsed, if anything."""

    def __init__(self, model: torch.nn.Module):
        self.start_norm = weight_norm(model)

    def check(self, model: torch.nn.Module, predictions: dict[str, dict[str, list]], specs: dict[str, Any]) -> str:
        signs = []
        constant = {name: p["predictions"] for name, p in predictions.items() if _constant(list(p["predictions"]))}
        for name, values in constant.items():
            regression = getattr(specs.get(name), "label_kind", "") == "regression"
            if regression or len(constant) == len(predictions):
                signs.append(f"task {name} predicts {values[0]!r} for all {len(values)} dev examples")
        norm = weight_norm(model)
        if not math.isfinite(norm) or norm > NORM_GROWTH * self.start_norm:
            signs.append(f"weight norm {norm:.3g}, {norm / self.start_norm:.3g}x the start's {self.start_norm:.3g}")
        if not signs:
            return ""
        return "; ".join(signs) + " — the model no longer depends on its input; lower optim.lr"
