"""Component references in a recipe (a name, or ``{ name = "...", <options> }``): looked up in the
registry and their options checked against the component's attrs class."""

from __future__ import annotations

import inspect
from typing import Any

import attrs

from mtbert.plugins import KIND_LABELS, Plugins
from mtbert.recipe.resolved import ComponentSpec
from mtbert.schema import Problems, structure


def _component_ref(
    value: Any, path: str, problems: Problems, default: str | None = None
) -> tuple[str, dict[str, Any]] | None:
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict):
        name = value.get("name", default)
        if not isinstance(name, str):
            problems.add(join_key(path, "name"), "a component table needs name = \"...\"")
            return None
        return name, {k: v for k, v in value.items() if k != "name"}
    problems.add(path, f"{value!r} is not a component name or a {{ name = ... }} table")
    return None


def join_key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def resolve_component(
    kind: str, value: Any, path: str, plugins: Plugins, problems: Problems, context: str = "",
    default: str | None = None,
) -> ComponentSpec | None:
    """Look a component up by name and validate its options (a table without name takes ``default``)."""
    ref = _component_ref(value, path, problems, default)
    if ref is None:
        return None
    name, options = ref
    component = plugins.registry.find(kind, name)
    if component is None:
        message = plugins.registry.unknown_message(kind, name, context=context)
        problems.add(join_key(path, "name") if isinstance(value, dict) else path, message)
        return None
    factory = component.factory
    if not attrs.has(factory):
        problems.add(path, f"{kind} '{name}' from {component.provider} is not an attrs options class")
        return None
    opts_path = path
    built = structure(factory, options, opts_path, problems)
    if built is None:
        return None
    return ComponentSpec(kind=kind, name=name, options=built, component=component)


def task_component(kind: str, value: Any, input_kind: str, path: str, task_name: str, plugins: Plugins,
                   problems: Problems) -> ComponentSpec | None:
    """A task's input format or head; when the recipe names none, the one registered as the
    default for the task's input kind (``default_for`` on the options class)."""
    default = None
    if not isinstance(value, str) and not (isinstance(value, dict) and "name" in value):
        found = plugins.registry.defaults(kind, input_kind)
        label = KIND_LABELS[kind]
        if not found:
            problems.add(path, f"no installed {label} is the default for {input_kind} tasks; name one for task "
                               f"{task_name} (installed: {', '.join(plugins.registry.names(kind)) or 'none'})")
            return None
        if len(found) > 1:
            claims = ", ".join(f"'{c.name}' from {c.provider}" for c in found)
            problems.add(path, f"several {label}s declare themselves the default for {input_kind} tasks ({claims}); "
                               f"name one for task {task_name}")
            return None
        default = found[0].name
        value = default if value is None else value
    return resolve_component(kind, value, path, plugins, problems, context=f"for task {task_name}", default=default)


def component_list(kind: str, value: Any, path: str, plugins: Plugins, problems: Problems) -> list[ComponentSpec]:
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        problems.add(path, f"{value!r} is not a list of components")
        return []
    out = []
    for i, item in enumerate(value):
        spec = resolve_component(kind, item, f"{path}[{i}]", plugins, problems)
        if spec is not None:
            out.append(spec)
    return out


def accepts_pad_to(input_format: Any) -> bool:
    """Whether an input format's ``collate`` takes ``pad_to`` (needed by data.padding = "max_length")."""
    try:
        return "pad_to" in inspect.signature(input_format.collate).parameters
    except (AttributeError, TypeError, ValueError):
        return False
