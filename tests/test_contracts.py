"""Every registered component passes mtbert.testing's contract checks, and the checks catch broken ones.

The same checks a plugin author runs on their own component (CONTRIBUTING.md, "Testing a
plugin") run here on everything registered: mtbert's builtins (``MTBERT_PLUGINS=builtin``) and
the test kit's own tiny tasks and checkpoint. A component whose options have no defaults needs an
entry in ``OPTIONS``; a new component without defaults or an entry fails here, so nothing
registered escapes its contract. The second half registers deliberately broken components of
every kind, through their registration hooks, and checks that each check names the fault.
"""

from __future__ import annotations

import random as pyrandom
import tomllib
from typing import Any

import attrs
import pytest
import torch

from mtbert import hookimpl
from mtbert.data.tasks import TaskSpec
from mtbert.engine.components import Batch, Combined
from mtbert.engine.sampling import SeededSampler
from mtbert.model.backbone import CheckpointSpec
from mtbert.model.tokenizer import pad_batch
from mtbert.plugins import KINDS, get_plugins, load_plugins
from mtbert.schema import option
from mtbert.testing import (  # noqa: F401  (the fixtures are used by name)
    CHECKS, TINY_TASK_NAMES, check_component, mtbert_plugin_modules, mtbert_plugins, mtbert_tiny_batch,
    mtbert_tiny_model, mtbert_tiny_run, state_round_trip, tiny_data_dir, tiny_examples, tiny_plugins,
)
from mtbert_plugins.head_linear import LinearHead
from mtbert_plugins.inputs import SingleSentence

PLUGINS = tiny_plugins()

#: Minimal options for registered components that have no usable defaults.
OPTIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("sampler", "loop"): {"to": "tiny_sentiment"},
}

#: Extra keyword arguments for a component's check, each with its reason.
CHECK_ARGS: dict[tuple[str, str], dict[str, Any]] = {
    # These draw the task of every step independently: an epoch matches batches_per_epoch() in
    # expectation only (their exact = true variants below are checked exactly).
    ("sampler", "proportional"): {"exact_counts": False},
    ("sampler", "temperature"): {"exact_counts": False},
}

#: Option sets beyond the defaults whose code paths differ enough to check too.
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("sampler", "proportional", {"exact": True}),
    ("sampler", "temperature", {"exact": True, "temperature_end": 5.0}),
    ("sampler", "in-turn", {"shuffle_tasks": True}),
    ("sampler", "round-robin", {"shuffle_order": True}),
    ("sampler", "loop", {"to": "tiny_similarity", "order": "shuffled"}),
    ("sampler", "random-subset", {"fraction": 0.5, "order": "shuffled"}),
    ("loss_combiner", "gradnorm", {"layer": "all-shared", "alpha": 1.0}),
    ("loss_combiner", "uncertainty", {"form": "exp", "init": 0.5}),
    ("loss_combiner", "weights", {"weights": {"tiny_sentiment": 2.0}, "default": 0.5}),
    ("gradient_transform", "pcgrad", {"reduction": "mean"}),
    ("gradient_transform", "clip-norm", {"scope": "shared", "max_norm": 0.01}),
    ("regularizer", "smart", {"bregman_weight": 1.0, "steps": 2, "dropout": "independent"}),
    ("regularizer", "mixout", {"p": 0.5, "granularity": "element"}),
    ("regularizer", "norm-penalty", {"norm": "l1", "tasks": ["tiny_similarity"], "reduce": "sum"}),
    ("head", "mlp", {"hidden": [8], "pooling": "cls"}),
    ("head", "linear", {"pooling": "pooler", "class_weights": None}),
]

#: Components whose check loads the MiniLM package (its vocabulary or weights).
NEEDS_MINILM = {("checkpoint", "minilm-l6"), ("checkpoint", "random:tiny")}

REGISTERED = [(kind, name) for kind in KINDS for name in PLUGINS.registry.names(kind)]


