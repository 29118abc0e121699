"""Recipes as dotted keys: the one flattening that ``compare``, ``sweep``, ``--resume`` and the
TensorBoard review share, and the keys whose values do not change what a run computes."""

from __future__ import annotations

from typing import Any

#: Keys that change where or how fast a run goes, not what it computes: ``--resume`` accepts a
#: change in them, a sweep reruns nothing for them, and compare shows no column for them.
NEUTRAL_KEYS = frozenset({"train.progress", "train.keep_last", "train.device", "train.threads", "data.dir", "data.cache"})

#: Keys that label a recipe without changing what it computes: two recipes that differ only in
#: them train the same model, so a sweep adopts the other's finished run and compare pools them.
LABEL_KEYS = frozenset({"name", "description"})

#: Everything that does not change a run's results: :data:`NEUTRAL_KEYS` and :data:`LABEL_KEYS`.
RESULT_NEUTRAL_KEYS = NEUTRAL_KEYS | LABEL_KEYS


def flatten_recipe(table: Any, prefix: str = "") -> dict[str, Any]:
    """A recipe table keyed by dotted paths: ``optim.lr``, ``tasks.sst.head.name``.

    Tables recurse; a non-empty list of tables is indexed (``gradient_transforms[0].name``);
    any other value, other lists included (``optim.betas``, an empty list), is a leaf.
    """
    if isinstance(table, dict):
        out: dict[str, Any] = {}
        for key, value in table.items():
            out.update(flatten_recipe(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(table, list) and table and all(isinstance(item, dict) for item in table):
        out = {}
        for index, item in enumerate(table):
            out.update(flatten_recipe(item, f"{prefix}[{index}]"))
        return out
    return {prefix: table}


def changed_keys(old: dict[str, Any], new: dict[str, Any], neutral: frozenset[str] = NEUTRAL_KEYS) -> list[str]:
    """The dotted keys whose values differ between two recipe tables, sorted; ``neutral`` aside.

    A key one table lacks counts as changed (its value is None there).
    """
    a, b = flatten_recipe(old), flatten_recipe(new)
    return sorted(key for key in set(a) | set(b) if key not in neutral and a.get(key) != b.get(key))
