"""Validating a recipe table into a :class:`~mtbert.recipe.resolved.Recipe`, every problem at once.

``validate`` reads each part with a named check below; every check adds ``(key path,
message)`` problems to one :class:`~mtbert.schema.Problems`, so a recipe with five mistakes
reports five lines, and ``load_recipe`` points each at the file and line (or the ``--set``)
that wrote it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mtbert.errors import RecipeError
from mtbert.plugins import Plugins, check_requirements
from mtbert.recipe.reading import apply_overrides, locate, moved_recipe, override_key, read_with_includes
from mtbert.recipe.resolve import accepts_pad_to, component_list, resolve_component, task_component
from mtbert.recipe.resolved import ComponentSpec, Recipe, TaskRecipe
from mtbert.recipe.sections import (
    TOP_LEVEL, DataSection, ModelSection, OptimSection, TaskSection, TrainSection,
)
from mtbert.recipe.sweep_table import check_sweep_table
from mtbert.schema import Problems, did_you_mean, structure

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_top_level(table: dict[str, Any], problems: Problems) -> None:
    for key in table:
        if key not in TOP_LEVEL:
            problems.add(key, f"unknown key{did_you_mean(key, TOP_LEVEL)} (allowed: {', '.join(sorted(TOP_LEVEL))})")


def read_identity(table: dict[str, Any], source: str, plugins: Plugins, problems: Problems) -> tuple[Any, Any, Any, list[str]]:
    """``name``, ``seed``, ``description`` and ``requires`` (whose plugins must be installed)."""
    name = table.get("name", Path(source).stem if source else "run")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.add("name", f"{name!r} must be a string of letters, digits, '-', '_' or '.'")
    seed = table.get("seed", 11711)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        problems.add("seed", f"{seed!r} is not a non-negative integer")
    description = table.get("description", "")
    if not isinstance(description, str):
        problems.add("description", f"{description!r} is not a string")
    requires = table.get("requires", [])
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        problems.add("requires", f"{requires!r} is not a list of requirement strings")
        requires = []
    for message in check_requirements(requires, plugins):
        problems.add("requires", message.split(": ", 1)[1])
    return name, seed, description, requires


def read_section(table: dict[str, Any], key: str, cls: type, problems: Problems) -> Any:
    raw = table.get(key, {})
    if not isinstance(raw, dict):
        problems.add(key, f"{raw!r} is not a table")
        return None
    return structure(cls, raw, key, problems)


def check_checkpoint(model: ModelSection | None, plugins: Plugins, problems: Problems) -> None:
    """``model.checkpoint`` names a registered checkpoint or an existing folder."""
    if model is None:
        return
    registry, checkpoint = plugins.registry, model.checkpoint
    if registry.find("checkpoint", checkpoint) is None and not Path(checkpoint).expanduser().is_dir():
        if "/" in checkpoint or checkpoint.startswith("."):
            problems.add("model.checkpoint", f"folder not found: {checkpoint}")
        else:
            problems.add("model.checkpoint", registry.unknown_message("checkpoint", checkpoint)
                         + " (or give a local HF-format BERT folder)")


def read_task(task_name: str, raw: Any, plugins: Plugins, problems: Problems) -> TaskRecipe | None:
    """One ``[tasks.<name>]`` table: a registered task, its section, input format and head."""
    path = f"tasks.{task_name}"
    component = plugins.registry.find("task", task_name)
    if component is None:
        problems.add(path, plugins.registry.unknown_message("task", task_name))
        return None
    if raw is True or raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add(path, f"{raw!r} is not a table")
        return None
    raw = dict(raw)
    head_raw, input_raw = raw.pop("head", None), raw.pop("input", None)
    task_section = structure(TaskSection, raw, path, problems)
    spec = component.factory
    input_spec = task_component("input_format", input_raw, spec.input_kind, f"{path}.input", task_name, plugins, problems)
    head_spec = task_component("head", head_raw, spec.input_kind, f"{path}.head", task_name, plugins, problems)
    if input_spec is not None:
        reason = input_spec.options.check(spec)
        if reason:
            problems.add(f"{path}.input", f"'{input_spec.name}' cannot serve task {task_name}: {reason}")
    if head_spec is not None and hasattr(head_spec.options, "check"):
        reason = head_spec.options.check(spec, input_spec.options if input_spec else None)
        if reason:
            problems.add(f"{path}.head", f"'{head_spec.name}' cannot serve task {task_name}: {reason}")
    if task_section is None or input_spec is None or head_spec is None:
        return None
    return TaskRecipe(task_name, spec, task_section, input_spec, head_spec)


def check_step_modes(sampler: ComponentSpec | None, combiner: ComponentSpec | None,
                     transforms: list[ComponentSpec], problems: Problems) -> None:
    """Combiners and transforms that compare tasks within a step need a sampler that gives them all."""
    if sampler is None:
        return
    mode = getattr(sampler.options, "step", "one-task")
    for spec, where in [(combiner, "loss_combiner"), *((t, f"gradient_transforms[{i}]") for i, t in enumerate(transforms))]:
        needed = getattr(spec.options, "requires_step_mode", None) if spec is not None else None
        if needed and needed != mode:
            problems.add(where, f"'{spec.name}' needs a batch of every task per step, but sampler '{sampler.name}' "
                                f"gives step = {mode!r}; set sampler.step = \"{needed}\"")


def check_transform_order(transforms: list[ComponentSpec], problems: Problems) -> None:
    """Per-task transforms come first, and at most one combines per-task gradients."""
    seen_summed = None
    for i, t in enumerate(transforms):
        needs = getattr(t.options, "needs", "summed")
        if needs == "per-task" and seen_summed is not None:
            problems.add(f"gradient_transforms[{i}]", f"'{t.name}' works on per-task gradients, so it must come "
                                                      f"before '{seen_summed}', which works on their sum")
        if needs != "per-task" and seen_summed is None:
            seen_summed = t.name
    per_task = [t.name for t in transforms if getattr(t.options, "needs", "") == "per-task"]
    if len(per_task) > 1:
        problems.add("gradient_transforms", f"at most one transform may combine per-task gradients; found {', '.join(per_task)}")


def check_named_tasks(named: list[tuple[ComponentSpec | None, str]], task_names: list[str], problems: Problems) -> None:
    """Components whose options name tasks (``loop.to``, ``weights = {...}``) name the recipe's."""
    for spec, where in named:
        check = getattr(spec.options, "check_tasks", None) if spec is not None else None
        if check is not None:
            reason = check(list(task_names))
            if reason:
                problems.add(where, f"'{spec.name}': {reason}")


