"""Plugin loading and the component registry.

Plugins are Python modules (or objects) advertised in the ``mtbert`` entry-point group; the
builtins in ``plugins/`` use that same group. Loading is explicit and happens once: the CLI or
:func:`get_plugins` triggers it, importing mtbert never does.

Each entry point is loaded on its own, so one broken plugin is a one-line report, not a dead
CLI: an import that raises, or even calls ``sys.exit()``, is caught (everything but
KeyboardInterrupt) and reported naming the plugin. mtbert's builtin plugins load and register
first, so their component names are theirs: a third-party plugin registering a builtin name
(head ``linear``...) is the one reported, naming its distribution, and recipes keep the builtin.
Environment variables control loading:

``MTBERT_PLUGINS``
    Comma-separated entry-point names to load (all others are skipped). ``builtin`` stands
    for every plugin shipped with mtbert. Empty string: load none.
``MTBERT_DISABLE_PLUGINS``
    Comma-separated entry-point names never to load.
``MTBERT_STRICT_PLUGINS=1``
    A plugin that fails to load or registers a duplicate name stops mtbert, and so does a name
    in ``MTBERT_PLUGINS`` / ``MTBERT_DISABLE_PLUGINS`` that no installed plugin has (a typo).
``MTBERT_TRACE_HOOKS=1``
    Print every hook call to stderr.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
import types
from typing import Any, Callable, Iterable

import attrs
import pluggy

from mtbert import hookspecs
from mtbert.errors import PluginError, RecipeError
from mtbert.schema import did_you_mean

ENTRY_POINT_GROUP = "mtbert"
BUILTIN_DISTRIBUTION = "mtbert"

#: kind name -> registration hook name. The order is the order ``mtbert plugins`` prints.
KINDS: dict[str, str] = {
    "task": "mtbert_register_tasks",
    "checkpoint": "mtbert_register_checkpoints",
    "input_format": "mtbert_register_input_formats",
    "head": "mtbert_register_heads",
    "sampler": "mtbert_register_samplers",
    "loss_combiner": "mtbert_register_loss_combiners",
    "gradient_transform": "mtbert_register_gradient_transforms",
    "regularizer": "mtbert_register_regularizers",
    "stage": "mtbert_register_stages",
    "optimizer_groups": "mtbert_register_optimizer_groups",
    "weight_average": "mtbert_register_weight_averages",
}

#: How a kind is spelled in messages ("unknown loss combiner 'x'").
KIND_LABELS = {k: k.replace("_", " ") for k in KINDS}


@attrs.define
class PluginInfo:
    """One loaded (or failed) plugin, as ``mtbert plugins`` and ``run.json`` report it."""

    name: str
    module: str
    distribution: str
    version: str
    hooks: list[str] = attrs.field(factory=list)
    components: list[str] = attrs.field(factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class Component:
    """A registered component: its kind, name, factory and who provided it."""

    kind: str
    name: str
    factory: Any
    plugin: str
    distribution: str
    version: str

    @property
    def provider(self) -> str:
        return f"plugin '{self.plugin}' ({self.distribution} {self.version})"


class Registry:
    """Components by kind and name, with the failures met while loading them."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        self.failures: list[str] = []

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def find(self, kind: str, name: str) -> Component | None:
        return self.components[kind].get(name)

    def get(self, kind: str, name: str, *, where: str = "", context: str = "") -> Component:
        """The component or a :class:`RecipeError` naming the installed choices."""
        found = self.find(kind, name)
        if found is not None:
            return found
        raise RecipeError(self.unknown_message(kind, name, where=where, context=context))

    def defaults(self, kind: str, input_kind: str) -> list[Component]:
        """The components of ``kind`` that declare themselves the default for tasks of ``input_kind``.

        A recipe that names no input format or head for a task gets the one component whose
        options class lists the task's input kind (``"single"``, ``"pair"``) in its ``default_for``
        class attribute (see CONTRIBUTING.md); the recipe validator reports none or several.
        """
        return [c for name, c in sorted(self.components[kind].items())
                if input_kind in tuple(getattr(c.factory, "default_for", ()) or ())]

    def unknown_message(self, kind: str, name: str, *, where: str = "", context: str = "") -> str:
        installed = ", ".join(self.names(kind)) or "none"
        label = KIND_LABELS[kind]
        prefix = f"{where}: " if where else ""
        ctx = f" {context}" if context else ""
        message = f"{prefix}unknown {label} '{name}'{ctx}; installed: {installed}{did_you_mean(name, self.names(kind))}"
        if self.failures:
            message += "; note: " + " | ".join(self.failures)
        return message


