"""Reading recipe files: TOML, ``include`` (recipes compose; the including file wins), ``--set``
overrides, and where a key is written (for error lines)."""

from __future__ import annotations

import copy
import re
import tomllib
import warnings
from pathlib import Path
from typing import Any, Iterable

from mtbert.errors import RecipeError


def _read_toml(path: Path, where: str) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"{where}: recipe file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a UTF-8 text file") from None


def merge_tables(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base`` (an including file over what it includes), tables merged key by key.

    A component table whose ``name`` changes replaces the included one instead: a base
    ``head = { name = "linear", pair = [...] }`` under a top ``head = { name = "cosine" }`` is
    a cosine head with cosine's defaults, not a cosine head that inherited linear's options.
    """
    out = copy.deepcopy(base)
    for key, value in top.items():
        below = out.get(key)
        if isinstance(value, dict) and isinstance(below, dict) and not _renamed(below, value):
            out[key] = merge_tables(below, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _renamed(below: dict[str, Any], value: dict[str, Any]) -> bool:
    return "name" in below and "name" in value and below["name"] != value["name"]


#: Recipe folders that moved: old path part -> new one. Old paths keep working, with a warning,
#: for one release (0.1 -> 0.2): ``recipes/seeds/`` held the project reports' recipes.
MOVED_FOLDERS = {("recipes", "seeds"): ("recipes", "reports")}


def moved_recipe(path: Path) -> Path:
    """``path``, or where its recipe moved (with a FutureWarning) when it names a moved folder."""
    if path.exists():
        return path
    parts = path.parts
    for (old_parent, old_name), new in MOVED_FOLDERS.items():
        for i in range(len(parts) - 1):
            if parts[i:i + 2] == (old_parent, old_name):
                moved = Path(*parts[:i], *new, *parts[i + 2:])
                if moved.exists():
                    warnings.warn(f"{path}: {old_parent}/{old_name}/ is now {'/'.join(new)}/; reading {moved} "
                                  f"(the old path stops working in the next release)", FutureWarning, stacklevel=2)
                    return moved
    return path


def read_with_includes(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Path]]:
    """The recipe table with its includes merged in, and every file read (for error lines)."""
    path = moved_recipe(Path(path)).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise RecipeError(f"{path}: include cycle: {cycle}")
    table = _read_toml(path, str(_chain[-1]) if _chain else "recipe")
    merged, files = with_includes(table, path.parent, str(path), (*_chain, path))
    return merged, [path, *files]


def with_includes(table: dict[str, Any], folder: Path, where: str,
                  _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Path]]:
    """``table`` over the files its ``include`` names (relative to ``folder``), and those files.

    ``where`` names the table in errors (its file, or ``recipe dict`` for the Python API).
    """
    table = dict(table)
    includes = table.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise RecipeError(f"{where}: include: must be a file name or a list of file names")
    merged: dict[str, Any] = {}
    files: list[Path] = []
    for include in includes:
        included_path = folder / include
        if not included_path.is_file():
            raise RecipeError(f"{where}: include: file not found: {included_path}")
        sub, sub_files = read_with_includes(included_path, _chain)
        merged = merge_tables(merged, sub)
        files.extend(sub_files)
    return merge_tables(merged, table), files


_INDEX = re.compile(r"^\d+$")


_KEY_PART = re.compile(r"^([^\[\]]*)((?:\[\d+\])*)$")


def split_key(key: str) -> list[str] | None:
    """``gradient_transforms[0].c`` -> ``["gradient_transforms", "0", "c"]``; None when malformed.

    List items are reached with the names ``compare`` and TensorBoard print (``name[0]``); a
    bare index (``gradient_transforms.0.c``) works too.
    """
    parts: list[str] = []
    for piece in key.split("."):
        match = _KEY_PART.match(piece.strip())
        if match is None or (not match.group(1) and not match.group(2)):
            return None
        if match.group(1):
            parts.append(match.group(1))
        parts.extend(re.findall(r"\[(\d+)\]", match.group(2)))
    return parts or None


def key_label(parts: list[str]) -> str:
    """The printed name of a key path: ``["stages", "0", "epochs"]`` -> ``stages[0].epochs``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if _INDEX.match(part) and out else (f".{part}" if out else part)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b[0].c=value`` -> (["a", "b", "0", "c"], value), the value read as a TOML value when it parses."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected KEY.PATH=VALUE")
    key, raw = text.split("=", 1)
    parts = split_key(key.strip())
    if parts is None:
        raise RecipeError(f"--set {text!r}: empty key in the key path")
    if parts[0] == "include":
        raise RecipeError(f"--set {text}: include cannot be overridden (it is read before --set applies); "
                          "write include = ... in a recipe file (mtbert recipes copy NAME gives an editable one)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare words are strings: --set sampler.name=loop
    return parts, value


def apply_overrides(table: dict[str, Any], texts: Iterable[str]) -> dict[str, Any]:
    """Apply ``--set`` strings to a recipe table in place, in order; returns the table."""
    for text in texts:
        parts, value = parse_override(text)
        apply_override(table, parts, value, text)
    return table


def override_key(text: str) -> str:
    """The key path a ``--set`` string sets, as problems print it (``"stages.0.epochs=2"`` -> ``"stages[0].epochs"``)."""
    return key_label(parse_override(text)[0])


def apply_override(table: dict[str, Any], parts: list[str], value: Any, text: str) -> None:
    """Set one parsed override; a component given by name gains options, list items by index."""
    node: Any = table
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            if not _INDEX.match(part) or int(part) >= len(node):
                raise RecipeError(f"--set {text}: {key_label(parts[:i + 1])}: no such list item "
                                  f"(the list has {len(node)} item{'s' if len(node) != 1 else ''})")
            node = node[int(part)]
            continue
        child = node.get(part)
        if child is None:
            child = [] if _INDEX.match(nxt) else {}
            node[part] = child
        elif isinstance(child, str) and not _INDEX.match(nxt):
            child = {"name": child}  # a component given by name gains options
            node[part] = child
        elif not isinstance(child, (dict, list)):
            raise RecipeError(f"--set {text}: {key_label(parts[:i + 1])} is {child!r}, not a table")
        node = child
    last = parts[-1]
    if isinstance(node, list):
        if not _INDEX.match(last) or int(last) >= len(node):
            raise RecipeError(f"--set {text}: {key_label(parts)}: no such list item "
                              f"(the list has {len(node)} item{'s' if len(node) != 1 else ''})")
        node[int(last)] = value
    else:
        node[last] = value


def locate(key_path: str, files: list[Path]) -> str:
    """Best effort ``file:line`` where ``key_path`` (``tasks.sts.head.name``) is written."""
    parts = [p for p in re.split(r"\.|\[\d+\]", key_path) if p]
    best: tuple[int, str] | None = None
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        table: list[str] = []
        for number, line in enumerate(lines, 1):
            stripped = line.strip()
            header = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?", stripped)
            if header:
                table = [p.strip().strip('"') for p in header.group(1).split(".")]
                full = table
            else:
                assignment = re.match(r'^([A-Za-z0-9_\-."]+)\s*=', stripped)
                if not assignment:
                    continue
                full = table + [p.strip().strip('"') for p in assignment.group(1).split(".")]
            common = 0
            for a, b in zip(full, parts):
                if a != b:
                    break
                common += 1
            if common == len(full) and common > 0 and (best is None or common > best[0]):
                best = (common, f"{path}:{number}")
    return best[1] if best else str(files[0])
