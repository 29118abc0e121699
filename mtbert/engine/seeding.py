"""Derived seeds: one recipe seed gives independent, stable seeds to every random stream."""

from __future__ import annotations

from typing import Any

_MODULUS = 2**63 - 1


def derive_seed(seed: int, *parts: Any) -> int:
    """A seed for the stream named by ``parts`` (stable across processes, unlike ``hash``)."""
    value = seed
    for part in parts:
        for ch in str(part):
            value = (value * 1_000_003 + ord(ch)) % _MODULUS
        value = (value * 1_000_003 + 7) % _MODULUS
    return value