@attrs.define
class Plugins:
    """The loaded plugin manager, what each plugin is, and the registry it filled."""

    manager: pluggy.PluginManager
    plugins: list[PluginInfo]
    registry: Registry

    @property
    def hook(self) -> Any:
        return self.manager.hook

    def record(self) -> list[dict[str, Any]]:
        """What run.json and TensorBoard keep about the code that made a run."""
        return [p.as_dict() for p in self.plugins]


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [item.strip() for item in raw.split(",") if item.strip()]


def _strict() -> bool:
    return os.environ.get("MTBERT_STRICT_PLUGINS", "").lower() in ("1", "true", "yes")


def _wanted(ep: md.EntryPoint, selected: list[str] | None, disabled: list[str]) -> bool:
    dist = ep.dist.name if ep.dist is not None else ""
    if ep.name in disabled:
        return False
    if selected is None:
        return True
    if ep.name in selected:
        return True
    return "builtin" in selected and dist == BUILTIN_DISTRIBUTION


def _load_order(ep: md.EntryPoint) -> tuple[int, str]:
    """mtbert's builtins first (their names are theirs), then the others by entry-point name."""
    dist = ep.dist.name if ep.dist is not None else ""
    return (0 if dist == BUILTIN_DISTRIBUTION else 1, ep.name)


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}) while loading"
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _check_names(found: list[md.EntryPoint], selected: list[str] | None, disabled: list[str],
                 failures: list[str], warn: Callable[[str], None] | None) -> None:
    """A name in MTBERT_PLUGINS / MTBERT_DISABLE_PLUGINS that no plugin has is a typo: say so."""
    names = sorted({ep.name for ep in found})
    for variable, listed in (("MTBERT_PLUGINS", selected or []), ("MTBERT_DISABLE_PLUGINS", disabled)):
        for name in listed:
            if name in names or (variable == "MTBERT_PLUGINS" and name == "builtin"):
                continue
            _fail(failures, f"{variable}: no installed plugin is named '{name}'{did_you_mean(name, names)} "
                            f"(installed: see mtbert plugins)")


def _hook_names(plugin: Any) -> list[str]:
    return sorted(
        name for name in dir(plugin) if name.startswith("mtbert_") and callable(getattr(plugin, name, None))
    )


def _fail(failures: list[str], message: str) -> None:
    if _strict():
        raise PluginError(message)
    failures.append(message)


