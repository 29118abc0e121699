"""Recipes: TOML files that compose plugins and hyperparameters.

``load_recipe(path, overrides)`` reads the file with :mod:`tomllib`, applies ``include``
(recipes compose; the including file wins), then ``--set key.path=value`` overrides, then
validates everything (sections, task names, every component name and every component option)
before any work starts. All problems are collected and raised together as a
:class:`~mtbert.errors.RecipeError`, each line naming the file (and line when it can be
found), the key path, the value and what is allowed.

Component references (``head``, ``input``, ``sampler``, ``loss_combiner``,
``[[gradient_transforms]]``, ``[[regularizers]]``, ``[[stages]]``) are either a name or a table
``{ name = "...", <options> }``; options are checked against the component's attrs class.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import attrs
import tomli_w

from mtbert.errors import RecipeError
from mtbert.plugins import KIND_LABELS, Component, Plugins, check_requirements
from mtbert.schema import Problems, did_you_mean, option, structure, unstructure

DATA_DIR_ENV = "MTBERT_DATA_DIR"


# --------------------------------------------------------------------------- sections
@attrs.define
class ModelSection:
    checkpoint: str = option("minilm-l6", help="named checkpoint (mtbert plugins lists them) or a local HF-format BERT folder")
    mode: Literal["finetune", "pretrain"] = option("finetune", help="finetune: train the encoder too; pretrain: freeze it, train heads only")
    hidden_dropout: float | None = option(None, help="dropout on hidden states, 0 <= p < 1 (default: the checkpoint's)", min=0, max=1,
                                          max_exclusive=True)
    attention_dropout: float | None = option(None, help="dropout on attention probabilities, 0 <= p < 1 (default: the checkpoint's)",
                                             min=0, max=1, max_exclusive=True)
    attention: Literal["sdpa", "math"] = option("sdpa", help="attention kernel: fused scaled_dot_product_attention or the explicit math path")
    gradient_checkpointing: bool = option(False, help="recompute layer activations in backward to save memory")


@attrs.define
class DataSection:
    dir: str | None = option(None, help=f"folder with the CS224N files (default: ${DATA_DIR_ENV}, else ./data)")
    max_length: int = option(128, help="longest token sequence kept (pairs: both sentences together)", min=8, max=512)
    strict: bool = option(False, help="stop on dirty rows instead of skipping them with a counted warning")
    eval_batch_size: int = option(128, help="batch size for dev/test evaluation", min=1)
    slice_seed: int = option(0, help="seed of the random rows that tasks.<name>.*_limit keep (fixed, so runs with different seeds see the same slice)", min=0)
    bucket: bool = option(True, help="batch examples of similar length together (less padding), shuffling batch order")
    padding: Literal["dynamic", "max_length"] = option(
        "dynamic", help="dynamic: pad each batch to its longest sequence; max_length: pad every batch to data.max_length (slower; for comparison)"
    )
    cache: bool = option(True, help="keep tokenized splits in .mtbert-cache/ (or $MTBERT_CACHE_DIR), keyed by file hash, slice, tokenizer and input format")


@attrs.define
class TaskSection:
    input: Any = option(None, help="input format (single, separate-pair, ...; default by the task's input kind)")
    head: Any = option(None, help="task head: a name or { name = ..., options } (default by the task's input kind: linear)")
    train_file: str | None = option(None, help="training file (default: the task's file in data.dir)")
    dev_file: str | None = option(None, help="dev file (default: the task's file in data.dir)")
    test_file: str | None = option(None, help="test file (default: the task's file in data.dir)")
    train_limit: int | None = option(None, help="train on N randomly chosen valid rows (see data.slice_seed)", min=1)
    dev_limit: int | None = option(None, help="evaluate on N randomly chosen valid dev rows", min=1)
    test_limit: int | None = option(None, help="predict N randomly chosen test rows", min=1)
    batch_size: int | None = option(None, help="this task's training batch size (default: optim.batch_size)", min=1)


@attrs.define
class OptimSection:
    lr: float = option(2e-5, help="peak learning rate of the encoder", min=0, min_exclusive=True)
    head_lr: float | None = option(None, help="learning rate of the heads (default: lr)", min=0, min_exclusive=True)
    weight_decay: float = option(0.01, help="AdamW decoupled weight decay (not applied to biases and LayerNorm)", min=0)
    betas: list[float] = option(factory=lambda: [0.9, 0.999], help="AdamW betas", min=0, max=1, max_exclusive=True)
    eps: float = option(1e-8, help="AdamW epsilon", min=0, min_exclusive=True)
    epochs: int = option(3, help="epochs of the multitask stage", min=1)
    batch_size: int = option(16, help="training batch size per task", min=1)
    schedule: Literal["linear-warmup", "constant", "constant-warmup", "cosine-warmup"] = option(
        "linear-warmup", help="learning-rate schedule: linear warm-up then linear decay to 0, constant, ..."
    )
    warmup: float = option(0.1, help="warm-up length as a fraction of all optimizer steps", min=0, max=1)
    grad_accumulation: int = option(1, help="optimizer steps happen every N sampler steps", min=1)


@attrs.define
class TrainSection:
    device: str = option("auto", help="auto (cuda when available), cpu, cuda, cuda:N or mps")
    precision: Literal["fp32", "bf16"] = option("fp32", help="bf16 autocast for the forward pass (CUDA; CPU works but is slow)")
    patience: int | None = option(None, help="stop after N evaluations without improving the selection metric", min=1)
    select: str = option("mean", help="dev metric that picks the best checkpoint (mean, sst_acc, ...)")
    log_every: int = option(10, help="log training scalars every N optimizer steps", min=1)
    checkpoint_every: int | None = option(None, help="also save resumable state every N optimizer steps", min=1)
    keep_last: bool = option(False, help="keep checkpoints/last (weights and optimizer state, what resuming needs) once the run has finished; an unfinished run always keeps it")
    max_steps_per_epoch: int | None = option(None, help="cut every epoch after N sampler steps (quick experiments)", min=1)
    progress: bool = option(True, help="show a progress bar on the terminal")
    threads: int | None = option(None, help="CPU threads for torch (default: torch's choice)", min=1)
    predict: bool = option(True, help="write dev and test predictions of the best checkpoint at the end")
    compile: bool = option(False, help="torch.compile the encoder (measure first: it rarely pays on CPU)")


@attrs.define
class ComponentSpec:
    """A resolved component reference: the registry entry and its validated options."""

    kind: str
    name: str
    options: Any
    component: Component

    def to_toml(self) -> dict[str, Any]:
        return {"name": self.name, **unstructure(self.options)}


@attrs.define
class TaskRecipe:
    name: str
    spec: Any  # mtbert.data.tasks.TaskSpec
    section: TaskSection
    input: ComponentSpec
    head: ComponentSpec


@attrs.define
class Recipe:
    """A validated recipe with every component resolved."""

    name: str
    seed: int
    description: str
    requires: list[str]
    model: ModelSection
    data: DataSection
    optim: OptimSection
    train: TrainSection
    tasks: dict[str, TaskRecipe]
    sampler: ComponentSpec
    loss_combiner: ComponentSpec
    gradient_transforms: list[ComponentSpec]
    regularizers: list[ComponentSpec]
    stages: list[ComponentSpec]
    source: str = ""
    optimizer_groups: list[ComponentSpec] = attrs.field(factory=list)
    weight_average: ComponentSpec | None = None

    def data_dir(self) -> Path:
        return Path(self.data.dir or os.environ.get(DATA_DIR_ENV) or "data")

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe (includes, overrides and defaults applied)."""
        out: dict[str, Any] = {"name": self.name, "seed": self.seed}
        if self.description:
            out["description"] = self.description
        if self.requires:
            out["requires"] = list(self.requires)
        out["model"] = unstructure(self.model)
        out["data"] = unstructure(self.data)
        out["tasks"] = {
            name: {**unstructure(t.section), "input": t.input.to_toml(), "head": t.head.to_toml()}
            for name, t in self.tasks.items()
        }
        out["sampler"] = self.sampler.to_toml()
        out["loss_combiner"] = self.loss_combiner.to_toml()
        out["gradient_transforms"] = [c.to_toml() for c in self.gradient_transforms]
        out["regularizers"] = [c.to_toml() for c in self.regularizers]
        out["stages"] = [c.to_toml() for c in self.stages]
        if self.optimizer_groups:
            out["optimizer_groups"] = [c.to_toml() for c in self.optimizer_groups]
        if self.weight_average is not None:
            out["weight_average"] = self.weight_average.to_toml()
        out["optim"] = unstructure(self.optim)
        out["train"] = unstructure(self.train)
        return out

    def to_toml(self) -> str:
        header = "# Resolved by mtbert: includes, --set overrides and defaults applied.\n"
        return header + tomli_w.dumps(self.to_dict())


