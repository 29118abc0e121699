"""The recipes shipped with mtbert: find them by name, list them, copy them out.

The repository's top-level ``recipes/`` folder is installed as ``mtbert/recipes/`` in the wheel
(package data, see setup.py); in a source checkout or an editable install it is read where it
is. A recipe's name is its path under that folder without ``.toml`` (``quickstart``,
``ablations/pcgrad``), which is what ``mtbert recipes`` lists and ``mtbert run NAME`` takes.
A path that exists always wins over a name.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import attrs

import mtbert
from mtbert.errors import RecipeError


@attrs.define(frozen=True)
class ShippedRecipe:
    name: str
    path: Path
    description: str


def recipes_root() -> Path | None:
    """The folder of shipped recipes: in the installed package, else beside it in a checkout."""
    package = Path(mtbert.__file__).resolve().parent
    for candidate in (package / "recipes", package.parent / "recipes"):
        if candidate.is_dir() and any(candidate.glob("*.toml")):
            return candidate
    return None


def _description(path: Path) -> str:
    """The file's own ``description`` (not an included one), else its first comment sentence."""
    text = path.read_text(encoding="utf-8")
    try:
        described = tomllib.loads(text).get("description")
    except tomllib.TOMLDecodeError:
        described = None
    if isinstance(described, str) and described.strip():
        return described.strip()
    for line in text.splitlines():
        comment = line.strip().lstrip("#").strip()
        if line.startswith("#") and comment and not comment.startswith("Run:"):
            return comment
    return ""


def shipped_recipes() -> list[ShippedRecipe]:
    """Every shipped recipe, top-level ones first, then by folder and name."""
    root = recipes_root()
    if root is None:
        return []
    paths = sorted(root.rglob("*.toml"), key=lambda p: (len(p.relative_to(root).parts), str(p.relative_to(root))))
    return [ShippedRecipe(p.relative_to(root).with_suffix("").as_posix(), p, _description(p)) for p in paths]


def find_shipped(name: str) -> ShippedRecipe | None:
    wanted = re.sub(r"\.toml$", "", name.replace("\\", "/"))
    return next((r for r in shipped_recipes() if r.name == wanted), None)


def _unknown(name: str) -> RecipeError:
    names = [r.name for r in shipped_recipes()]
    from mtbert.schema import did_you_mean

    listed = ", ".join(names) if names else "(none installed)"
    return RecipeError(f"recipe '{name}': no such file and no shipped recipe of that name{did_you_mean(name, names)}; "
                       f"shipped recipes: {listed}")


def resolve_recipe(recipe: str | Path) -> Path:
    """The recipe file ``recipe`` names: an existing path wins, else a shipped recipe's name.

    An unknown name raises a :class:`RecipeError` listing the shipped recipes.
    """
    path = Path(recipe).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise RecipeError(f"recipe '{recipe}': is a folder, not a recipe file")
    shipped = find_shipped(str(recipe))
    if shipped is None:
        raise _unknown(str(recipe))
    return shipped.path


def _includes(path: Path) -> list[str]:
    try:
        value = tomllib.loads(path.read_text(encoding="utf-8")).get("include", [])
    except tomllib.TOMLDecodeError:
        return []
    return [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]


def copy_recipe(name: str, dest: str | Path | None = None, *, force: bool = False) -> list[Path]:
    """Write an editable copy of shipped recipe ``name`` (and the files it includes) and return the files written.

    ``dest`` is a file (``my.toml``) or an existing folder (the recipe keeps its file name);
    default: the current folder. Included files are copied beside it under their relative
    paths, so the copy runs as it is. Existing files are never overwritten unless ``force``.
    """
    shipped = find_shipped(name)
    if shipped is None:
        raise _unknown(name)
    target = Path(dest) if dest is not None else Path.cwd()
    if target.is_dir() or (dest is not None and str(dest).endswith(("/", "\\"))):
        target = target / shipped.path.name
    plan: list[tuple[Path, Path]] = [(shipped.path, target)]
    queue = [(shipped.path, target)]
    while queue:
        source, written = queue.pop()
        for include in _includes(source):
            pair = ((source.parent / include).resolve(), (written.parent / include))
            if pair[0].is_file() and all(pair[1] != p[1] for p in plan):
                plan.append(pair)
                queue.append(pair)
    if not force:
        existing = [str(t) for _, t in plan if t.exists()]
        if existing:
            raise RecipeError(f"recipes copy: {', '.join(existing)} already exists; choose another DEST or add --force")
    for source, written in plan:
        written.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, written)
    return [t for _, t in plan]