def _options(kind: str, name: str, extra: dict[str, Any] | None = None) -> Any:
    factory = PLUGINS.registry.find(kind, name).factory
    if kind in ("task", "checkpoint"):  # registered as description objects, not options classes
        return factory
    if extra is not None:
        return factory(**{**OPTIONS.get((kind, name), {}), **extra})
    if (kind, name) in OPTIONS:
        return factory(**OPTIONS[(kind, name)])
    try:
        return factory()
    except Exception as exc:
        pytest.fail(f"{kind} '{name}' cannot be built from defaults ({type(exc).__name__}: {exc}); add its minimal "
                    f"options to OPTIONS in tests/test_contracts.py so its contract is checked")


@pytest.mark.parametrize(("kind", "name"), REGISTERED, ids=[f"{k}:{n}" for k, n in REGISTERED])
def test_registered_component_passes_its_contract(kind, name, request):
    if (kind, name) in NEEDS_MINILM:
        request.getfixturevalue("minilm_dir")
    check_component(kind, _options(kind, name), name=name, plugins=PLUGINS, **CHECK_ARGS.get((kind, name), {}))


@pytest.mark.parametrize(("kind", "name", "extra"), VARIANTS, ids=[f"{k}:{n}:{sorted(e)}" for k, n, e in VARIANTS])
def test_option_variants_pass_their_contract(kind, name, extra):
    check_component(kind, _options(kind, name, extra), name=name, plugins=PLUGINS)


def test_every_kind_has_a_check_and_every_table_entry_is_registered():
    assert set(CHECKS) == set(KINDS)
    for kind in KINDS:  # the builtins cover every kind, so every check above really ran
        assert any(k == kind for k, _ in REGISTERED), kind
    stale = [key for key in [*OPTIONS, *CHECK_ARGS, *((k, n) for k, n, _ in VARIANTS), *NEEDS_MINILM]
             if PLUGINS.registry.find(*key) is None]
    assert not stale, f"entries for components that are not registered: {stale}"
    builtin = {c.name for kind in KINDS for c in PLUGINS.registry.components[kind].values() if c.distribution == "mtbert"}
    assert {"linear", "round-robin", "sum", "pcgrad", "smart", "multitask", "single", "sst", "minilm-l6"} <= builtin


# --------------------------------------------------------------------------- the fixtures
def test_fixtures_give_an_isolated_tiny_world(mtbert_plugins, mtbert_tiny_model, mtbert_tiny_batch):
    assert get_plugins() is mtbert_plugins  # installed process-wide for the test
    assert set(TINY_TASK_NAMES) <= set(mtbert_plugins.registry.names("task"))
    assert mtbert_plugins.registry.find("head", "linear").distribution == "mtbert"
    assert set(mtbert_tiny_model.heads) == set(TINY_TASK_NAMES)
    for task, shape in [("tiny_sentiment", (5, 3)), ("tiny_paraphrase", (5,)), ("tiny_similarity", (5,))]:
        batch = mtbert_tiny_batch(task, size=5)
        assert batch.task == task and len(batch) == 5
        assert tuple(mtbert_tiny_model(batch).shape) == shape


class TestAnAuthorsPlugin:
    """What a plugin author's conftest does: override ``mtbert_plugin_modules``."""

    class Halve:
        @hookimpl
        def mtbert_register_loss_combiners(self, register):
            register("halve", HalfSum)

    @pytest.fixture
    def mtbert_plugin_modules(self):
        return [("halver", self.Halve())]

    def test_the_plugin_loads_beside_the_builtins(self, mtbert_plugins):
        component = mtbert_plugins.registry.find("loss_combiner", "halve")
        assert component.plugin == "halver" and component.distribution == "(in-process)"
        assert mtbert_plugins.registry.find("loss_combiner", "sum") is not None

    def test_a_tiny_run_uses_it(self, mtbert_tiny_run):
        folder, summary = mtbert_tiny_run(["loss_combiner=halve", "optim.epochs=2"])
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 2 and summary["last"]["epoch"] == 2
        assert {"tiny_sentiment_acc", "tiny_paraphrase_acc", "tiny_similarity_pearson", "mean"} <= set(summary["last"]["dev"])
        assert tomllib.loads((folder / "recipe.toml").read_text())["loss_combiner"] == {"name": "halve", "scale": 0.5}


