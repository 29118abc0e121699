"""Test kit for plugin authors: a tiny world to run components in, and their contract checks.

Everything here runs on the CPU in seconds and needs neither the CS224N data nor the MiniLM
package: a 77-token vocabulary, a random 2-layer BERT with hidden size 16, and three tiny tasks
whose examples are generated in memory (and written to CSV files when a whole run is wanted).

The tiny world
    :func:`tiny_tokenizer`, :func:`tiny_encoder`, :data:`TINY_TASKS` (``tiny_sentiment``: one
    sentence, 3 classes; ``tiny_paraphrase``: a pair, binary; ``tiny_similarity``: a pair,
    regression on 0..5), :func:`tiny_examples`, :func:`tiny_batch` (a real batch through a
    registered input format), :func:`tiny_model` (a :class:`~mtbert.engine.model.MultitaskModel`
    over the three tasks), :func:`tiny_plugins` (an isolated plugin set: mtbert's builtins, this
    kit's tiny tasks and ``testing:tiny`` checkpoint, and your plugin) and
    :func:`run_tiny_recipe` (a complete ``mtbert run`` on the tiny tasks, run folder and all).

Contract checks, one per kind
    ``check_task``, ``check_checkpoint``, ``check_input_format``, ``check_head``,
    ``check_sampler``, ``check_loss_combiner``, ``check_gradient_transform``,
    ``check_regularizer`` and ``check_stage`` take your options class (built with no arguments:
    every option needs a default) or an instance, exercise it the way the engine will, and raise
    :class:`AssertionError` with a message naming the component and what broke. mtbert's own
    builtins pass the same checks (``tests/test_contracts.py``).

pytest fixtures
    Add ``pytest_plugins = ["mtbert.testing"]`` to your top-level ``conftest.py`` and override
    ``mtbert_plugin_modules`` to name your plugin; then ``mtbert_plugins`` (the isolated plugin
    set, installed process-wide for the test), ``mtbert_tiny_model``, ``mtbert_tiny_batch`` and
    ``mtbert_tiny_run`` are available to your tests. See CONTRIBUTING.md, "Testing a plugin".
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import inspect
import json
import math
import os
import random
import tempfile
import types
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import attrs
import torch
from torch import nn

from mtbert import hookimpl
from mtbert.data.readers import Example
from mtbert.data.tasks import SPLITS, TaskSpec
from mtbert.engine.components import Batch, Combined, EncodedExamples, Features, PenaltyContext

__all__ = [
    "TINY_HIDDEN", "TINY_MAX_LENGTH", "TINY_TASKS", "TINY_TASK_NAMES", "TINY_CHECKPOINT", "CHECKS",
    "tiny_vocab", "tiny_tokenizer", "tiny_config", "tiny_encoder", "tiny_examples", "tiny_data_dir",
    "write_tiny_data", "tiny_plugins", "installed_plugins", "tiny_batch", "tiny_batches", "tiny_model",
    "tiny_recipe_table", "run_tiny_recipe", "state_round_trip", "check_component", "check_task",
    "check_checkpoint", "check_input_format", "check_head", "check_sampler", "check_loss_combiner",
    "check_gradient_transform", "check_regularizer", "check_stage",
]

#: Hidden size of the tiny encoder (what heads are built for).
TINY_HIDDEN = 16
#: Longest token sequence the checks encode (one example per task is longer, to test truncation).
TINY_MAX_LENGTH = 16
#: Name of the tiny random checkpoint this kit registers.
TINY_CHECKPOINT = "testing:tiny"

# --------------------------------------------------------------------------- vocabulary
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_POSITIVE = ["good", "great", "fine", "bright"]
_NEGATIVE = ["bad", "awful", "dull", "dark"]
_NEUTRAL = ["okay", "plain", "long", "short"]
_THINGS = ["film", "movie", "story", "plot", "song", "book"]
_ANIMALS = ["cat", "dog", "bird", "horse", "fox", "zebra"]  # "zebra" is not in the vocabulary: [UNK]
_VERBS = ["runs", "sleeps", "eats", "jumps", "sings"]
_PLACES = ["park", "garden", "river", "field", "house"]
_WORDS = (
    "the a this that was is very quite really not and but it what why how does do make people "
    "in on near of to with , . ? !"
).split()
_VOCAB_WORDS = _WORDS + _POSITIVE + _NEGATIVE + _NEUTRAL + _THINGS + [a for a in _ANIMALS if a != "zebra"] + \
    _VERBS + _PLACES + ["run", "sleep", "eat", "jump", "sing", "##s", "##ly", "##ed", "##ing"]


@functools.lru_cache(maxsize=None)
def _vocab_items() -> tuple[tuple[str, int], ...]:
    tokens = list(dict.fromkeys(_SPECIAL + _VOCAB_WORDS))
    return tuple((token, index) for index, token in enumerate(tokens))


def tiny_vocab() -> dict[str, int]:
    """The tiny WordPiece vocabulary: the five special tokens first, then 72 words and pieces."""
    return dict(_vocab_items())


@functools.lru_cache(maxsize=None)
def tiny_tokenizer() -> Any:
    """An uncased :class:`~mtbert.model.tokenizer.BertTokenizer` over :func:`tiny_vocab`."""
    from mtbert.model.tokenizer import BertTokenizer

    return BertTokenizer(tiny_vocab(), lowercase=True)


_TINY_CONFIG = {
    "hidden_size": TINY_HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 128,
}


def tiny_config(**changes: Any) -> Any:
    """The tiny encoder's :class:`~mtbert.model.config.BertConfig` (``changes`` override fields)."""
    from mtbert.model.config import BertConfig

    return BertConfig.from_dict({"vocab_size": len(tiny_vocab()), **_TINY_CONFIG, **changes})


def tiny_encoder(seed: int = 0, **config_changes: Any) -> Any:
    """A random tiny :class:`~mtbert.model.bert.BertEncoder` (2 layers, hidden 16), same for a seed."""
    from mtbert.model.bert import BertEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BertEncoder(tiny_config(**config_changes))


# --------------------------------------------------------------------------- tiny tasks
def _spec(name: str, description: str, texts: tuple[str, ...], label: str, kind: str, header: str, **extra: Any) -> TaskSpec:
    return TaskSpec(
        name=name, description=f"{description} (mtbert.testing)", text_columns=texts, label_column=label,
        label_kind=kind, files={split: f"{name}-{split}.csv" for split in SPLITS}, metric_key=f"{name}_"
        + ("pearson" if kind == "regression" else "acc"), main=True, prediction_header=header,
        prediction_file=name + "-{split}-output.csv", **extra,
    )


TINY_SENTIMENT = _spec("tiny_sentiment", "tiny sentiment of one sentence, 3 classes", ("sentence",), "sentiment",
                       "multiclass", "Predicted_Sentiment", num_classes=3)
TINY_PARAPHRASE = _spec("tiny_paraphrase", "tiny paraphrase detection of a pair, binary", ("sentence1", "sentence2"),
                        "is_duplicate", "binary", "Predicted_Is_Paraphrase")
TINY_SIMILARITY = _spec("tiny_similarity", "tiny similarity of a pair, regression on 0..5", ("sentence1", "sentence2"),
                        "similarity", "regression", "Predicted_Similarity", label_range=(0.0, 5.0))

#: The three tiny tasks by name: single-sentence multiclass, pair binary, pair regression.
TINY_TASKS: dict[str, TaskSpec] = {t.name: t for t in (TINY_SENTIMENT, TINY_PARAPHRASE, TINY_SIMILARITY)}
TINY_TASK_NAMES: tuple[str, ...] = tuple(TINY_TASKS)

_SIZES = {"train": 16, "dev": 8, "test": 4}


def _sentiment(rng: random.Random, long: bool) -> tuple[tuple[str, ...], int]:
    label = rng.randrange(3)
    adjective = rng.choice([_NEGATIVE, _NEUTRAL, _POSITIVE][label])
    text = f"{rng.choice(['the', 'this', 'that'])} {rng.choice(_THINGS)} was {rng.choice(['very', 'quite', 'really'])} {adjective} ."
    if long:  # longer than TINY_MAX_LENGTH tokens: exercises truncation
        text = text[:-2] + f" , and the {rng.choice(_THINGS)} was {adjective} but it was {adjective} and {adjective} ."
    return (text,), label


def _paraphrase(rng: random.Random, long: bool) -> tuple[tuple[str, ...], int]:
    animal, verb, place = rng.choice(_ANIMALS), rng.choice(_VERBS), rng.choice(_PLACES)
    first = f"why does the {animal} {verb[:-1]} in the {place} ?"
    label = rng.randrange(2)
    if label:
        second = f"what does make the {animal} {verb[:-1]} near the {place} ?"
    else:
        other = rng.choice([a for a in _ANIMALS if a != animal])
        second = f"why does the {other} {verb[:-1]} in the {rng.choice(_PLACES)} ?"
    if long:
        first = first[:-2] + f" and the {place} near the river with people in it ?"
    return (first, second), label