def check_stage_tasks(stages: list[ComponentSpec], task_names: list[str], problems: Problems) -> None:
    for i, stage in enumerate(stages):
        for task_name in getattr(stage.options, "tasks", None) or []:
            if task_name not in task_names:
                problems.add(f"stages[{i}].tasks",
                             f"task '{task_name}' is not configured under [tasks]{did_you_mean(task_name, task_names)}")


def check_padding(data: DataSection | None, tasks: dict[str, TaskRecipe], problems: Problems) -> None:
    """``data.padding = "max_length"`` needs input formats whose collate takes ``pad_to``."""
    if data is None or data.padding != "max_length":
        return
    for task_name, task_recipe in tasks.items():
        if not accepts_pad_to(task_recipe.input.options):
            problems.add(f"tasks.{task_name}.input", f"'{task_recipe.input.name}' pads batches dynamically only "
                                                     "(its collate takes no pad_to); use data.padding = \"dynamic\"")


def check_select(train: TrainSection | None, tasks: dict[str, TaskRecipe], problems: Problems) -> None:
    """``train.select`` is ``mean`` or a dev metric of the recipe's tasks."""
    if train is None or not tasks or train.select == "mean":
        return
    keys = {t.spec.metric_key for t in tasks.values()}
    if train.select not in keys:
        problems.add("train.select", f"{train.select!r} is not a dev metric of this recipe; choose mean or one of "
                                     f"{', '.join(sorted(keys))}")