def load_plugins(
    extra: Iterable[tuple[str, Any]] = (),
    *,
    entry_points: bool = True,
    warn: Callable[[str], None] | None = None,
) -> Plugins:
    """Load entry-point plugins (filtered by the environment) and ``extra`` (name, plugin) pairs.

    Returns the manager, what each plugin is, and the filled :class:`Registry`. Failures are
    collected as one-line messages (and passed to ``warn``) unless ``MTBERT_STRICT_PLUGINS``
    makes them fatal.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    tracing = os.environ.get("MTBERT_TRACE_HOOKS", "").lower() in ("1", "true", "yes")
    if tracing:  # event hooks go through pluggy's tracer; registration calls are traced below
        pm.trace.root.setwriter(lambda message: sys.stderr.write(message))
        pm.enable_tracing()

    infos: list[PluginInfo] = []
    registry = Registry()
    failures = registry.failures
    candidates: list[tuple[str, Callable[[], Any], str, str]] = []

    if entry_points:
        selected = _env_list("MTBERT_PLUGINS")
        disabled = _env_list("MTBERT_DISABLE_PLUGINS") or []
        seen: set[str] = set()
        found = sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=_load_order)
        _check_names(found, selected, disabled, failures, warn)
        for ep in found:
            if ep.name in seen or not _wanted(ep, selected, disabled):
                continue
            seen.add(ep.name)
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else "?"
            candidates.append((ep.name, ep.load, dist, version))
    for name, plugin in extra:
        candidates.append((name, (lambda p=plugin: p), "(in-process)", "-"))

    valid_hooks = {name for name in dir(hookspecs) if name.startswith("mtbert_")}
    for name, load, dist, version in candidates:
        info = PluginInfo(name=name, module="", distribution=dist, version=version)
        infos.append(info)
        try:
            plugin = load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken plugin (even one calling sys.exit) is a report, not a crash
            info.error = _describe_failure(exc)
            _fail(failures, f"plugin {name} {version} ({dist}) failed to load: {info.error}")
            continue
        info.module = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__name__
        info.hooks = _hook_names(plugin)
        unknown = [h for h in info.hooks if h not in valid_hooks]
        if unknown:
            info.error = f"unknown hook {unknown[0]}{did_you_mean(unknown[0], valid_hooks)}"
            _fail(failures, f"plugin {name} {version} ({dist}) implements {info.error}")
            continue
        try:
            pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            info.error = str(exc).splitlines()[0]
            _fail(failures, f"plugin {name} {version} ({dist}) failed to register: {info.error}")
            continue

    by_name = {info.name: info for info in infos}
    for kind, hook_name in KINDS.items():
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():  # registration order
            info = by_name[impl.plugin_name]
            added: list[str] = []

            def register(component_name: str, factory: Any, _info=info, _kind=kind, _added=added) -> None:
                if not isinstance(component_name, str) or not component_name:
                    raise PluginError(f"component names must be non-empty strings, got {component_name!r}")
                existing = registry.components[_kind].get(component_name)
                if existing is not None:
                    raise PluginError(
                        f"duplicate {KIND_LABELS[_kind]} '{component_name}': registered by {existing.provider} "
                        f"and by plugin '{_info.name}' ({_info.distribution} {_info.version})"
                    )
                registry.components[_kind][component_name] = Component(
                    kind=_kind, name=component_name, factory=factory, plugin=_info.name,
                    distribution=_info.distribution, version=_info.version,
                )
                _added.append(component_name)

            if tracing:
                sys.stderr.write(f"{hook_name} [plugin {info.name}]\n")
            try:
                impl.function(register=register)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                message = str(exc) if isinstance(exc, PluginError) else _describe_failure(exc)
                info.error = message.splitlines()[0]
                _fail(failures, f"plugin {info.name} {info.version} ({info.distribution}): {info.error}")
            info.components.extend(f"{kind}:{n}" for n in added)

    if warn is not None:
        for failure in failures:
            warn(failure)
    return Plugins(manager=pm, plugins=infos, registry=registry)


_CACHED: Plugins | None = None


def get_plugins(*, reload: bool = False, warn: Callable[[str], None] | None = None) -> Plugins:
    """The process-wide plugins, loaded on first use."""
    global _CACHED
    if _CACHED is None or reload:
        _CACHED = load_plugins(warn=warn)
    return _CACHED


def set_plugins(plugins: Plugins | None) -> None:
    """Install a specific plugin set (tests use this to stay isolated)."""
    global _CACHED
    _CACHED = plugins


def check_requirements(requires: Iterable[str], plugins: Plugins, *, where: str = "requires") -> list[str]:
    """Problems with a recipe's ``requires = ["dist>=1.0", ...]`` against what is installed."""
    from packaging.requirements import InvalidRequirement, Requirement

    problems = []
    loaded = {p.distribution.lower().replace("_", "-"): p for p in plugins.plugins}
    names = {p.name.lower(): p for p in plugins.plugins}
    for text in requires:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            problems.append(f"{where}: {text!r} is not a valid requirement ({exc})")
            continue
        key = req.name.lower().replace("_", "-")
        info = loaded.get(key) or names.get(key)
        if info is None:
            problems.append(f"{where}: plugin {req.name} is required but not installed (pip install '{text}')")
            continue
        if info.error:
            problems.append(f"{where}: plugin {req.name} is required but failed to load: {info.error}")
            continue
        if req.specifier and info.version not in ("?", "-") and not req.specifier.contains(info.version, prereleases=True):
            problems.append(f"{where}: plugin {req.name} {info.version} is installed but {text!r} is required")
    return problems