def test_tiny_files_read_back_as_the_examples():
    data = tiny_data_dir()
    for name in TINY_TASK_NAMES:
        spec = PLUGINS.registry.find("task", name).factory
        for split in ("train", "dev", "test"):
            result = spec.read(data / spec.files[split], split, strict=True)
            expected = tiny_examples(name, split)
            assert [(e.id, e.texts, e.label) for e in result.examples] == [(e.id, e.texts, e.label) for e in expected]
    labels = {e.label for e in tiny_examples("tiny_sentiment")}
    assert labels == {0, 1, 2}


def test_state_round_trip_keeps_tensors_and_key_types():
    state = {"generator": torch.Generator().get_state(), 3: [1.5, "x", None, (1, 2)], "nested": {"t": torch.ones(2)}}
    again = state_round_trip(state)
    assert torch.equal(again["generator"], state["generator"]) and again[3] == [1.5, "x", None, [1, 2]]
    assert torch.equal(again["nested"]["t"], torch.ones(2))


def test_checks_restore_the_global_random_state_and_threads():
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    check_component("loss_combiner", _options("loss_combiner", "sum"), name="sum")
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads


def test_unknown_entry_point_names_are_an_error():
    with pytest.raises(LookupError, match="no installed entry point named no-such-plugin"):
        tiny_plugins("no-such-plugin")


# --------------------------------------------------------------------------- broken components
@attrs.define
class HalfSum:
    """Half the summed losses (a correct component, for the author's-plugin tests)."""

    scale: float = option(0.5, help="factor on every task loss", min=0)
    requires_step_mode = None

    def build(self, task_names, model):
        return _Stateless(lambda losses: Combined(weighted={t: self.scale * l for t, l in losses.items()},
                                                  weights={t: self.scale for t in losses}))


class _Stateless:
    def __init__(self, combine):
        self.combine = combine

    def after_step(self):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _registered(kind: str, name: str, plugin: Any) -> Any:
    """Register ``plugin`` alone (through its hook) and return what it registered under ``name``."""
    plugins = load_plugins([("broken", plugin)], entry_points=False)
    assert not plugins.registry.failures, plugins.registry.failures
    return plugins.registry.find(kind, name).factory


def _fails(kind: str, options: Any, match: str, **kwargs: Any) -> None:
    with pytest.raises(AssertionError, match=match):
        check_component(kind, options, plugins=PLUGINS, **kwargs)


def test_check_task_catches_a_prediction_file_without_split():
    class Plugin:
        @hookimpl
        def mtbert_register_tasks(self, register):
            register("clash", TaskSpec(name="clash", description="d", text_columns=("sentence",), label_column="y",
                                       label_kind="binary", files={"train": "a.csv", "dev": "b.csv"},
                                       metric_key="clash_acc", prediction_header="P", prediction_file="clash.csv"))

    _fails("task", _registered("task", "clash", Plugin()), r"task 'clash'.*lacks '\{split\}'")


def test_check_checkpoint_catches_a_folder_without_vocabulary(tmp_path):
    class Plugin:
        @hookimpl
        def mtbert_register_checkpoints(self, register):
            register("empty", CheckpointSpec(description="nothing in it", folder=lambda: tmp_path,
                                             random_config={"hidden_size": 8, "num_hidden_layers": 1,
                                                            "num_attention_heads": 2, "intermediate_size": 8}))

    _fails("checkpoint", _registered("checkpoint", "empty", Plugin()), r"load_backbone\(\) raised CheckpointError.*vocab")


