"""``mtbert validate --show``: the resolved recipe with every key, unset ones as comments.

TOML has no null, so a key whose value is unset (``train.patience``, ``tasks.sst.dev_file``,
``model.hidden_dropout`` ...) cannot be written as a value. :func:`show_recipe` writes the
resolved recipe and, in each table, one comment per unset key with its help text, so the
output names every key a recipe can set. Keys of tables written inline (a stage's options in
``stages = [...]``) are commented in the top-level table under the name ``--set`` takes
(``# stages[0].tasks = <unset>``).
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from mtbert.schema import fields_of


def _unset(obj: Any, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(field, help) of an attrs object's fields that are None."""
    if not attrs.has(type(obj)):
        return []
    return [(name, field.metadata.get("help", "")) for name, field in fields_of(type(obj)).items()
            if not name.startswith("_") and name not in skip and getattr(obj, name, None) is None]


def unset_keys(recipe: Any) -> dict[tuple[str, ...], list[tuple[str, str]]]:
    """Per table path, the keys the resolved ``recipe`` leaves unset and their help."""
    out: dict[tuple[str, ...], list[tuple[str, str]]] = {}

    def add(path: tuple[str, ...], obj: Any, skip: tuple[str, ...] = ()) -> None:
        found = _unset(obj, skip)
        if found:
            out.setdefault(path, []).extend(found)

    for section in ("model", "data", "optim", "train"):
        add((section,), getattr(recipe, section))
    for name, task in recipe.tasks.items():
        add(("tasks", name), task.section, skip=("input", "head"))  # resolved: their own tables below
        add(("tasks", name, "input"), task.input.options)
        add(("tasks", name, "head"), task.head.options)
    add(("sampler",), recipe.sampler.options)
    add(("loss_combiner",), recipe.loss_combiner.options)
    for kind in ("gradient_transforms", "regularizers", "stages", "optimizer_groups"):
        for i, spec in enumerate(getattr(recipe, kind, [])):
            add((kind, str(i)), spec.options)
    if getattr(recipe, "weight_average", None) is not None:
        add(("weight_average",), recipe.weight_average.options)
    return out


def _header_path(line: str, counts: dict[tuple[str, ...], int]) -> tuple[str, ...] | None:
    match = re.match(r"^(\[\[?)(.+?)\]\]?\s*$", line)
    if not match:
        return None
    parts = tuple(p.strip().strip('"') for p in re.findall(r'"[^"]*"|[^.]+', match.group(2)))
    if match.group(1) == "[[":  # an array of tables: the n-th header is item n
        index = counts.get(parts, 0)
        counts[parts] = index + 1
        return (*parts, str(index))
    return parts


def _label(path: tuple[str, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if part.isdigit() and out else (f".{part}" if out else part)
    return out


def _comments(keys: list[tuple[str, str]], prefix: str = "") -> list[str]:
    return [f"# {prefix}{key} = <unset>  # {help_}" if help_ else f"# {prefix}{key} = <unset>" for key, help_ in keys]


def show_recipe(recipe: Any) -> str:
    """``recipe.to_toml()`` with a comment for every unset key, in the table it belongs to."""
    text = recipe.to_toml()
    unset = unset_keys(recipe)
    lines = text.splitlines()
    counts: dict[tuple[str, ...], int] = {}
    headers = {}
    for number, line in enumerate(lines):
        path = _header_path(line, counts)
        if path is not None:
            headers[number] = path
    shown = set(headers.values())
    root_extra = [c for path, keys in unset.items() if path not in shown for c in _comments(keys, _label(path) + ".")]
    out: list[str] = []
    current: tuple[str, ...] = ()

    def close(path: tuple[str, ...]) -> None:
        if path == ():
            out.extend(root_extra)
        elif path in unset:
            out.extend(_comments(unset[path]))

    for number, line in enumerate(lines):
        if number in headers:
            while out and not out[-1].strip():
                out.pop()
            close(current)
            out.append("")
            current = headers[number]
        out.append(line)
    close(current)
    return "\n".join(out) + "\n"
