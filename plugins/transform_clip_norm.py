"""The ``clip-norm`` gradient transform: rescale gradients whose global norm exceeds a bound.

``scope = "all"`` (default) clips every trainable parameter's gradient together, like
``torch.nn.utils.clip_grad_norm_``; ``scope = "shared"`` clips only the encoder's.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from mtbert.api import hookimpl, option


class ClipNormState:
    needs = "parameters"

    def __init__(self, options: "ClipNorm", shared_parameters: list[torch.nn.Parameter]):
        self.options = options
        self.shared = shared_parameters
        self.last_norm = 0.0
        self.clipped = 0.0

    def apply(self, parameters: list[torch.nn.Parameter], *, tasks: list[str]) -> None:
        chosen = self.shared if self.options.scope == "shared" else parameters
        norm = torch.nn.utils.clip_grad_norm_(chosen, self.options.max_norm, norm_type=self.options.norm_type)
        self.last_norm = float(norm)
        self.clipped = float(self.last_norm > self.options.max_norm)

    def logs(self) -> dict[str, float]:
        return {"grad_norm": self.last_norm, "clipped": self.clipped}


@attrs.define
class ClipNorm:
    """Clip the global gradient norm to max_norm."""

    max_norm: float = option(1.0, help="largest allowed gradient norm", min=0, min_exclusive=True)
    norm_type: float = option(2.0, help="p of the p-norm (inf for the largest absolute value)", min=0, min_exclusive=True)
    scope: Literal["all", "shared"] = option("all", help="all trainable parameters, or only the shared encoder's")

    requires_step_mode = None
    needs = "parameters"

    def build(self, shared_parameters: list[torch.nn.Parameter]) -> ClipNormState:
        return ClipNormState(self, shared_parameters)


@hookimpl
def mtbert_register_gradient_transforms(register):
    register("clip-norm", ClipNorm)