@attrs.define
class FixedPadding(SingleSentence):
    """Pads every batch to 32 tokens (what dynamic padding exists to avoid)."""

    def collate(self, encoded, indices, task, label_dtype):
        inputs = pad_batch([encoded.sequences[0][i] for i in indices], pad_to=32)
        return Batch(task=task, inputs=inputs, ids=[encoded.ids[i] for i in indices],
                     labels=torch.tensor([encoded.labels[i] for i in indices], dtype=label_dtype)
                     if encoded.labels[indices[0]] is not None else None)


def test_check_input_format_catches_fixed_padding():
    class Plugin:
        @hookimpl
        def mtbert_register_input_formats(self, register):
            register("fixed", FixedPadding)

    _fails("input_format", _registered("input_format", "fixed", Plugin()), r"padded to 32 tokens.*longest in the batch only")


@attrs.define
class DetachedHead(LinearHead):
    def build(self, hidden_size, task, input_format):
        module = super().build(hidden_size, task, input_format)
        forward = module.forward
        module.forward = lambda features: forward(type(features)(
            hidden=tuple(h.detach() for h in features.hidden), masks=features.masks,
            pooled=tuple(p.detach() for p in features.pooled)))
        return module


@attrs.define
class ColumnHead(LinearHead):
    def build(self, hidden_size, task, input_format):
        module = super().build(hidden_size, task, input_format)
        forward = module.forward
        module.forward = lambda features: forward(features).reshape(len(features.hidden[0]), -1)
        return module


def test_check_head_catches_detached_features_and_wrong_shapes():
    class Plugin:
        @hookimpl
        def mtbert_register_heads(self, register):
            register("detached", DetachedHead)
            register("column", ColumnHead)

    _fails("head", _registered("head", "detached", Plugin()), r"DetachedHead: no gradient reaches the encoder")
    _fails("head", _registered("head", "column", Plugin()), r"predictions have shape \(5, 1\).*binary head gives \(5,\)")


class _GlobalRandomSampler(SeededSampler):
    def batches_per_epoch(self):
        return dict(self.batches)

    def epoch(self, index):
        steps = [(t,) for t in self.tasks for _ in range(self.batches[t])]
        pyrandom.shuffle(steps)  # Python's global generator: not in state_dict(), so resume differs
        return steps


class _OffByOneSampler(_GlobalRandomSampler):
    def epoch(self, index):
        return [(t,) for t in self.tasks for _ in range(self.batches[t])][:-1]


@attrs.define
class GlobalRandom:
    step: str = option("one-task", help="one-task only")

    def build(self, batches, seed, epochs):
        pyrandom.seed(seed)
        return _GlobalRandomSampler(batches, seed, "one-task")


@attrs.define
class OffByOne(GlobalRandom):
    def build(self, batches, seed, epochs):
        return _OffByOneSampler(batches, seed, "one-task")


def test_check_sampler_catches_unsaved_randomness_and_wrong_step_counts():
    class Plugin:
        @hookimpl
        def mtbert_register_samplers(self, register):
            register("global-random", GlobalRandom)
            register("off-by-one", OffByOne)

    _fails("sampler", _registered("sampler", "global-random", Plugin()),
           r"after load_state_dict\(\).*epochs 1 and 2 differ")
    _fails("sampler", _registered("sampler", "off-by-one", Plugin()), r"epoch\(0\) has 9 steps but steps_per_epoch\(\) says 10")


class _RunningMean:
    """Weights from a running mean of the losses, but the mean is not in state_dict()."""

    def __init__(self):
        self.seen = 0

    def combine(self, losses):
        self.seen += 1
        weights = {t: 1.0 / self.seen for t in losses}
        return Combined(weighted={t: weights[t] * l for t, l in losses.items()}, weights=weights)

    def after_step(self):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@attrs.define
class ForgetfulCombiner:
    requires_step_mode = None

    def build(self, task_names, model):
        return _RunningMean()


@attrs.define
class DetachingCombiner:
    requires_step_mode = None

    def build(self, task_names, model):
        return _Stateless(lambda losses: Combined(weighted={t: l.detach() for t, l in losses.items()},
                                                  weights={t: 1.0 for t in losses}))


