"""The ``ema`` weight average: evaluate (and keep) an exponential moving average of the weights.

Polyak and Juditsky (1992) averaging in its exponential form, as used for fine-tuning in e.g.
Izmailov et al. (2018, SWA) and widely for transformers: after every optimizer step

    theta_ema <- d * theta_ema + (1 - d) * theta

and every evaluation scores the averaged weights; the best checkpoint and the predictions are
the averaged model's. Training itself continues from the trained weights (the engine swaps the
average in for the evaluation only). The average starts at the weights when the stage starts
and covers every trainable parameter (encoder and heads). With ``warmup = true`` (default)
the decay at update ``t`` is ``min(decay, (1 + t) / (10 + t))`` (TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``): early on the average follows the weights
closely, so a fresh head's random start does not linger in it over a short run.

Options: ``decay`` (default 0.999: an average over roughly the last 1,000 steps, about two
epochs of the ablation budget), ``warmup``. The average is kept in fp32 on the model's device
and saved in the run's training state, so ``--resume`` continues it.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from mtbert import hookimpl
from mtbert.schema import option


class ExponentialAverage:
    def __init__(self, options: "Ema", model: Any):
        self.options = options
        self.updates = 0
        self.average = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    def decay(self) -> float:
        """This update's decay: the option, or less during the warm-up."""
        if not self.options.warmup:
            return self.options.decay
        return min(self.options.decay, (1 + self.updates) / (10 + self.updates))

    def update(self, model: Any) -> None:
        d = self.decay()
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.average.items():
                value.lerp_(params[name].detach().float(), 1.0 - d)
        self.updates += 1

    def weights(self) -> dict[str, torch.Tensor]:
        return self.average

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "average": dict(self.average)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        for name, value in state["average"].items():
            self.average[name].copy_(torch.as_tensor(value))


@attrs.define
class Ema:
    """Exponential moving average of the weights, evaluated and saved in place of the trained weights."""

    decay: float = option(0.999, help="weight of the old average at each optimizer step", min=0, max=1)
    warmup: bool = option(True, help="use min(decay, (1 + t) / (10 + t)) at update t, so the average starts close to the weights")

    def build(self, model: Any) -> ExponentialAverage:
        return ExponentialAverage(self, model)


@hookimpl
def mtbert_register_weight_averages(register):
    register("ema", Ema)
