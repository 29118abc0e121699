"""Derived seeds: one recipe seed gives independent, stable seeds to every random stream.

And :class:`RandomState`, a snapshot of the global generators that dropout draws from, so a
component can replay the dropout masks of a forward pass (SMART's shared dropout).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where used: the sweep's planner imports this module too
    import torch

_MODULUS = 2**63 - 1


def derive_seed(seed: int, *parts: Any) -> int:
    """A seed for the stream named by ``parts`` (stable across processes, unlike ``hash``)."""
    value = seed
    for part in parts:
        for ch in str(part):
            value = (value * 1_000_003 + ord(ch)) % _MODULUS
        value = (value * 1_000_003 + 7) % _MODULUS
    return value


class RandomState:
    """The global generators' state: the CPU one and that of ``device``'s accelerator (CUDA, MPS).

    ``RandomState(device)`` captures it now; ``replay()`` sets the generators back to it, so the
    next forward pass on ``device`` draws the same dropout masks as the one that followed the
    capture (same modules, same shapes, same order of draws).
    """

    def __init__(self, device: torch.device):
        import torch

        self.device = device
        self.cpu = torch.get_rng_state()
        self.accelerator: torch.Tensor | None = None
        if device.type == "cuda":
            self.accelerator = torch.cuda.get_rng_state(device)
        elif device.type == "mps":
            self.accelerator = torch.mps.get_rng_state()

    def replay(self) -> None:
        """Set the generators back to the captured state (the state itself is kept for more replays)."""
        import torch

        torch.set_rng_state(self.cpu)
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(self.accelerator, self.device)
        elif self.device.type == "mps":
            torch.mps.set_rng_state(self.accelerator)