TOP_LEVEL = {
    "name", "seed", "description", "include", "requires", "model", "data", "tasks", "sampler",
    "loss_combiner", "gradient_transforms", "regularizers", "stages", "optim", "train",
    "sweep",  # ranges and grids for ``mtbert sweep`` (mtbert.sweep); checked here, ignored by a run
    "optimizer_groups", "weight_average",
}


# --------------------------------------------------------------------------- reading
def _read_toml(path: Path, where: str) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"{where}: recipe file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a UTF-8 text file") from None


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_with_includes(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Path]]:
    """The recipe table with its includes merged in, and every file read (for error lines)."""
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise RecipeError(f"{path}: include cycle: {cycle}")
    table = _read_toml(path, str(_chain[-1]) if _chain else "recipe")
    includes = table.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise RecipeError(f"{path}: include: must be a file name or a list of file names")
    merged: dict[str, Any] = {}
    files = [path]
    for include in includes:
        included_path = (path.parent / include)
        if not included_path.is_file():
            raise RecipeError(f"{path}: include: file not found: {included_path}")
        sub, sub_files = read_with_includes(included_path, (*_chain, path))
        merged = _deep_merge(merged, sub)
        files.extend(sub_files)
    return _deep_merge(merged, table), files


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


def apply_override(table: dict[str, Any], parts: list[str], value: Any, text: str) -> None:
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


