"""Grid sweeps: ``--grid KEY=V1,V2`` values and the recipe's ``[sweep.grid]``, multiplied into
variants, each with its own run folder."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import tomli_w

from mtbert.errors import RecipeError
from mtbert.recipe import key_label, parse_override, split_key
from mtbert.sweep.variants import Variant


def toml_literal(value: Any) -> str:
    """``value`` written as the right-hand side of a TOML assignment (what ``--set`` reads back)."""
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def split_values(text: str) -> list[str]:
    """``"1e-5,[1, 2],'a,b'"`` -> ``["1e-5", "[1, 2]", "'a,b'"]``: commas split only at the top level."""
    parts: list[str] = []
    depth, quote, current = 0, "", []
    for char in text:
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def parse_grid(texts: list[str]) -> list[tuple[str, list[str]]]:
    """``["optim.lr=1e-5,3e-5"]`` -> ``[("optim.lr", ["1e-5", "3e-5"])]`` (values as written)."""
    grid: list[tuple[str, list[str]]] = []
    for text in texts:
        if "=" not in text:
            raise RecipeError(f"--grid {text!r}: expected KEY.PATH=VALUE1,VALUE2,...")
        key, raw = text.split("=", 1)
        parts = split_key(key.strip())
        values = split_values(raw)
        if parts is None:
            raise RecipeError(f"--grid {text!r}: empty key in the key path")
        key = key_label(parts)
        if any(v == "" for v in values):
            raise RecipeError(f"--grid {text!r}: empty value (values are separated by commas)")
        if any(k == key for k, _ in grid):
            raise RecipeError(f"--grid {key}: given twice; list all its values in one --grid")
        for value in values:
            parse_override(f"{key}={value}")  # read like --set: TOML literal or bare word
        grid.append((key, values))
    return grid


#: The largest ``--seeds`` count: more replicates than this is a seed mistaken for a count.
MAX_SEED_COUNT = 100


def parse_seeds(text: str, recipe_seed: int) -> list[int]:
    """``--seeds``: ``"3"`` -> the recipe's seed then 1, 2, ... (3 in all); ``"11711,1,2"`` -> those seeds;
    ``"11711,"`` -> that one seed. A count above :data:`MAX_SEED_COUNT` is refused as a seed
    written where a count was read.

    A count keeps the recipe's own seed first, so its existing run is one of the replicates.
    """
    parts = [p.strip() for p in str(text).split(",")]
    one_seed = len(parts) == 2 and parts[1] == ""  # "11711,": a list of one seed
    if one_seed:
        parts = parts[:1]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise RecipeError(f"--seeds {text!r}: expected a count (3) or a comma-separated list of seeds (11711,1,2)") from None
    if len(values) == 1 and not one_seed:
        count = values[0]
        if count < 1:
            raise RecipeError(f"--seeds {text!r}: the count must be at least 1")
        if count > MAX_SEED_COUNT:
            raise RecipeError(f"--seeds {text!r}: a count of {count} runs; for the one seed {count} write --seeds {count},")
        seeds, candidate = [recipe_seed], 1
        while len(seeds) < count:
            if candidate != recipe_seed:
                seeds.append(candidate)
            candidate += 1
        return seeds
    if any(v < 0 for v in values):
        raise RecipeError(f"--seeds {text!r}: seeds are integers >= 0")
    if len(set(values)) != len(values):
        raise RecipeError(f"--seeds {text!r}: a seed is listed twice")
    return values


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+\-]+", "_", text).strip("_") or "_"


def grid_variants(name: str, grid: list[tuple[str, list[str]]], out: Path) -> list[Variant]:
    """The product of the grid's values, first key slowest, each with its folder under ``out``."""
    variants = []
    seen: dict[str, int] = {}
    for combo in itertools.product(*(values for _, values in grid)):
        pairs = [(key, value) for (key, _), value in zip(grid, combo)]
        folder_name = "-".join([name, *(f"{key}={_slug(value)}" for key, value in pairs)])
        seen[folder_name] = seen.get(folder_name, 0) + 1
        if seen[folder_name] > 1:  # two values that read the same once made safe for a file name
            folder_name += f"-{seen[folder_name]}"
        variants.append(Variant(label=" ".join(f"{k}={v}" for k, v in pairs),
                                overrides=[f"{k}={v}" for k, v in pairs], folder=out / folder_name))
    return variants