def validate(table: dict[str, Any], plugins: Plugins, *, source: str = "") -> Recipe:
    """Turn a merged recipe table into a :class:`Recipe`, or raise every problem at once."""
    problems = Problems()
    check_top_level(table, problems)
    name, seed, description, requires = read_identity(table, source, plugins, problems)
    model = read_section(table, "model", ModelSection, problems)
    data = read_section(table, "data", DataSection, problems)
    optim = read_section(table, "optim", OptimSection, problems)
    train = read_section(table, "train", TrainSection, problems)
    if optim is not None and len(optim.betas) != 2:
        problems.add("optim.betas", f"{optim.betas!r} must hold two numbers")
    check_checkpoint(model, plugins, problems)

    raw_tasks = table.get("tasks", {})
    if not isinstance(raw_tasks, dict) or not raw_tasks:
        problems.add("tasks", "a recipe needs at least one [tasks.<name>] table; installed tasks: "
                     + ", ".join(plugins.registry.names("task")))
        raw_tasks = {}
    tasks = {n: t for n, t in ((n, read_task(n, raw, plugins, problems)) for n, raw in raw_tasks.items()) if t}
    task_names = list(raw_tasks)

    sampler = resolve_component("sampler", table.get("sampler", "round-robin"), "sampler", plugins, problems,
                                default="round-robin")
    combiner = resolve_component("loss_combiner", table.get("loss_combiner", "sum"), "loss_combiner", plugins, problems,
                                 default="sum")
    transforms = component_list("gradient_transform", table.get("gradient_transforms"), "gradient_transforms", plugins, problems)
    regularizers = component_list("regularizer", table.get("regularizers"), "regularizers", plugins, problems)
    stages = component_list("stage", table.get("stages", [{"name": "multitask"}]), "stages", plugins, problems)
    if not stages and "stages" in table:
        problems.add("stages", "a recipe needs at least one stage")

    check_step_modes(sampler, combiner, transforms, problems)
    check_transform_order(transforms, problems)
    check_named_tasks([(sampler, "sampler"), (combiner, "loss_combiner"),
                       *((t, f"gradient_transforms[{i}]") for i, t in enumerate(transforms)),
                       *((r, f"regularizers[{i}]") for i, r in enumerate(regularizers))], task_names, problems)
    check_stage_tasks(stages, task_names, problems)
    check_padding(data, tasks, problems)
    check_select(train, tasks, problems)
    if "sweep" in table:
        for where, message in check_sweep_table(table["sweep"], {t.spec.metric_key for t in tasks.values()} or None):
            problems.add(where, message)

    if problems:
        raise RecipeError([f"{p}: {m}" for p, m in problems.items])
    return Recipe(
        name=name, seed=seed, description=description, requires=requires, model=model, data=data,
        optim=optim, train=train, tasks=tasks, sampler=sampler, loss_combiner=combiner,
        gradient_transforms=transforms, regularizers=regularizers, stages=stages, source=source,
    )


def load_recipe(path: str | Path, overrides: list[str] = (), plugins: Plugins | None = None) -> Recipe:
    """Read, compose, override and validate a recipe file."""
    from mtbert.plugins import get_plugins

    plugins = plugins or get_plugins()
    path = moved_recipe(Path(path))
    table, files = read_with_includes(path)
    apply_overrides(table, overrides)
    override_keys = {override_key(text) for text in overrides}
    try:
        return validate(table, plugins, source=str(path))
    except RecipeError as exc:
        lines = []
        for problem in exc.problems:
            key = problem.split(": ", 1)[0]
            if any(key == k or key.startswith((f"{k}.", f"{k}[")) for k in override_keys):
                lines.append(f"--set {problem}")
            else:
                lines.append(f"{locate(key, files)}: {problem}")
        raise RecipeError(lines) from None