def test_check_loss_combiner_catches_lost_state_and_detached_losses():
    class Plugin:
        @hookimpl
        def mtbert_register_loss_combiners(self, register):
            register("forgetful", ForgetfulCombiner)
            register("detaching", DetachingCombiner)

    _fails("loss_combiner", _registered("loss_combiner", "forgetful", Plugin()),
           r"weight of tiny_sentiment differs from the original's after a state round trip")
    _fails("loss_combiner", _registered("loss_combiner", "detaching", Plugin()), r"total loss does not require grad")


class _Halver:
    def apply(self, grads, *, tasks):
        return grads.sum(dim=0) / 2  # forgot to say needs = "per-task" here


@attrs.define
class MislabelledTransform:
    requires_step_mode = None
    needs = "per-task"

    def build(self, shared_parameters):
        return _Halver()


class _Truncating:
    needs = "summed"

    def apply(self, grads, *, tasks):
        return grads[:-1]

    def logs(self):
        return {}


@attrs.define
class TruncatingTransform:
    requires_step_mode = None
    needs = "summed"

    def build(self, shared_parameters):
        return _Truncating()


def test_check_gradient_transform_catches_needs_mismatch_and_wrong_shapes():
    class Plugin:
        @hookimpl
        def mtbert_register_gradient_transforms(self, register):
            register("mislabelled", MislabelledTransform)
            register("truncating", TruncatingTransform)

    _fails("gradient_transform", _registered("gradient_transform", "mislabelled", Plugin()),
           r"options say needs = 'per-task' but the built object says 'summed'")
    _fails("gradient_transform", _registered("gradient_transform", "truncating", Plugin()), r"must give \[\d+\], got \(\d+,\)")


class _PerExample:
    def setup(self, model):
        pass

    def penalty(self, context):
        return context.predictions.float().pow(2).reshape(len(context.batch), -1).mean(dim=1)  # not reduced


class _Counter:
    """A penalty that grows with the steps taken; the count is not in state_dict()."""

    def __init__(self):
        self.steps = 0

    def setup(self, model):
        pass

    def penalty(self, context):
        return context.loss * 0 + 0.01 * self.steps

    def after_step(self):
        self.steps += 1

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@attrs.define
class PerExamplePenalty:
    def build(self):
        return _PerExample()


@attrs.define
class CountingPenalty:
    def build(self):
        return _Counter()


def test_check_regularizer_catches_unreduced_penalties_and_lost_state():
    class Plugin:
        @hookimpl
        def mtbert_register_regularizers(self, register):
            register("per-example", PerExamplePenalty)
            register("counting", CountingPenalty)

    _fails("regularizer", _registered("regularizer", "per-example", Plugin()), r"penalty\(\) must return a scalar tensor or None")
    _fails("regularizer", _registered("regularizer", "counting", Plugin()), r"the penalty differs from the original's")


@attrs.define
class SilentStage:
    def run(self, run, index, name, resume):
        return None


def test_check_stage_catches_a_stage_that_neither_trains_nor_reports():
    class Plugin:
        @hookimpl
        def mtbert_register_stages(self, register):
            register("silent", SilentStage)

    _fails("stage", _registered("stage", "silent", Plugin()), r"run\(\) must return a dict of metrics, got NoneType")


@attrs.define
class Undocumented:
    requires_step_mode = None
    scale: float = attrs.field(default=1.0)  # no mtbert.schema.option: no help for mtbert plugins

    def build(self, task_names, model):
        return _RunningMean()


@attrs.define
class NeedsAnOption:
    requires_step_mode = None
    scale: float = option(help="required")

    def build(self, task_names, model):
        return _RunningMean()


def test_options_classes_must_be_documented_and_buildable_from_defaults():
    _fails("loss_combiner", Undocumented, r"option 'scale' has no help text")
    _fails("loss_combiner", NeedsAnOption, r"NeedsAnOption\(\) cannot be built from defaults")
    _fails("loss_combiner", object(), r"is not an attrs class")
