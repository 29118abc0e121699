"""Typed, error-collecting conversion between TOML values and attrs classes.

Recipes and every component's options are attrs classes whose fields carry a type annotation,
a default and a ``help`` text (declared with :func:`option`). :func:`structure` turns a TOML
table into such a class and collects *every* problem with its dotted key path, so that a user
sees all mistakes of a recipe at once; :func:`unstructure` goes back to plain TOML values for
the resolved recipe a run records; :func:`describe` lists options for ``mtbert plugins``.

Supported annotations: ``int``, ``float`` (ints accepted), ``bool``, ``str``, ``Literal[...]``,
``X | None``, ``list[T]``, ``tuple[T, ...]``, ``dict[str, T]``, nested attrs classes and
``typing.Any``. Bounds come from ``option(min=..., max=...)``.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import attrs

_MISSING = attrs.NOTHING


def option(
    default: Any = _MISSING,
    *,
    help: str,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    max_exclusive: bool = False,
    finite: bool = True,
    factory: Any = None,
) -> Any:
    """Declare a recipe option: an attrs field with a help text and optional numeric bounds.

    Floats must be finite (``nan`` and ``inf`` are valid TOML) unless ``finite=False``.
    """
    metadata = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive, "max_exclusive": max_exclusive,
                "finite": finite}
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata, kw_only=True)
    if default is _MISSING:
        return attrs.field(metadata=metadata, kw_only=True)
    return attrs.field(default=default, metadata=metadata, kw_only=True)


def did_you_mean(value: str, choices: typing.Iterable[str]) -> str:
    """`` — did you mean 'x'?`` when a close choice exists, else an empty string."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" — did you mean '{close[0]}'?" if close else ""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "nothing"
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a table"
    if attrs.has(tp):
        return "a table"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


class Problems:
    """Collects problems as ``key.path: message`` lines."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))

    def __bool__(self) -> bool:
        return bool(self.items)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def convert(value: Any, tp: Any, path: str, problems: Problems) -> Any:
    """Check ``value`` against annotation ``tp``; return the converted value (or None on error)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        for candidate in candidates:
            trial = Problems()
            result = convert(value, candidate, path, trial)
            if not trial:
                return result
        if len(candidates) == 1:
            return convert(value, candidates[0], path, problems)
        problems.add(path, f"{_show(value)} is not {_type_name(tp)}")
        return None
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            problems.add(path, f"{_show(value)} is not allowed; choose one of {choices}{did_you_mean(value, map(str, allowed))}")
            return None
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.add(path, f"{_show(value)} is not {_type_name(tp)}")
            return None
        args = [a for a in get_args(tp) if a is not Ellipsis]
        item_tp = args[0] if args else Any
        items = [convert(v, item_tp, _join(path, i), problems) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            problems.add(path, f"{_show(value)} is not a table")
            return None
        _, value_tp = get_args(tp) or (str, Any)
        return {k: convert(v, value_tp, _join(path, k), problems) for k, v in value.items()}
    if attrs.has(tp):
        if not isinstance(value, dict):
            problems.add(path, f"{_show(value)} is not a table")
            return None
        return structure(tp, value, path, problems)
    if tp is bool:
        if not isinstance(value, bool):
            problems.add(path, f"{_show(value)} is not true or false")
            return None
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.add(path, f"{_show(value)} is not an integer")
            return None
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.add(path, f"{_show(value)} is not a number")
            return None
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.add(path, f"{_show(value)} is not a string")
            return None
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    problems.add(path, f"{_show(value)} is not {_type_name(tp)}")
    return None


def _check_bounds(field: attrs.Attribute, value: Any, path: str, problems: Problems) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):  # TOML spells them nan and inf
        if field.metadata.get("finite", True):
            problems.add(path, f"{value!r} is not a finite number")
        return
    low, high = field.metadata.get("min"), field.metadata.get("max")
    if low is not None:
        if field.metadata.get("min_exclusive") and value <= low:
            problems.add(path, f"{value!r} must be greater than {low}")
        elif value < low:
            problems.add(path, f"{value!r} must be at least {low}")
    if high is not None:
        if value > high:
            problems.add(path, f"{value!r} must be at most {high}")
        elif field.metadata.get("max_exclusive") and value == high:
            problems.add(path, f"{value!r} must be less than {high}")


def fields_of(cls: type) -> dict[str, attrs.Attribute]:
    attrs.resolve_types(cls)
    return {f.name: f for f in attrs.fields(cls) if f.init}


def structure(cls: type, table: dict[str, Any], path: str = "", problems: Problems | None = None) -> Any:
    """Build ``cls`` from a TOML table; unknown keys, wrong types and bounds become problems.

    With a ``problems`` collector the caller gets ``None`` on failure; without one a
    ``ValueError`` listing the problems is raised.
    """
    own = problems is None
    problems = problems if problems is not None else Problems()
    fields = fields_of(cls)
    before = len(problems.items)
    for key in table:
        if key not in fields:
            known = ", ".join(fields) or "no options"
            problems.add(_join(path, key), f"unknown key{did_you_mean(key, fields)} (allowed: {known})")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        key_path = _join(path, name)
        if name not in table:
            if field.default is _MISSING:
                problems.add(key_path, f"is required ({field.metadata.get('help', '')})".rstrip(" ()"))
            continue
        value = convert(table[name], field.type, key_path, problems)
        _check_bounds(field, value, key_path, problems)
        if isinstance(value, list):
            for i, item in enumerate(value):
                _check_bounds(field, item, _join(key_path, i), problems)
        kwargs[name] = value
    if len(problems.items) > before:
        if own:
            raise ValueError("; ".join(f"{p}: {m}" for p, m in problems.items))
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a class-level validator refused the combination
        problems.add(path or cls.__name__, str(exc))
        if own:
            raise ValueError(str(exc)) from None
        return None


def unstructure(obj: Any) -> Any:
    """Plain TOML-compatible values (``None`` fields dropped) from attrs objects."""
    if attrs.has(type(obj)):
        out = {}
        for field in attrs.fields(type(obj)):
            if not field.init or field.name.startswith("_"):
                continue
            value = unstructure(getattr(obj, field.name))
            if value is not None:
                out[field.name] = value
        return out
    if isinstance(obj, dict):
        return {k: unstructure(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [unstructure(v) for v in obj]
    return obj


def describe(cls: type) -> list[dict[str, Any]]:
    """One entry per option: name, type, default and help, for ``mtbert plugins``."""
    out = []
    for name, field in fields_of(cls).items():
        if field.default is _MISSING:
            default: Any = "(required)"
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            default = unstructure(field.default.factory())
        else:
            default = unstructure(field.default)
        entry = {"name": name, "type": _type_name(field.type), "default": default, "help": field.metadata.get("help", "")}
        for bound in ("min", "max"):
            if field.metadata.get(bound) is not None:
                entry[bound] = field.metadata[bound]
                if field.metadata.get(f"{bound}_exclusive"):
                    entry[f"{bound}_exclusive"] = True  # the bound itself is refused
        out.append(entry)
    return out


def first_line(text: str | None) -> str:
    """The first non-empty line of a docstring."""
    for line in (text or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""