def _similarity(rng: random.Random, long: bool) -> tuple[tuple[str, ...], float]:
    slots = [rng.choice(_ANIMALS), rng.choice(_VERBS), rng.choice(_PLACES)]
    pools = [_ANIMALS, _VERBS, _PLACES]
    other = [s if rng.random() < 0.5 else rng.choice([c for c in pool if c != s]) for s, pool in zip(slots, pools)]
    kept = sum(a == b for a, b in zip(slots, other))
    first = f"the {slots[0]} {slots[1]} in the {slots[2]} ."
    second = f"a {other[0]} {other[1]} near the {other[2]} ."
    if long:
        second = second[:-2] + f" and the {other[0]} {other[1]} in the {other[2]} with people ."
    return (first, second), round(5.0 * kept / 3.0, 2)


_MAKERS: dict[str, Callable[[random.Random, bool], tuple[tuple[str, ...], Any]]] = {
    "tiny_sentiment": _sentiment, "tiny_paraphrase": _paraphrase, "tiny_similarity": _similarity,
}


def tiny_examples(task: str = "tiny_sentiment", split: str = "train", count: int | None = None) -> list[Example]:
    """Deterministic :class:`~mtbert.data.readers.Example` rows of a tiny task (test rows unlabelled).

    Default sizes: 16 train, 8 dev, 4 test rows; the second row of every split is longer than
    :data:`TINY_MAX_LENGTH` tokens. Every classification split holds every class.
    """
    if task not in _MAKERS:
        raise KeyError(f"unknown tiny task {task!r}; choose one of {', '.join(TINY_TASK_NAMES)}")
    count = _SIZES.get(split, 8) if count is None else count
    rng = random.Random(f"{task}/{split}")
    spec = TINY_TASKS[task]
    rows: list[Example] = []
    for i in range(count):
        texts, label = _MAKERS[task](rng, long=i == 1)
        if spec.label_kind != "regression" and i < spec.num_classes:
            while label != i:  # the first rows cover every class
                texts, label = _MAKERS[task](rng, long=i == 1)
        rows.append(Example(id=f"{task}-{split}-{i:03d}", texts=texts, label=None if split == "test" else label, line=i + 2))
    return rows


def write_tiny_data(folder: str | Path) -> Path:
    """Write the tiny tasks' train/dev/test files (CS224N layout: tab-separated, header row)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, spec in TINY_TASKS.items():
        for split in SPLITS:
            labelled = split != "test"
            header = ["", "id", *spec.text_columns, *([spec.label_column] if labelled else [])]
            with (folder / spec.files[split]).open("w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
                writer.writerow(header)
                for index, example in enumerate(tiny_examples(name, split)):
                    writer.writerow([index, example.id, *example.texts, *([example.label] if labelled else [])])
    return folder


_TEMP: dict[str, tempfile.TemporaryDirectory] = {}


def _temp_folder(key: str) -> Path:
    if key not in _TEMP:
        _TEMP[key] = tempfile.TemporaryDirectory(prefix=f"mtbert-testing-{key}-")
    return Path(_TEMP[key].name)


def tiny_data_dir() -> Path:
    """A folder (created once per process) holding the tiny tasks' files: a recipe's ``data.dir``."""
    folder = _temp_folder("data")
    if not (folder / TINY_SENTIMENT.files["train"]).is_file():
        write_tiny_data(folder)
    return folder


def _tiny_checkpoint_folder() -> Path:
    folder = _temp_folder("checkpoint")
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        vocab.write_text("".join(f"{token}\n" for token, _ in _vocab_items()), encoding="utf-8")
        (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    return folder


def _tiny_checkpoint_spec() -> Any:
    from mtbert.model.backbone import CheckpointSpec

    return CheckpointSpec(description=f"random 2-layer hidden-16 BERT with a {len(_vocab_items())}-token vocabulary, "
                                      f"for plugin tests (mtbert.testing)", folder=_tiny_checkpoint_folder,
                          random_config=dict(_TINY_CONFIG))


class _TestingPlugin:
    """Registers the tiny tasks and the ``testing:tiny`` checkpoint (only in :func:`tiny_plugins`)."""

    @hookimpl
    def mtbert_register_tasks(self, register):
        for spec in TINY_TASKS.values():
            register(spec.name, spec)

    @hookimpl
    def mtbert_register_checkpoints(self, register):
        register(TINY_CHECKPOINT, _tiny_checkpoint_spec())


TESTING_PLUGIN = _TestingPlugin()


# --------------------------------------------------------------------------- plugins
@contextlib.contextmanager
def _environment(values: dict[str, str | None]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def tiny_plugins(*extra: Any, strict: bool = True) -> Any:
    """An isolated :class:`~mtbert.plugins.Plugins` set: mtbert's builtins, this kit's tiny tasks and
    checkpoint, and ``extra``.

    Each item of ``extra`` is a plugin module or object (loaded in-process), a ``(name, plugin)``
    pair, or a string: the name of an *installed* entry point in the ``mtbert`` group (loaded
    through it, with its distribution and version, as ``mtbert run`` would). Whatever else is
    installed is ignored, and with ``strict`` (the default) a plugin that fails to load raises.
    """
    from mtbert.plugins import load_plugins

    pairs: list[tuple[str, Any]] = [("mtbert-testing", TESTING_PLUGIN)]
    entry_names: list[str] = []
    for item in extra:
        if isinstance(item, str):
            entry_names.append(item)
        elif isinstance(item, tuple):
            pairs.append(item)
        elif isinstance(item, types.ModuleType):
            pairs.append((item.__name__, item))
        else:
            pairs.append((type(item).__name__, item))
    import importlib.metadata as md

    installed = {ep.name for ep in md.entry_points(group="mtbert")}
    unknown = [name for name in entry_names if name not in installed]
    if unknown:  # before loading: under strict loading an unknown name would be a PluginError
        raise LookupError(f"no installed entry point named {', '.join(unknown)} in group 'mtbert' "
                          f"(is the package installed? pip install -e .)")
    env = {
        "MTBERT_PLUGINS": ",".join(["builtin", *entry_names]),
        "MTBERT_DISABLE_PLUGINS": None,
        "MTBERT_STRICT_PLUGINS": "1" if strict else None,
    }
    with _environment(env):
        plugins = load_plugins(pairs)
    missing = [name for name in entry_names if name not in {p.name for p in plugins.plugins}]
    if missing:
        raise LookupError(f"no installed entry point named {', '.join(missing)} in group 'mtbert' "
                          f"(is the package installed? pip install -e .)")
    return plugins


_DEFAULT: list[Any] = []


def _default_plugins() -> Any:
    if not _DEFAULT:
        _DEFAULT.append(tiny_plugins())
    return _DEFAULT[0]


@contextlib.contextmanager
def installed_plugins(plugins: Any) -> Iterator[Any]:
    """Make ``plugins`` the process-wide set (what ``load_backbone`` and the CLI see), then restore."""
    import mtbert.plugins as registry_module

    previous = registry_module._CACHED
    registry_module.set_plugins(plugins)
    try:
        yield plugins
    finally:
        registry_module.set_plugins(previous)


def _options_of(plugins: Any, kind: str, name: str) -> Any:
    component = plugins.registry.find(kind, name)
    if component is None:
        raise LookupError(f"no {kind.replace('_', ' ')} named {name!r} is registered")
    return component.factory()


# --------------------------------------------------------------------------- batches and models
def _label_dtype(spec: TaskSpec) -> torch.dtype:
    from mtbert.engine.data import label_dtype

    return label_dtype(spec)


def _default_name(plugins: Any, kind: str, spec: TaskSpec) -> str:
    """The registered default input format or head for the task's input kind, as recipes choose it."""
    found = plugins.registry.defaults(kind, spec.input_kind)
    if len(found) != 1:
        raise LookupError(f"{len(found)} {kind.replace('_', ' ')}s declare themselves the default for "
                          f"{spec.input_kind} tasks: {[c.name for c in found]}")
    return found[0].name


def tiny_batch(task: str = "tiny_sentiment", *, size: int = 4, split: str = "train", start: int = 0,
               input_format: Any = None, plugins: Any = None, max_length: int = TINY_MAX_LENGTH) -> Batch:
    """A real batch of a tiny task: examples tokenized and collated by an input format.



    """
    spec = TINY_TASKS[task]
    if input_format is None or isinstance(input_format, str):
        plugins = plugins or _default_plugins()
        input_format = _options_of(plugins, "input_format", input_format or _default_name(plugins, "input_format", spec))
    examples = tiny_examples(task, split)
    encoded = input_format.encode_examples(tiny_tokenizer(), examples, max_length)
    indices = [i % len(examples) for i in range(start, start + size)]
    return input_format.collate(encoded, indices, task, _label_dtype(spec))