# --------------------------------------------------------------------------- validation
def _component_ref(
    value: Any, path: str, problems: Problems, default: str | None = None
) -> tuple[str, dict[str, Any]] | None:
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict):
        name = value.get("name", default)
        if not isinstance(name, str):
            problems.add(_join_key(path, "name"), "a component table needs name = \"...\"")
            return None
        return name, {k: v for k, v in value.items() if k != "name"}
    problems.add(path, f"{value!r} is not a component name or a {{ name = ... }} table")
    return None


def _join_key(path: str, key: str) -> str:
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
        problems.add(_join_key(path, "name") if isinstance(value, dict) else path, message)
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


def _task_component(kind: str, value: Any, input_kind: str, path: str, task_name: str, plugins: Plugins,
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


def _component_list(kind: str, value: Any, path: str, plugins: Plugins, problems: Problems) -> list[ComponentSpec]:
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


def _accepts_pad_to(input_format: Any) -> bool:
    """Whether an input format's ``collate`` takes ``pad_to`` (needed by data.padding = "max_length")."""
    import inspect

    try:
        return "pad_to" in inspect.signature(input_format.collate).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def validate(table: dict[str, Any], plugins: Plugins, *, source: str = "") -> Recipe:
    """Turn a merged recipe table into a :class:`Recipe`, or raise every problem at once."""
    problems = Problems()
    for key in table:
        if key not in TOP_LEVEL:
            problems.add(key, f"unknown key{did_you_mean(key, TOP_LEVEL)} (allowed: {', '.join(sorted(TOP_LEVEL))})")

    name = table.get("name", Path(source).stem if source else "run")
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", name):
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

    def section(key: str, cls: type) -> Any:
        raw = table.get(key, {})
        if not isinstance(raw, dict):
            problems.add(key, f"{raw!r} is not a table")
            return None
        return structure(cls, raw, key, problems)

    model = section("model", ModelSection)
    data = section("data", DataSection)
    optim = section("optim", OptimSection)
    train = section("train", TrainSection)
    if optim is not None and len(optim.betas) != 2:
        problems.add("optim.betas", f"{optim.betas!r} must hold two numbers")

    registry = plugins.registry
    if model is not None:
        checkpoint = model.checkpoint
        if registry.find("checkpoint", checkpoint) is None and not Path(checkpoint).expanduser().is_dir():
            looks_like_path = "/" in checkpoint or checkpoint.startswith(".")
            if looks_like_path:
                problems.add("model.checkpoint", f"folder not found: {checkpoint}")
            else:
                problems.add("model.checkpoint", registry.unknown_message("checkpoint", checkpoint) + " (or give a local HF-format BERT folder)")

    tasks: dict[str, TaskRecipe] = {}
    raw_tasks = table.get("tasks", {})
    if not isinstance(raw_tasks, dict) or not raw_tasks:
        problems.add("tasks", "a recipe needs at least one [tasks.<name>] table; installed tasks: " + ", ".join(registry.names("task")))
        raw_tasks = {}
    for task_name, raw in raw_tasks.items():
        path = f"tasks.{task_name}"
        component = registry.find("task", task_name)
        if component is None:
            problems.add(path, registry.unknown_message("task", task_name))
            continue
        if raw is True or raw is None:
            raw = {}
        if not isinstance(raw, dict):
            problems.add(path, f"{raw!r} is not a table")
            continue
        raw = dict(raw)
        head_raw, input_raw = raw.pop("head", None), raw.pop("input", None)
        task_section = structure(TaskSection, raw, path, problems)
        spec = component.factory
        input_spec = _task_component("input_format", input_raw, spec.input_kind, f"{path}.input", task_name, plugins, problems)
        head_spec = _task_component("head", head_raw, spec.input_kind, f"{path}.head", task_name, plugins, problems)
        if input_spec is not None:
            reason = input_spec.options.check(spec)
            if reason:
                problems.add(f"{path}.input", f"'{input_spec.name}' cannot serve task {task_name}: {reason}")
        if head_spec is not None and hasattr(head_spec.options, "check"):
            reason = head_spec.options.check(spec, input_spec.options if input_spec else None)
            if reason:
                problems.add(f"{path}.head", f"'{head_spec.name}' cannot serve task {task_name}: {reason}")
        if task_section is not None and input_spec is not None and head_spec is not None:
            tasks[task_name] = TaskRecipe(task_name, spec, task_section, input_spec, head_spec)

    sampler = resolve_component("sampler", table.get("sampler", "round-robin"), "sampler", plugins, problems,
                                default="round-robin")
    combiner = resolve_component("loss_combiner", table.get("loss_combiner", "sum"), "loss_combiner", plugins, problems,
                                 default="sum")
    transforms = _component_list("gradient_transform", table.get("gradient_transforms"), "gradient_transforms", plugins, problems)
    regularizers = _component_list("regularizer", table.get("regularizers"), "regularizers", plugins, problems)
    stages = _component_list("stage", table.get("stages", [{"name": "multitask"}]), "stages", plugins, problems)
    optimizer_groups = _component_list("optimizer_groups", table.get("optimizer_groups"), "optimizer_groups", plugins, problems)
    weight_average = None
    if table.get("weight_average") is not None:
        weight_average = resolve_component("weight_average", table["weight_average"], "weight_average", plugins, problems)
    if not stages and "stages" in table:
        problems.add("stages", "a recipe needs at least one stage")

    # Step-mode compatibility: combiners and transforms that compare tasks within a step.
    if sampler is not None:
        mode = getattr(sampler.options, "step", "one-task")
        for spec_, where in [(combiner, "loss_combiner"), *((t, f"gradient_transforms[{i}]") for i, t in enumerate(transforms))]:
            needed = getattr(spec_.options, "requires_step_mode", None) if spec_ is not None else None
            if needed and needed != mode:
                problems.add(where, f"'{spec_.name}' needs a batch of every task per step, but sampler '{sampler.name}' gives step = {mode!r}; set sampler.step = \"{needed}\"")
    seen_summed = None
    for i, t in enumerate(transforms):
        needs = getattr(t.options, "needs", "summed")
        if needs == "per-task" and seen_summed is not None:
            problems.add(f"gradient_transforms[{i}]", f"'{t.name}' works on per-task gradients, so it must come before '{seen_summed}', which works on their sum")
        if needs != "per-task" and seen_summed is None:
            seen_summed = t.name
    per_task = [t.name for t in transforms if getattr(t.options, "needs", "") == "per-task"]
    if len(per_task) > 1:
        problems.add("gradient_transforms", f"at most one transform may combine per-task gradients; found {', '.join(per_task)}")

    # Components whose options name tasks (loop.to, weights = {...}) check them against the recipe.
    named = [(sampler, "sampler"), (combiner, "loss_combiner"),
             *((t, f"gradient_transforms[{i}]") for i, t in enumerate(transforms)),
             *((r, f"regularizers[{i}]") for i, r in enumerate(regularizers))]
    for spec_, where in named:
        check = getattr(spec_.options, "check_tasks", None) if spec_ is not None else None
        if check is not None:
            reason = check(list(raw_tasks))
            if reason:
                problems.add(where, f"'{spec_.name}': {reason}")

    for i, stage in enumerate(stages):
        for task_name in getattr(stage.options, "tasks", None) or []:
            if task_name not in raw_tasks:
                problems.add(f"stages[{i}].tasks", f"task '{task_name}' is not configured under [tasks]{did_you_mean(task_name, raw_tasks)}")

    if data is not None and data.padding == "max_length":
        for task_name, task_recipe in tasks.items():
            if not _accepts_pad_to(task_recipe.input.options):
                problems.add(f"tasks.{task_name}.input", f"'{task_recipe.input.name}' pads batches dynamically only "
                             "(its collate takes no pad_to); use data.padding = \"dynamic\"")

    if train is not None and tasks and train.select != "mean":
        keys = {t.spec.metric_key for t in tasks.values()}
        if train.select not in keys:
            problems.add("train.select", f"{train.select!r} is not a dev metric of this recipe; choose mean or one of {', '.join(sorted(keys))}")

    if "sweep" in table:
        from mtbert.sweep import check_sweep_table

        for where, message in check_sweep_table(table["sweep"], {t.spec.metric_key for t in tasks.values()} or None):
            problems.add(where, message)

    if problems:
        raise RecipeError([f"{p}: {m}" for p, m in problems.items])
    return Recipe(
        name=name, seed=seed, description=description, requires=requires, model=model, data=data,
        optim=optim, train=train, tasks=tasks, sampler=sampler, loss_combiner=combiner,
        gradient_transforms=transforms, regularizers=regularizers, stages=stages, source=source,
        optimizer_groups=optimizer_groups, weight_average=weight_average,
    )


def load_recipe(path: str | Path, overrides: list[str] = (), plugins: Plugins | None = None) -> Recipe:
    """Read, compose, override and validate a recipe file."""
    from mtbert.plugins import get_plugins

    plugins = plugins or get_plugins()
    path = Path(path)
    table, files = read_with_includes(path)
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(table, parts, value, text)
    override_keys = [key_label(parse_override(t)[0]) for t in overrides]
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