def tiny_model(*, heads: dict[str, Any] | None = None, input_formats: dict[str, Any] | None = None,
               plugins: Any = None, seed: int = 0, tasks: Sequence[str] = TINY_TASK_NAMES) -> Any:
    """A :class:`~mtbert.engine.model.MultitaskModel`: the tiny encoder and one head per tiny task.

    ``heads`` maps a task to a head options object or registered name; ``input_formats`` maps a
    task to an input-format name (both default by the task's input kind, as recipes choose).
    Same seed, same weights.
    """
    from mtbert.engine.model import MultitaskModel

    plugins = plugins or _default_plugins()
    heads = dict(heads or {})
    formats = dict(input_formats or {})
    modules: dict[str, nn.Module] = {}
    format_options: dict[str, Any] = {}
    encoder = tiny_encoder(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        for name in tasks:
            spec = TINY_TASKS[name]
            format_name = formats.get(name) or _default_name(plugins, "input_format", spec)
            format_options[name] = _options_of(plugins, "input_format", format_name)
            head = heads.get(name) or _default_name(plugins, "head", spec)
            head = _options_of(plugins, "head", head) if isinstance(head, str) else head
            modules[name] = head.build(TINY_HIDDEN, spec, format_options[name])
    return MultitaskModel(encoder, modules, format_options)


def tiny_batches(model: Any, *, size: int = 4, split: str = "train", start: int = 0) -> dict[str, Batch]:
    """One batch per task of ``model``, through the model's own input formats."""
    return {task: tiny_batch(task, size=size, split=split, start=start, input_format=model.input_formats[task])
            for task in model.heads}


# --------------------------------------------------------------------------- whole runs
def tiny_recipe_table(**sections: Any) -> dict[str, Any]:
    """A recipe (as a TOML table) training the three tiny tasks for one short epoch on the CPU.

    Keyword arguments replace top-level keys (``sampler={"name": "loop", "to": "tiny_sentiment"}``).
    """
    table: dict[str, Any] = {
        "name": "tiny",
        "seed": 7,
        "model": {"checkpoint": TINY_CHECKPOINT},
        "data": {"dir": str(tiny_data_dir()), "max_length": 32, "eval_batch_size": 8},
        "tasks": {name: {} for name in TINY_TASK_NAMES},
        "optim": {"lr": 1e-3, "epochs": 1, "batch_size": 4},
        "train": {"progress": False, "device": "cpu", "log_every": 1, "threads": 1},
    }
    table.update(copy.deepcopy(sections))
    return table


def run_tiny_recipe(plugins: Any, out: str | Path, *, table: dict[str, Any] | None = None,
                    overrides: Iterable[str] = (), say: Callable[[str], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """Validate and run a tiny recipe (default :func:`tiny_recipe_table`) into folder ``out``.

    ``overrides`` are ``--set`` strings (``"optim.epochs=3"``). Returns the run folder and the
    metrics summary, as :func:`mtbert.engine.run.run_recipe` does.
    """
    from mtbert.engine.run import run_recipe
    from mtbert.recipe import apply_override, parse_override, validate

    table = copy.deepcopy(table) if table is not None else tiny_recipe_table()
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(table, parts, value, text)
    quiet = say or (lambda message: None)
    with installed_plugins(plugins), _one_thread():  # restores the thread count train.threads sets
        recipe = validate(table, plugins, source="tiny.toml")
        return run_recipe(recipe, plugins, out=Path(out), say=quiet, warn=quiet)


# --------------------------------------------------------------------------- helpers of the checks
def state_round_trip(state: Any) -> Any:
    """``state`` through exactly what a checkpoint does: tensors to safetensors, the rest to JSON."""
    from safetensors.torch import load, save

    from mtbert.engine.checkpoint import join_tensors, split_tensors

    skeleton, tensors = split_tensors(state)
    return join_tensors(json.loads(json.dumps(skeleton)), load(save(tensors)))


class _Checker:
    """Failure messages that name the component: ``head 'cosine': predictions have shape ...``."""

    def __init__(self, kind: str, label: str):
        self.kind = kind
        self.label = label

    def fail(self, message: str) -> None:
        raise AssertionError(f"{self.kind.replace('_', ' ')} {self.label}: {message}")

    def require(self, condition: Any, message: str) -> None:
        if not condition:
            self.fail(message)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a contract method; an exception becomes a failure naming the method."""
        try:
            return fn(*args, **kwargs)
        except AssertionError:
            raise
        except Exception as exc:  # the plugin's own error, reported as a contract failure
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise AssertionError(f"{self.kind.replace('_', ' ')} {self.label}: {what} raised {message}") from exc

    def finite(self, value: Any, what: str) -> None:
        if isinstance(value, torch.Tensor):
            ok = bool(torch.isfinite(value.detach().float()).all())
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        self.require(ok, f"{what} is not finite: {value!r}"[:300])

    def close(self, a: Any, b: Any, what: str, rtol: float = 1e-5, atol: float = 1e-6) -> None:
        ta, tb = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
        self.require(ta.shape == tb.shape, f"{what}: shapes differ, {tuple(ta.shape)} vs {tuple(tb.shape)}")
        self.require(torch.allclose(ta, tb, rtol=rtol, atol=atol, equal_nan=True),
                     f"{what}: {ta.flatten()[:6].tolist()} vs {tb.flatten()[:6].tolist()}")

    def logs(self, obj: Any, what: str = "logs()") -> None:
        if not hasattr(obj, "logs"):
            return
        values = self.call(what, obj.logs)
        self.require(isinstance(values, dict), f"{what} must return a dict, got {type(values).__name__}")
        for key, value in values.items():
            self.require(isinstance(key, str), f"{what} key {key!r} is not a string")
            self.finite(value, f"{what}[{key!r}]")

    def state(self, obj: Any, what: str) -> Any:
        try:
            return state_round_trip(self.call(f"{what}.state_dict()", obj.state_dict))
        except TypeError as exc:
            self.fail(f"{what}.state_dict() holds a value a checkpoint cannot store ({exc}); "
                      f"use tensors, numbers, strings, lists and dicts of them")


def _label(kind: str, options: Any, name: str | None) -> str:
    if name:
        return f"'{name}'"
    cls = options if isinstance(options, type) else type(options)
    return cls.__name__


def _instance(check: _Checker, options: Any) -> Any:
    """The options object (a class is built with no arguments), after the options-class checks."""
    if isinstance(options, type):
        try:
            options = options()
        except Exception as exc:
            check.fail(f"{options.__name__}() cannot be built from defaults ({type(exc).__name__}: {exc}); "
                       f"give every option a default, or pass an instance with the options you want checked")
    _check_options_class(check, options)
    return options


def _check_options_class(check: _Checker, options: Any) -> None:
    """attrs class, options declared with help texts, describable, and the recipe round trip."""
    import tomli_w

    from mtbert.schema import describe, structure, unstructure

    cls = type(options)
    check.require(attrs.has(cls), f"{cls.__name__} is not an attrs class (decorate it with @attrs.define)")
    check.call("describing the options (mtbert plugins)", describe, cls)
    for field in attrs.fields(cls):
        if field.init and not field.name.startswith("_"):
            check.require(field.metadata.get("help"),
                          f"option {field.name!r} has no help text: declare it with mtbert.api.option(default, help=...)")
    table = unstructure(options)
    try:
        tomli_w.dumps({"component": table})
    except Exception as exc:
        check.fail(f"the options {table!r} cannot be written to a resolved recipe.toml ({exc})")
    try:
        again = structure(cls, table)
    except ValueError as exc:
        check.fail(f"the resolved options {table!r} do not validate again ({exc}); --resume would refuse the run")
    check.require(again == options, f"the options do not survive the resolved recipe: {options!r} became {again!r}")


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def _has_gradient(params: Iterable[torch.Tensor]) -> bool:
    return any(p.grad is not None and bool((p.grad != 0).any()) for p in params)


def _grads_finite(check: _Checker, params: Iterable[tuple[str, torch.Tensor]], where: str) -> None:
    for name, p in params:
        if p.grad is not None:
            check.require(bool(torch.isfinite(p.grad).all()), f"the gradient of {where} parameter {name} is not finite")


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny tensors run fastest on one CPU thread (and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _isolated(fn: Callable[..., None]) -> Callable[..., None]:
    """Run a check on one thread with the global random state saved and restored (checks seed it)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        with torch.random.fork_rng(devices=[]), _one_thread():
            return fn(*args, **kwargs)

    return wrapper


def _losses(model: Any, batches: dict[str, Batch], tasks: Sequence[str]) -> dict[str, torch.Tensor]:
    return {task: model.heads[task].loss(model(batches[task]), batches[task].labels) for task in tasks}


def _sgd(params: Iterable[torch.Tensor], lr: float = 0.05) -> None:
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)
                p.grad = None


def _check_tasks(check: _Checker, options: Any, tasks: Sequence[str]) -> None:
    if hasattr(options, "check_tasks"):
        reason = check.call("check_tasks()", options.check_tasks, list(tasks))
        check.require(reason is None, f"check_tasks({list(tasks)}) refused the tiny tasks: {reason}; pass options "
                                      f"that fit tasks {', '.join(TINY_TASK_NAMES)}")


# --------------------------------------------------------------------------- tasks and checkpoints
@_isolated
def check_task(spec: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """A task: a TaskSpec whose files, reading, metrics and prediction files fit together."""
    check = _Checker("task", f"'{name or getattr(spec, 'name', spec)}'")
    check.require(isinstance(spec, TaskSpec), f"register a mtbert.data.tasks.TaskSpec, not {type(spec).__name__}")
    check.require({"train", "dev"} <= set(spec.files), f"files needs at least 'train' and 'dev', has {sorted(spec.files)}")
    check.require("{split}" in spec.prediction_file,
                  f"prediction_file {spec.prediction_file!r} lacks '{{split}}': dev and test predictions would overwrite each other")
    n = 6
    if spec.label_kind == "regression":
        low, high = spec.label_range
        labels: list[Any] = [low + (high - low) * i / (n - 1) for i in range(n)]
    else:
        labels = [i % spec.num_classes for i in range(n)]
    metrics = check.call("metrics()", spec.metrics, labels, labels)
    check.require(spec.metric_key in metrics, f"metrics() lacks its metric_key {spec.metric_key!r}: {sorted(metrics)}")
    check.close(metrics[spec.metric_key], 1.0, f"{spec.metric_key} of perfect predictions")
    ids = [f"x{i}" for i in range(n)]
    texts = ["the cat runs .", "a dog sleeps in the park ."]
    with tempfile.TemporaryDirectory(prefix="mtbert-check-task-") as tmp:
        folder = Path(tmp)
        for split in ("dev", "test"):
            path = folder / spec.prediction_filename(split)
            check.call("write_predictions()", spec.write_predictions, path, ids, labels)
            read_ids, values = check.call("read_predictions()", spec.read_predictions, path)
            check.require(read_ids == ids, f"prediction file round trip changed the ids: {read_ids}")
            check.close(values, labels, "prediction file round trip")
        for split in ("train", "test"):
            labelled = split != "test"
            path = folder / f"{split}.csv"
            with path.open("w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
                writer.writerow(["", "id", *spec.text_columns, *([spec.label_column] if labelled else [])])
                for i, label in enumerate(labels):
                    row_texts = texts[: len(spec.text_columns)]
                    writer.writerow([i, ids[i], *row_texts, *([label] if labelled else [])])
            result = check.call(f"read() of a {split} file", spec.read, path, split, warn=lambda message: None)
            check.require(len(result.examples) == n and not result.skipped,
                          f"read() of a {split} file in the task's columns gave {len(result.examples)} of {n} rows "
                          f"({result.warning})")
            got = [e.label for e in result.examples]
            if labelled:
                check.close(got, labels, f"labels read from a {split} file")
            else:
                check.require(all(v is None for v in got), "a test file must be read without labels")


@_isolated
def check_checkpoint(spec: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """A checkpoint: it loads through ``load_backbone`` into an encoder and a tokenizer that agree."""
    from mtbert.model.backbone import CheckpointSpec, load_backbone

    check = _Checker("checkpoint", f"'{name}'" if name else type(spec).__name__)
    check.require(isinstance(spec, CheckpointSpec), f"register a mtbert.model.backbone.CheckpointSpec, not {type(spec).__name__}")
    check.require(isinstance(spec.description, str) and spec.description.strip(), "description is empty")
    under_test = "checkpoint-under-test"

    class Provider:
        @hookimpl
        def mtbert_register_checkpoints(self, register):
            register(under_test, spec)

    with installed_plugins(tiny_plugins(("checkpoint-under-test", Provider()))):
        backbone = check.call("load_backbone()", load_backbone, under_test, seed=0)
    encoder, tokenizer = backbone.encoder, backbone.tokenizer
    check.require(tokenizer.vocab_size <= encoder.config.vocab_size,
                  f"the vocabulary ({tokenizer.vocab_size}) is larger than the encoder's ({encoder.config.vocab_size})")
    ids = tokenizer.encode(["the cat runs in the park .", "a dog ."], max_length=TINY_MAX_LENGTH)
    check.require(all(seq[0] == tokenizer.cls_id and seq[-1] == tokenizer.sep_id for seq in ids),
                  "sentences are not encoded as [CLS] ... [SEP]")
    inputs = tokenizer.pad(ids)
    encoder.eval()
    with torch.no_grad():
        out = check.call("the encoder's forward", encoder, **inputs)
    hidden = encoder.config.hidden_size
    check.require(tuple(out.last_hidden_state.shape) == (2, inputs["input_ids"].shape[1], hidden),
                  f"last_hidden_state has shape {tuple(out.last_hidden_state.shape)}")
    check.require(tuple(out.pooler_output.shape) == (2, hidden), f"pooler_output has shape {tuple(out.pooler_output.shape)}")
    check.finite(out.last_hidden_state, "last_hidden_state")


# --------------------------------------------------------------------------- input formats
@_isolated
def check_input_format(options: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """An input format: encode_examples, collate, sequences and encode agree; padding to the longest only."""
    from mtbert.engine.components import InputFormat

    check = _Checker("input_format", _label("input_format", options, name))
    options = _instance(check, options)
    for method in ("check", "encode_examples", "collate", "sequences", "encode"):
        check.require(callable(getattr(options, method, None)), f"has no {method}() method (see InputFormat)")
    declared = getattr(options, "num_sequences", None)
    check.require(isinstance(declared, int) and declared >= 1,
                  f"num_sequences must be a positive int (how many feature sets encode() gives), not {declared!r}")
    check.require(isinstance(options, InputFormat), "does not follow the InputFormat protocol")
    accepted = []
    for spec in TINY_TASKS.values():
        reason = check.call("check()", options.check, spec)
        check.require(reason is None or isinstance(reason, str), f"check() must return None or a one-line reason, got {reason!r}")
        if reason is None:
            accepted.append(spec)
    check.require(accepted, "check() refuses every tiny task (single sentences and pairs)")
    for kind in getattr(options, "default_for", ()) or ():
        check.require(any(spec.input_kind == kind for spec in accepted),
                      f"default_for names {kind!r}, but check() refuses every tiny {kind} task")
    tokenizer = tiny_tokenizer()
    encoder = tiny_encoder()
    for spec in accepted:
        task = spec.name
        for split in ("train", "test"):
            examples = tiny_examples(task, split)
            encoded = check.call("encode_examples()", options.encode_examples, tokenizer, examples, TINY_MAX_LENGTH)
            check.require(isinstance(encoded, EncodedExamples), f"encode_examples() must return EncodedExamples, not {type(encoded).__name__}")
            check.require(len(encoded) == len(examples) and list(encoded.ids) == [e.id for e in examples],
                          f"encode_examples() ids {list(encoded.ids)[:3]}... do not match the examples' ids in order")
            check.require(list(encoded.labels) == [e.label for e in examples], "encode_examples() labels do not match the examples'")
            slots = len(encoded.sequences)
            check.require(slots >= 1 and len(encoded.type_ids) == slots,
                          f"{slots} sequence slots but {len(encoded.type_ids)} type_ids entries (one per slot, or None)")
            for k, slot in enumerate(encoded.sequences):
                check.require(len(slot) == len(examples), f"sequence slot {k} holds {len(slot)} entries for {len(examples)} examples")
                longest = max(len(ids) for ids in slot)
                check.require(longest <= TINY_MAX_LENGTH, f"a sequence of {longest} tokens exceeds max_length {TINY_MAX_LENGTH}")
                check.require(all(len(ids) > 0 for ids in slot), f"slot {k} has an empty sequence")
                if encoded.type_ids[k] is not None:
                    check.require([len(t) for t in encoded.type_ids[k]] == [len(s) for s in slot],
                                  f"type_ids of slot {k} do not have the lengths of its sequences")
            indices = [3, 1, 0] if len(examples) > 3 else [1, 0]
            batch = check.call("collate()", options.collate, encoded, indices, task, _label_dtype(spec))
            check.require(isinstance(batch, Batch), f"collate() must return a Batch, not {type(batch).__name__}")
            check.require(batch.task == task and list(batch.ids) == [encoded.ids[i] for i in indices],
                          "collate() must keep the task name and the chosen examples' ids in order")
            if split == "test":
                check.require(batch.labels is None, "collate() of unlabelled examples must give labels None")
            else:
                check.require(isinstance(batch.labels, torch.Tensor) and batch.labels.dtype == _label_dtype(spec),
                              f"labels must be a {_label_dtype(spec)} tensor, got {getattr(batch.labels, 'dtype', batch.labels)}")
                check.close(batch.labels, [encoded.labels[i] for i in indices], "collated labels")
            if "pad_to" in inspect.signature(options.collate).parameters:  # data.padding = "max_length"
                fixed = check.call("collate(pad_to=...)", options.collate, encoded, indices, task, _label_dtype(spec),
                                   pad_to=TINY_MAX_LENGTH + 4)
                for k, seq in enumerate(check.call("sequences()", options.sequences, fixed)):
                    check.require(seq["input_ids"].shape[1] == TINY_MAX_LENGTH + 4,
                                  f"collate(pad_to={TINY_MAX_LENGTH + 4}) padded sequence {k} to {seq['input_ids'].shape[1]} tokens")
                    check.require(seq["attention_mask"].sum(dim=1).tolist() == [len(encoded.sequences[k][i]) for i in indices],
                                  f"collate(pad_to=...) changed the attention mask of sequence {k}")
            moved = batch.to("cpu")
            check.require(set(moved.inputs) == set(batch.inputs), "Batch.to() lost inputs")
            sequences = check.call("sequences()", options.sequences, batch)
            check.require(len(sequences) == slots, f"sequences() gives {len(sequences)} sequences for {slots} encoded slots")
            for k, seq in enumerate(sequences):
                check.require({"input_ids", "attention_mask", "token_type_ids"} <= set(seq),
                              f"sequence {k} lacks input_ids/attention_mask/token_type_ids: {sorted(seq)}")
                lengths = [len(encoded.sequences[k][i]) for i in indices]
                width = seq["input_ids"].shape[1]
                check.require(width == max(lengths), f"sequence {k} is padded to {width} tokens, but the longest "
                                                     f"example has {max(lengths)}: pad to the longest in the batch only")
                check.require(seq["attention_mask"].shape == seq["input_ids"].shape == seq["token_type_ids"].shape,
                              f"sequence {k}: input_ids, attention_mask and token_type_ids shapes differ")
                check.require(seq["attention_mask"].sum(dim=1).tolist() == lengths,
                              f"sequence {k}: attention_mask marks {seq['attention_mask'].sum(dim=1).tolist()} tokens, "
                              f"the examples have {lengths}")
                for row, (i, length) in enumerate(zip(indices, lengths)):
                    check.require(seq["input_ids"][row, :length].tolist() == list(encoded.sequences[k][i]),
                                  f"sequence {k}, row {row}: input_ids differ from the encoded tokens")
                    if encoded.type_ids[k] is not None:
                        check.require(seq["token_type_ids"][row, :length].tolist() == list(encoded.type_ids[k][i]),
                                      f"sequence {k}, row {row}: token_type_ids differ from the encoded segment ids")
            encoder.eval()
            with torch.no_grad():
                features = check.call("encode()", options.encode, encoder, batch)
                check.require(isinstance(features, Features), f"encode() must return Features, not {type(features).__name__}")
                check.require(features.num_sequences == slots and len(features.masks) == slots and len(features.pooled) == slots,
                              f"encode() gives {features.num_sequences} hidden, {len(features.masks)} masks and "
                              f"{len(features.pooled)} pooled for {slots} sequences")
                check.require(features.num_sequences == declared,
                              f"encode() gives {features.num_sequences} feature sets, but num_sequences says {declared} "
                              f"(heads size their input by it)")
                for k, seq in enumerate(sequences):
                    b, t = seq["input_ids"].shape
                    check.require(tuple(features.hidden[k].shape) == (b, t, TINY_HIDDEN),
                                  f"hidden[{k}] has shape {tuple(features.hidden[k].shape)}, expected {(b, t, TINY_HIDDEN)}")
                    check.require(tuple(features.pooled[k].shape) == (b, TINY_HIDDEN), f"pooled[{k}] has shape {tuple(features.pooled[k].shape)}")
                    check.require(torch.equal(features.masks[k].long(), seq["attention_mask"].long()),
                                  f"masks[{k}] is not sequence {k}'s attention_mask")
                    check.finite(features.hidden[k], f"hidden[{k}]")
                embeds = tuple(encoder.embed_words(seq["input_ids"]) for seq in sequences)
                again = check.call("encode(inputs_embeds=...)", options.encode, encoder, batch, inputs_embeds=embeds)
                for k in range(slots):
                    check.close(again.hidden[k], features.hidden[k],
                                f"encode() with inputs_embeds = the word embeddings must equal plain encode() (sequence {k})", atol=1e-5)


# --------------------------------------------------------------------------- heads
@_isolated
def check_head(options: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """A head: for every tiny task and input format it accepts, shapes, loss, gradients, labels, state."""
    from mtbert.engine.model import MultitaskModel

    check = _Checker("head", _label("head", options, name))
    options = _instance(check, options)
    check.require(callable(getattr(options, "build", None)), "has no build(hidden_size, task, input_format) method")
    plugins = plugins or _default_plugins()
    combos = []
    refused = []
    for spec in TINY_TASKS.values():
        for format_name in plugins.registry.names("input_format"):
            try:
                fmt = _options_of(plugins, "input_format", format_name)
            except Exception:
                continue  # an input format without defaults: not checked here
            if fmt.check(spec) is not None:
                continue
            reason = check.call("check()", options.check, spec, fmt) if hasattr(options, "check") else None
            if reason is not None:
                refused.append(f"{spec.name}/{format_name}: {reason}")
                continue
            combos.append((spec, format_name, fmt))
    check.require(combos, "refuses every tiny task with every input format: " + "; ".join(refused))
    for spec, format_name, fmt in combos:
        where = f"(task {spec.name}, {spec.label_kind}, input {format_name})"
        torch.manual_seed(0)
        module = check.call("build()", options.build, TINY_HIDDEN, spec, fmt)
        check.require(isinstance(module, nn.Module), f"build() must return an nn.Module, not {type(module).__name__}")
        for method in ("loss", "predict"):
            check.require(callable(getattr(module, method, None)), f"the module has no {method}() method")
        model = MultitaskModel(tiny_encoder(), {spec.name: module}, {spec.name: fmt})
        batch = tiny_batch(spec.name, size=5, input_format=fmt)
        size = len(batch)
        model.train()
        predictions = check.call("forward()", model, batch)
        expected = (size, spec.num_classes) if spec.label_kind == "multiclass" else (size,)
        check.require(isinstance(predictions, torch.Tensor) and tuple(predictions.shape) == expected,
                      f"predictions have shape {tuple(getattr(predictions, 'shape', ()))} {where}; a {spec.label_kind} "
                      f"head gives {expected} ({'logits [B, C]' if spec.label_kind == 'multiclass' else 'one value per example [B]'})")
        check.finite(predictions, f"predictions {where}")
        loss = check.call("loss()", module.loss, predictions, batch.labels)
        check.require(isinstance(loss, torch.Tensor) and loss.dim() == 0, f"loss() must return a scalar tensor {where}")
        check.finite(loss, f"loss {where}")
        check.call("backward of the loss", loss.backward)
        head_params = _trainable(module)
        if head_params:
            check.require(_has_gradient(head_params), f"no gradient reaches the head's parameters {where}")
        check.require(_has_gradient(model.encoder.parameters()),
                      f"no gradient reaches the encoder {where}: do not detach the features")
        _grads_finite(check, model.named_parameters(), "a")
        model.eval()
        with torch.no_grad():
            raw = model(batch)
            labels = check.call("predict()", module.predict, raw)
        check.require(isinstance(labels, torch.Tensor) and tuple(labels.shape) == (size,),
                      f"predict() must give one label per example, shape {(size,)}, got {tuple(getattr(labels, 'shape', ()))} {where}")
        if spec.label_kind == "regression":
            low, high = spec.label_range
            check.require(labels.is_floating_point() and bool(((labels >= low) & (labels <= high)).all()),
                          f"predict() must give scores within {low}..{high} {where}: {labels.tolist()}")
        else:
            top = spec.num_classes - 1
            check.require(not labels.is_floating_point() and bool(((labels >= 0) & (labels <= top)).all()),
                          f"predict() must give integer classes 0..{top} {where}: {labels.tolist()}")
        state = state_round_trip(module.state_dict())
        torch.manual_seed(1)
        fresh = options.build(TINY_HIDDEN, spec, fmt)
        check.call("load_state_dict() of a fresh head", fresh.load_state_dict, state)
        twin = MultitaskModel(model.encoder, {spec.name: fresh}, {spec.name: fmt}).eval()
        with torch.no_grad():
            check.close(twin(batch), raw, f"a fresh head loaded with the saved state_dict() predicts differently {where}")


# --------------------------------------------------------------------------- samplers
_STEP_MODES = ("one-task", "all-tasks")


@_isolated
def check_sampler(options: Any, *, name: str | None = None, plugins: Any = None, exact_counts: bool = True) -> None:
    """A sampler: plans of known tasks in the step mode asked for, sized as it says, seeded, resumable.

    ``exact_counts=False`` is for samplers that draw every step independently (their epochs
    match ``batches_per_epoch()`` only in expectation): then only the step count is compared.
    """
    check = _Checker("sampler", _label("sampler", options, name))
    options = _instance(check, options)
    check.require(getattr(options, "step", None) in _STEP_MODES,
                  f"the options need a step option, \"one-task\" or \"all-tasks\" (found {getattr(options, 'step', None)!r})")
    variants = [options]
    other = "all-tasks" if options.step == "one-task" else "one-task"
    try:
        variants.append(attrs.evolve(options, step=other))
    except (ValueError, TypeError):
        pass  # this sampler refuses the other mode (a recipe error, as it should be)
    layouts = [
        {"tiny_sentiment": 5, "tiny_paraphrase": 3, "tiny_similarity": 2},
        {"tiny_sentiment": 3},
    ]
    for opts in variants:
        mode = opts.step
        _check_tasks(check, opts, TINY_TASK_NAMES)  # the recipe's tasks; a stage may train a subset
        for batches in layouts:
            tasks = list(batches)
            where = f"(step = {mode!r}, batches {batches})"
            sampler = check.call("build()", opts.build, dict(batches), 1234, 3)
            check.require(getattr(sampler, "step_mode", None) == mode,
                          f"the built sampler's step_mode is {getattr(sampler, 'step_mode', None)!r}, the options say {mode!r}")
            per_epoch = check.call("batches_per_epoch()", sampler.batches_per_epoch)
            steps = check.call("steps_per_epoch()", sampler.steps_per_epoch)
            check.require(isinstance(steps, int) and steps > 0, f"steps_per_epoch() must be a positive int, got {steps!r} {where}")
            check.require(isinstance(per_epoch, dict) and set(per_epoch) <= set(tasks)
                          and all(isinstance(v, int) and v >= 0 for v in per_epoch.values()),
                          f"batches_per_epoch() must map tasks to counts, got {per_epoch!r} {where}")
            plans = []
            for index in range(3):
                plan = check.call(f"epoch({index})", sampler.epoch, index)
                check.require(isinstance(plan, list) and all(isinstance(s, tuple) and s for s in plan),
                              f"epoch({index}) must be a list of non-empty tuples of task names {where}")
                for step in plan:
                    check.require(set(step) <= set(tasks), f"epoch({index}) names unknown tasks {step} {where}")
                    check.require(len(set(step)) == len(step), f"epoch({index}) repeats a task within a step: {step} {where}")
                    if mode == "one-task":
                        check.require(len(step) == 1, f"a one-task sampler gave the step {step} {where}")
                    else:
                        check.require(set(step) == set(tasks), f"an all-tasks step must hold every task, got {step} {where}")
                check.require(len(plan) == steps, f"epoch({index}) has {len(plan)} steps but steps_per_epoch() says {steps} {where}")
                plans.append(plan)
            counts = Counter(task for step in plans[0] for task in step)
            if mode == "all-tasks":
                check.require(all(per_epoch.get(t) == steps for t in tasks),
                              f"in all-tasks mode every task gives a batch per step: batches_per_epoch() should be {steps} "
                              f"for each task, got {per_epoch} {where}")
            elif exact_counts:
                expected = {t: n for t, n in per_epoch.items() if n}
                check.require(dict(counts) == expected,
                              f"epoch(0) gives {dict(counts)} batches per task but batches_per_epoch() says {per_epoch} {where}")
            else:
                check.require(sum(per_epoch.values()) == steps,
                              f"batches_per_epoch() sums to {sum(per_epoch.values())}, steps_per_epoch() is {steps} {where}")
            twin = opts.build(dict(batches), 1234, 3)
            check.require([twin.epoch(i) for i in range(3)] == plans, f"the same seed gave a different plan {where}")
            first = opts.build(dict(batches), 1234, 3)
            first.epoch(0)
            state = check.state(first, "the sampler")
            resumed = opts.build(dict(batches), 1234, 3)
            check.call("load_state_dict()", resumed.load_state_dict, state)
            check.require([resumed.epoch(1), resumed.epoch(2)] == [first.epoch(1), first.epoch(2)],
                          f"after load_state_dict() of the state saved after epoch 0, epochs 1 and 2 differ from the "
                          f"original's: keep the generator (and everything the plans depend on) in state_dict() {where}")


# --------------------------------------------------------------------------- loss combiners
def _check_combined(check: _Checker, combined: Any, tasks: Sequence[str], where: str) -> None:
    check.require(isinstance(combined, Combined), f"combine() must return mtbert.api.Combined {where}")
    check.require(set(combined.weighted) == set(tasks), f"Combined.weighted has tasks {sorted(combined.weighted)}, the step had {sorted(tasks)} {where}")
    check.require(set(combined.weights) == set(tasks), f"Combined.weights has tasks {sorted(combined.weights)}, the step had {sorted(tasks)} {where}")
    for task in tasks:
        value = combined.weighted[task]
        check.require(isinstance(value, torch.Tensor) and value.numel() == 1, f"the weighted loss of {task} must be a scalar tensor {where}")
        check.finite(value, f"the weighted loss of {task} {where}")
        check.finite(combined.weights[task], f"the weight of {task} {where}")
    for key, value in combined.logs.items():
        check.finite(value, f"Combined.logs[{key!r}] {where}")
    check.require(combined.total.requires_grad, f"the total loss does not require grad {where}: do not detach the losses")


@_isolated
def check_loss_combiner(options: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """A loss combiner: finite weighted losses, a differentiable total, extra parameters, state round trip.

    An optional ``end_epoch()`` (combiners whose weights change per epoch) is called after every
    step here, so a few "epochs" pass before the state is saved and after it is restored.
    """
    check = _Checker("loss_combiner", _label("loss_combiner", options, name))
    options = _instance(check, options)
    mode = getattr(options, "requires_step_mode", None)
    check.require(mode in (None, *_STEP_MODES), f"requires_step_mode must be None, 'one-task' or 'all-tasks', got {mode!r}")
    _check_tasks(check, options, TINY_TASK_NAMES)
    model = tiny_model(plugins=plugins).eval()  # eval: the same losses every time; gradients still flow
    tasks = list(model.heads)
    batches = tiny_batches(model)
    plan = [tuple(tasks), tuple(tasks)] + ([(t,) for t in tasks] if mode != "all-tasks" else [])

    def built() -> tuple[Any, list[torch.Tensor]]:
        combiner = check.call("build()", options.build, list(tasks), model)
        for method in ("combine", "after_step", "state_dict", "load_state_dict"):
            check.require(callable(getattr(combiner, method, None)), f"the built object has no {method}() method")
        extra = list(check.call("parameters()", combiner.parameters)) if hasattr(combiner, "parameters") else []
        check.require(all(isinstance(p, torch.Tensor) and p.requires_grad for p in extra),
                      "parameters() must give tensors that require grad (the run's optimizer trains them)")
        return combiner, extra

    combiner, extra = built()
    for step in plan:
        where = f"(step tasks {list(step)})"
        combined = check.call("combine()", combiner.combine, _losses(model, batches, step))
        _check_combined(check, combined, step, where)
        model.zero_grad(set_to_none=True)
        check.call("backward of Combined.total", combined.total.backward)
        check.require(_has_gradient(model.encoder.parameters()), f"no gradient reaches the encoder from the total {where}")
        _grads_finite(check, model.named_parameters(), "a model")
        for p in extra:
            if p.grad is not None:
                check.finite(p.grad, f"the gradient of a combiner parameter {where}")
        _sgd(extra)
        check.call("after_step()", combiner.after_step)
        if hasattr(combiner, "end_epoch"):  # optional: epoch-level combiners (each step is an "epoch" here)
            check.call("end_epoch()", combiner.end_epoch)
    state = check.state(combiner, "the combiner")
    resumed, resumed_extra = built()
    check.call("load_state_dict()", resumed.load_state_dict, state)
    for step in plan[:2] + plan[2:3]:
        where = f"after a state round trip (step tasks {list(step)})"
        losses = _losses(model, batches, step)
        a = combiner.combine(losses)
        b = check.call("combine()", resumed.combine, losses)
        for task in step:
            check.close(b.weights[task], a.weights[task], f"the weight of {task} differs from the original's {where}")
            check.close(b.weighted[task], a.weighted[task], f"the weighted loss of {task} differs from the original's {where}")
        model.zero_grad(set_to_none=True)
        a.total.backward(retain_graph=True)
        b.total.backward()
        _sgd(extra)
        _sgd(resumed_extra)
        combiner.after_step()
        resumed.after_step()
        if hasattr(combiner, "end_epoch"):
            combiner.end_epoch()
            resumed.end_epoch()


# --------------------------------------------------------------------------- gradient transforms
_NEEDS = ("per-task", "summed", "parameters")


def _per_task_gradients(model: Any, batches: dict[str, Batch], shared: list[nn.Parameter]) -> torch.Tensor:
    rows = []
    for task in model.heads:
        model.zero_grad(set_to_none=True)
        model.heads[task].loss(model(batches[task]), batches[task].labels).backward()
        rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in shared]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


@_isolated
def check_gradient_transform(options: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """A gradient transform: what it needs, output shapes, finite values, logs, state round trip."""
    check = _Checker("gradient_transform", _label("gradient_transform", options, name))
    options = _instance(check, options)
    mode = getattr(options, "requires_step_mode", None)
    check.require(mode in (None, *_STEP_MODES), f"requires_step_mode must be None, 'one-task' or 'all-tasks', got {mode!r}")
    needs = getattr(options, "needs", "summed")
    check.require(needs in _NEEDS, f"needs must be one of {', '.join(_NEEDS)}, got {needs!r}")
    _check_tasks(check, options, TINY_TASK_NAMES)
    model = tiny_model(plugins=plugins).eval()
    tasks = list(model.heads)
    batches = tiny_batches(model)
    shared = model.shared_parameters()
    size = sum(p.numel() for p in shared)
    grads = _per_task_gradients(model, batches, shared)
    everything = [p for p in model.parameters() if p.requires_grad]

    def built() -> Any:
        transform = check.call("build()", options.build, shared)
        check.require(callable(getattr(transform, "apply", None)), "the built object has no apply() method")
        built_needs = getattr(transform, "needs", "summed")
        check.require(built_needs == needs, f"the options say needs = {needs!r} but the built object says {built_needs!r} "
                                            f"(the engine reads the built object's; give both the same class attribute)")
        return transform

    def apply(transform: Any, matrix: torch.Tensor, step: Sequence[str], where: str) -> torch.Tensor:
        if needs == "per-task":
            out = check.call("apply()", transform.apply, matrix.clone(), tasks=list(step))
            check.require(isinstance(out, torch.Tensor) and (tuple(out.shape) == (size,) or tuple(out.shape) == tuple(matrix.shape)),
                          f"apply() of a [{matrix.shape[0]}, {size}] per-task gradient must give [{size}] or "
                          f"[{matrix.shape[0]}, {size}], got {tuple(getattr(out, 'shape', ()))} {where}")
            return out if out.dim() == 1 else out.sum(dim=0)
        if needs == "summed":
            out = check.call("apply()", transform.apply, matrix.sum(dim=0).clone(), tasks=list(step))
            check.require(isinstance(out, torch.Tensor) and tuple(out.shape) == (size,),
                          f"apply() of the summed gradient [{size}] must give [{size}], got {tuple(getattr(out, 'shape', ()))} {where}")
            return out
        model.zero_grad(set_to_none=True)
        sum(model.heads[t].loss(model(batches[t]), batches[t].labels) for t in step).backward()
        shapes = [None if p.grad is None else p.grad.shape for p in everything]
        check.call("apply()", transform.apply, everything, tasks=list(step))
        check.require([None if p.grad is None else p.grad.shape for p in everything] == shapes,
                      f"apply() changed the shape of some .grad {where}")
        out = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in everything])
        model.zero_grad(set_to_none=True)
        return out

    transform = built()
    steps = [tuple(tasks)] + ([(tasks[0],)] if mode != "all-tasks" else [])
    for step in steps:
        rows = [tasks.index(t) for t in step]
        where = f"(step tasks {list(step)})"
        out = apply(transform, grads[rows], step, where)
        check.finite(out, f"the transformed gradient {where}")
        check.logs(transform)
    if hasattr(transform, "state_dict"):
        check.require(callable(getattr(transform, "load_state_dict", None)), "has state_dict() but no load_state_dict()")
        state = check.state(transform, "the transform")
        resumed = built()
        check.call("load_state_dict()", resumed.load_state_dict, state)
        other = grads.roll(1, dims=0) * 0.5 + grads * 0.25
        for repeat in range(2):
            where = f"after a state round trip (application {repeat + 1})"
            a = apply(transform, other, tasks, where)
            b = apply(resumed, other, tasks, where)
            check.close(b, a, f"the transformed gradient differs from the original's {where}")


# --------------------------------------------------------------------------- regularizers
@_isolated
def check_regularizer(options: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """A regularizer: set-up, a finite scalar penalty (or None), backward, logs, state round trip."""
    check = _Checker("regularizer", _label("regularizer", options, name))
    options = _instance(check, options)
    _check_tasks(check, options, TINY_TASK_NAMES)
    base = tiny_model(plugins=plugins)
    tasks = list(base.heads)

    def built(model: Any, begin: bool) -> Any:
        regularizer = check.call("build()", options.build)
        for method in ("setup", "penalty"):
            check.require(callable(getattr(regularizer, method, None)), f"the built object has no {method}() method")
        check.call("setup()", regularizer.setup, model)
        if begin and hasattr(regularizer, "begin_stage"):  # a fresh stage starts (not a resumed one)
            check.call("begin_stage()", regularizer.begin_stage, model)
        return regularizer

    def step(model: Any, regularizer: Any, task: str, batch: Batch, train: bool) -> tuple[torch.Tensor, Any]:
        predictions = model(batch)
        loss = model.heads[task].loss(predictions, batch.labels)
        context = PenaltyContext(model=model, task=task, batch=batch, predictions=predictions, loss=loss)
        term = check.call("penalty()", regularizer.penalty, context)
        where = f"(task {task})"
        if term is not None:
            check.require(isinstance(term, torch.Tensor) and term.numel() == 1, f"penalty() must return a scalar tensor or None {where}")
            check.finite(term, f"the penalty {where}")
        if train:
            total = loss if term is None else loss + term
            model.zero_grad(set_to_none=True)
            check.call("backward of loss + penalty", total.backward)
            check.require(_has_gradient(model.encoder.parameters()), f"no gradient reaches the encoder with the penalty {where}")
            _grads_finite(check, model.named_parameters(), "a model")
            _sgd([p for p in model.parameters() if p.requires_grad], lr=0.01)
            if hasattr(regularizer, "after_step"):
                check.call("after_step()", regularizer.after_step)
            check.logs(regularizer)
        return predictions.detach(), None if term is None else term.detach()

    model = copy.deepcopy(base).train()
    regularizer = built(model, True)
    for round_ in range(2):
        for task in tasks:
            torch.manual_seed(10 * round_ + tasks.index(task))
            step(model, regularizer, task, tiny_batch(task, start=round_ * 4, input_format=model.input_formats[task]), True)
    state = check.state(regularizer, "the regularizer") if hasattr(regularizer, "state_dict") else None
    twin = copy.deepcopy(base).train()
    resumed = built(twin, False)  # the engine's order on --resume: set up, load the weights, load the state
    twin.load_state_dict(model.state_dict())
    if state is not None:
        check.require(callable(getattr(resumed, "load_state_dict", None)), "has state_dict() but no load_state_dict()")
        check.call("load_state_dict()", resumed.load_state_dict, state)
    for task in tasks:
        batch = tiny_batch(task, start=8, input_format=model.input_formats[task])
        torch.manual_seed(99)
        pa, ta = step(model, regularizer, task, batch, False)
        torch.manual_seed(99)
        pb, tb = step(twin, resumed, task, batch, False)
        where = f"after set-up, weights and state were restored (task {task})"
        check.close(pb, pa, f"the predictions differ from the original's {where}")
        check.require((ta is None) == (tb is None), f"one penalty is None and the other is not {where}")
        if ta is not None:
            check.close(tb, ta, f"the penalty differs from the original's {where}")


# --------------------------------------------------------------------------- stages
@attrs.define
class _StageProbe:
    """Wraps a stage to see what ``run`` returns and whether the model changed."""

    options: Any
    result: Any = attrs.field(default=None, init=False)
    changed: bool = attrs.field(default=False, init=False)

    def run(self, run: Any, index: int, name: str, resume: dict[str, Any] | None) -> Any:
        before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
        self.result = self.options.run(run, index, name, resume)
        after = dict(run.model.named_parameters())
        self.changed = any(not torch.equal(before[n], after[n].detach()) for n in before)
        return self.result


@_isolated
def check_stage(options: Any, *, name: str | None = None, plugins: Any = None, out: str | Path | None = None) -> None:
    """A stage: it trains the tiny model in place inside a whole tiny run and returns its metrics."""
    from mtbert.plugins import Component
    from mtbert.recipe import ComponentSpec, validate

    check = _Checker("stage", _label("stage", options, name))
    options = _instance(check, options)
    check.require(callable(getattr(options, "run", None)), "has no run(run, index, name, resume) method")
    plugins = plugins or _default_plugins()
    probe = _StageProbe(options)
    component = Component(kind="stage", name=name or "stage-under-test", factory=type(options), plugin="(under test)",
                          distribution="(in-process)", version="-")
    with contextlib.ExitStack() as stack:
        folder = Path(out) if out is not None else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mtbert-check-stage-"))) / "run"
        with installed_plugins(plugins):
            recipe = validate(tiny_recipe_table(), plugins, source="tiny.toml")
            recipe.stages = [ComponentSpec(kind="stage", name=component.name, options=probe, component=component)]
            from mtbert.engine.run import run_recipe

            check.call("a tiny run", run_recipe, recipe, plugins, out=folder, say=lambda m: None, warn=lambda m: None)
        info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        check.require(info.get("status") == "finished", f"the tiny run ended with status {info.get('status')!r}")
    check.require(isinstance(probe.result, dict), f"run() must return a dict of metrics, got {type(probe.result).__name__}")
    for key, value in probe.result.items():
        check.require(isinstance(key, str), f"metric key {key!r} is not a string")
        check.finite(value, f"metric {key!r}")
    check.require(probe.changed, "run() did not change any parameter of run.model (a stage trains the model in place)")


# --------------------------------------------------------------------------- optimizer groups
@_isolated
def check_optimizer_groups(options: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """An optimizer-groups rule: every parameter once, valid lr and decay, deterministic, AdamW steps."""
    from mtbert.engine.trainer import build_optimizer
    from mtbert.recipe import OptimSection

    check = _Checker("optimizer groups", _label("optimizer groups", options, name))
    options = _instance(check, options)
    model = tiny_model(plugins=plugins)
    optim = OptimSection()
    base = build_optimizer(model, optim, [], torch.device("cpu")).param_groups
    groups = [{k: v for k, v in g.items() if k in ("params", "lr", "weight_decay", "name")} for g in base]
    state = check.call("build()", options.build)
    check.require(callable(getattr(state, "apply", None)), "the built object has no apply(model, groups) method")
    out = check.call("apply()", state.apply, model, [dict(g) for g in groups])
    check.require(isinstance(out, list) and all(isinstance(g, dict) for g in out), "apply() must return a list of dicts")
    before = [id(p) for g in groups for p in g["params"]]
    after = [id(p) for g in out for p in g["params"]]
    check.require(sorted(after) == sorted(before), "apply() must return every parameter of the groups it got, each exactly once")
    for group in out:
        check.require(group["params"], f"group {group.get('name')!r} is empty")
        check.require(isinstance(group.get("lr"), float) and group["lr"] > 0, f"group {group.get('name')!r} has no positive float lr")
        check.require(isinstance(group.get("weight_decay"), float) and group["weight_decay"] >= 0,
                      f"group {group.get('name')!r} has no non-negative float weight_decay")
    again = check.call("apply()", options.build().apply, model, [dict(g) for g in groups])
    check.require([([id(p) for p in g["params"]], g["lr"], g["weight_decay"]) for g in again]
                  == [([id(p) for p in g["params"]], g["lr"], g["weight_decay"]) for g in out],
                  "apply() is not deterministic: the same groups in must give the same groups out (--resume reloads the optimizer)")
    optimizer = torch.optim.AdamW(out, betas=tuple(optim.betas), eps=optim.eps)
    batch = tiny_batch("tiny_sentiment", input_format=model.input_formats["tiny_sentiment"])
    model.heads["tiny_sentiment"].loss(model(batch), batch.labels).backward()
    check.call("an AdamW step on the groups", optimizer.step)


# --------------------------------------------------------------------------- weight averages
@_isolated
def check_weight_average(options: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """A weight average: named weights of the right shapes, evaluation swap restores, state round trip."""
    from mtbert.engine.extensions import averaged_weights

    check = _Checker("weight average", _label("weight average", options, name))
    options = _instance(check, options)
    model = tiny_model(plugins=plugins).train()
    average = check.call("build()", options.build, model)
    for method in ("update", "weights", "state_dict", "load_state_dict"):
        check.require(callable(getattr(average, method, None)), f"the built object has no {method}() method")
    params = dict(model.named_parameters())
    for step in range(3):
        task = TINY_TASK_NAMES[step % len(TINY_TASK_NAMES)]
        batch = tiny_batch(task, start=step * 4, input_format=model.input_formats[task])
        model.heads[task].loss(model(batch), batch.labels).backward()
        _sgd([p for p in model.parameters() if p.requires_grad], lr=0.05)
        check.call("update()", average.update, model)
    weights = check.call("weights()", average.weights)
    check.require(isinstance(weights, dict) and weights, "weights() must return a non-empty dict of parameter name -> tensor")
    for key, value in weights.items():
        check.require(key in params, f"weights() names {key!r}, which is not a parameter of the model")
        check.require(tuple(value.shape) == tuple(params[key].shape), f"weights()[{key!r}] has shape {tuple(value.shape)}, "
                                                                      f"the parameter {tuple(params[key].shape)}")
        check.finite(value, f"weights()[{key!r}]")
    trained = {k: v.detach().clone() for k, v in params.items()}
    with averaged_weights(model, average):
        for key, value in weights.items():
            check.close(params[key].detach(), value, f"inside the evaluation the model holds weights()[{key!r}]", atol=0, rtol=0)
    for key, value in trained.items():
        check.require(torch.equal(params[key].detach(), value), f"the trained weight {key!r} was not restored after evaluation")
    state = check.state(average, "the weight average")
    twin_model = copy.deepcopy(model)
    twin = check.call("build()", options.build, twin_model)
    check.call("load_state_dict()", twin.load_state_dict, state)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
        for p in twin_model.parameters():
            p.add_(0.01)
    average.update(model)
    twin.update(twin_model)
    resumed = twin.weights()
    for key, value in average.weights().items():
        check.close(resumed[key], value, f"after a state round trip and one more update, weights()[{key!r}] differs")


# --------------------------------------------------------------------------- all kinds
#: The contract check of each kind, by the kind names of :data:`mtbert.plugins.KINDS`.
CHECKS: dict[str, Callable[..., None]] = {
    "task": check_task,
    "checkpoint": check_checkpoint,
    "input_format": check_input_format,
    "head": check_head,
    "sampler": check_sampler,
    "loss_combiner": check_loss_combiner,
    "gradient_transform": check_gradient_transform,
    "regularizer": check_regularizer,
    "stage": check_stage,
    "optimizer_groups": check_optimizer_groups,
    "weight_average": check_weight_average,
}


def check_component(kind: str, options: Any, **kwargs: Any) -> None:
    """Run the contract check of ``kind`` (``"head"``, ``"sampler"``, ...) on ``options``."""
    if kind not in CHECKS:
        raise KeyError(f"unknown kind {kind!r}; choose one of {', '.join(CHECKS)}")
    CHECKS[kind](options, **kwargs)


# --------------------------------------------------------------------------- pytest fixtures
try:
    import pytest
except ImportError:  # mtbert.testing works without pytest; only the fixtures need it
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def mtbert_plugin_modules() -> list[Any]:
        """Override in your conftest.py: the plugins under test (modules, (name, plugin) pairs, or
        names of installed entry points), loaded beside mtbert's builtins by ``mtbert_plugins``."""
        return []

    @pytest.fixture
    def mtbert_plugins(mtbert_plugin_modules: list[Any]) -> Iterator[Any]:
        """Builtins + the tiny tasks and checkpoint + your plugins, installed process-wide for the test."""
        plugins = tiny_plugins(*mtbert_plugin_modules)
        with installed_plugins(plugins):
            yield plugins

    @pytest.fixture
    def mtbert_tiny_model(mtbert_plugins: Any) -> Any:
        """The tiny MultitaskModel: a random 2-layer encoder and a linear head per tiny task."""
        return tiny_model(plugins=mtbert_plugins)

    @pytest.fixture
    def mtbert_tiny_batch(mtbert_tiny_model: Any) -> Callable[..., Batch]:
        """``make(task="tiny_sentiment", size=4, split="train", start=0)``: a batch for the tiny model."""

        def make(task: str = "tiny_sentiment", size: int = 4, split: str = "train", start: int = 0) -> Batch:
            return tiny_batch(task, size=size, split=split, start=start, input_format=mtbert_tiny_model.input_formats[task])

        return make

    @pytest.fixture
    def mtbert_tiny_run(mtbert_plugins: Any, tmp_path: Path) -> Callable[..., tuple[Path, dict[str, Any]]]:
        """``run(overrides=(), table=None, name="run")``: a whole tiny ``mtbert run`` in ``tmp_path``."""

        def run(overrides: Iterable[str] = (), table: dict[str, Any] | None = None, name: str = "run"):
            return run_tiny_recipe(mtbert_plugins, tmp_path / name, table=table, overrides=overrides)

        return run
