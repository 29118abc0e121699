"""Tests of the DWA loss combiner: mtbert's contract check, the paper's formula, and whole runs."""

from __future__ import annotations

import importlib.metadata as md
import math
import random
from pathlib import Path

import pytest
import torch

from mtbert.api import hookimpl, load_recipe
from mtbert.testing import check_loss_combiner, run_tiny_recipe, tiny_plugins
from mtbert_plugin_example import dwa
from mtbert_plugin_example.dwa import DWA, DWACombiner, dwa_weights

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "dwa.toml"


def losses(**values: float) -> dict[str, torch.Tensor]:
    return {task: torch.tensor(value, requires_grad=True) for task, value in values.items()}


def run_epoch(combiner: DWACombiner, steps: list[dict[str, float]]):
    """Feed one epoch of steps; returns the Combined of every step, then closes the epoch."""
    out = [combiner.combine(losses(**step)) for step in steps]
    combiner.end_epoch()
    return out


# --------------------------------------------------------------------------- mtbert's contract
@pytest.mark.parametrize("options", [DWA, DWA(temperature=0.5)], ids=["defaults", "T=0.5"])
def test_dwa_passes_mtberts_loss_combiner_contract(options):
    check_loss_combiner(options, name="dwa")


def test_the_plugin_registers_dwa_beside_the_builtins(mtbert_plugins):
    component = mtbert_plugins.registry.find("loss_combiner", "dwa")
    assert component.factory is DWA and component.plugin == "dwa"
    assert mtbert_plugins.registry.find("loss_combiner", "sum") is not None


# --------------------------------------------------------------------------- the formula
def test_first_two_epochs_use_weight_one_then_the_ratio_of_the_last_two():
    combiner = DWACombiner(2.0, ["a", "b", "c"])
    epoch1 = run_epoch(combiner, [{"a": 3.0, "b": 1.0, "c": 0.25}, {"a": 1.0, "b": 1.0, "c": 0.75}])  # means 2, 1, 0.5
    epoch2 = run_epoch(combiner, [{"a": 1.0, "b": 1.5, "c": 1.0}, {"a": 1.0, "b": 0.5, "c": 1.0}])  # means 1, 1, 1
    for combined in epoch1 + epoch2:
        assert combined.weights == {"a": 1.0, "b": 1.0, "c": 1.0}
    # Epoch 3: w = L(2)/L(1) = (0.5, 1.0, 2.0); lambda = 3 exp(w/2) / sum exp(w/2), by hand:
    # exp(0.25) = 1.284025, exp(0.5) = 1.648721, exp(1.0) = 2.718282, sum 5.651029.
    (combined,) = run_epoch(combiner, [{"a": 0.5, "b": 0.5, "c": 0.5}])
    assert combined.weights == pytest.approx({"a": 0.681659, "b": 0.875268, "c": 1.443073}, abs=1e-6)
    assert sum(combined.weights.values()) == pytest.approx(3.0)
    assert combined.logs == pytest.approx({"ratio/a": 0.5, "ratio/b": 1.0, "ratio/c": 2.0})
    # Epoch 4 compares epoch 3 (0.5 each) with epoch 2 (1 each): equal ratios, equal weights.
    (combined,) = run_epoch(combiner, [{"a": 1.0, "b": 1.0, "c": 1.0}])
    assert combined.weights == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})


def test_weighted_losses_carry_the_weights_into_the_gradient():
    combiner = DWACombiner(2.0, ["a", "b"])
    run_epoch(combiner, [{"a": 1.0, "b": 1.0}])
    run_epoch(combiner, [{"a": 0.5, "b": 1.0}])
    inputs = losses(a=2.0, b=3.0)
    combined = combiner.combine(inputs)
    combined.total.backward()
    for task in ("a", "b"):
        assert inputs[task].grad.item() == pytest.approx(combined.weights[task])
        assert combined.weighted[task].item() == pytest.approx(combined.weights[task] * inputs[task].item())
    assert combined.weights["b"] > combined.weights["a"]  # b's loss did not fall: it gets more weight


def test_two_tasks_match_the_tanh_form():
    # For K = 2: lambda_1 = 2 / (1 + exp((w2 - w1) / T)) = 1 - tanh((w2 - w1) / (2T)).
    rng = random.Random(0)
    for _ in range(200):
        w1, w2, t = rng.uniform(0.1, 3), rng.uniform(0.1, 3), rng.uniform(0.2, 5)
        weights, ratios = dwa_weights({"x": w1, "y": w2}, {"x": 1.0, "y": 1.0}, ["x", "y"], t)
        assert ratios == pytest.approx({"x": w1, "y": w2})
        assert weights["x"] == pytest.approx(1 - math.tanh((w2 - w1) / (2 * t)), rel=1e-12)
        assert weights["y"] == pytest.approx(1 + math.tanh((w2 - w1) / (2 * t)), rel=1e-12)


def test_weights_sum_to_the_task_count_and_temperature_flattens_them():
    rng = random.Random(1)
    tasks = ["a", "b", "c", "d"]
    for _ in range(100):
        previous = {t: rng.uniform(0.01, 10) for t in tasks}
        earlier = {t: rng.uniform(0.01, 10) for t in tasks}
        weights, ratios = dwa_weights(previous, earlier, tasks, rng.uniform(0.05, 10))
        assert sum(weights.values()) == pytest.approx(len(tasks), rel=1e-12)
        assert all(w > 0 for w in weights.values())
        order = sorted(tasks, key=lambda t: ratios[t])
        assert [weights[t] for t in order] == sorted(weights.values())  # larger ratio, larger weight
    previous, earlier = {"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 1.0}
    flat, _ = dwa_weights(previous, earlier, ["a", "b"], 1e6)
    sharp, _ = dwa_weights(previous, earlier, ["a", "b"], 0.01)
    assert flat == pytest.approx({"a": 1.0, "b": 1.0}, abs=1e-5)
    assert sharp == pytest.approx({"a": 0.0, "b": 2.0}, abs=1e-6)  # and no overflow at T = 0.01


def test_averages_count_only_the_steps_that_had_the_task():
    combiner = DWACombiner(1.0, ["a", "b"])
    run_epoch(combiner, [{"a": 4.0}, {"b": 1.0}, {"a": 2.0}])  # one-task steps: means a 3, b 1
    run_epoch(combiner, [{"a": 1.5}, {"b": 2.0}])  # means a 1.5, b 2
    assert combiner.history == [{"a": 3.0, "b": 1.0}, {"a": 1.5, "b": 2.0}]
    assert combiner.ratios == pytest.approx({"a": 0.5, "b": 2.0})
    expected_b = 2 * math.exp(2.0) / (math.exp(0.5) + math.exp(2.0))
    assert combiner.weights["b"] == pytest.approx(expected_b)
    assert combiner.combine(losses(b=1.0)).weights == pytest.approx({"b": expected_b})  # only the step's task


def test_a_task_missing_from_an_epoch_gets_ratio_one():
    combiner = DWACombiner(2.0, ["a", "b"])
    run_epoch(combiner, [{"a": 2.0}])  # b absent
    run_epoch(combiner, [{"a": 1.0, "b": 5.0}])
    assert combiner.ratios == {"a": 0.5, "b": 1.0}
    assert sum(combiner.weights.values()) == pytest.approx(2.0)


def test_state_resumes_in_the_middle_of_an_epoch():
    first = DWACombiner(2.0, ["a", "b"])
    run_epoch(first, [{"a": 1.0, "b": 2.0}])
    first.combine(losses(a=0.5, b=2.0))  # half of epoch 2
    resumed = DWACombiner(2.0, ["a", "b"])
    resumed.load_state_dict(first.state_dict())
    for combiner in (first, resumed):
        combiner.combine(losses(a=0.25, b=2.0))
        combiner.end_epoch()
    assert resumed.weights == first.weights and resumed.weights != {"a": 1.0, "b": 1.0}
    with pytest.raises(ValueError, match="state is for tasks"):
        DWACombiner(2.0, ["a"]).load_state_dict(first.state_dict())


# --------------------------------------------------------------------------- whole runs
class StepLog:
    """Records every optimizer step's logs and where each epoch ended."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []
        self.epoch_ends: list[int] = []

    @hookimpl
    def mtbert_on_step_end(self, step, logs):
        self.steps.append(dict(logs))

    @hookimpl
    def mtbert_on_evaluate(self, step):
        self.epoch_ends.append(step)


def test_a_tiny_run_weights_epoch_three_by_the_formula(tmp_path):
    record = StepLog()
    plugins = tiny_plugins(("dwa", dwa), ("record", record))
    folder, summary = run_tiny_recipe(plugins, tmp_path / "run", overrides=["loss_combiner=dwa", "optim.epochs=3", "train.keep_last=true"])
    assert summary["last"]["epoch"] == 3 and len(record.epoch_ends) == 3
    tasks = ["tiny_sentiment", "tiny_paraphrase", "tiny_similarity"]
    bounds = [0, *record.epoch_ends]
    epochs = [record.steps[bounds[i]:bounds[i + 1]] for i in range(3)]

    def mean_loss(steps, task):
        values = [s[f"loss/{task}"] for s in steps if f"loss/{task}" in s]
        return sum(values) / len(values)

    for steps in epochs[:2]:
        assert all(s[f"weight/{t}"] == 1.0 for s in steps for t in tasks if f"weight/{t}" in s)
    expected, _ = dwa_weights({t: mean_loss(epochs[1], t) for t in tasks}, {t: mean_loss(epochs[0], t) for t in tasks},
                              tasks, 2.0)
    seen = {t: s[f"weight/{t}"] for s in epochs[2] for t in tasks if f"weight/{t}" in s}
    assert seen == pytest.approx(expected, rel=1e-5)
    assert seen != pytest.approx({t: 1.0 for t in tasks})
    assert (folder / "checkpoints" / "last" / "state.json").is_file()


def test_the_shipped_recipe_validates_through_the_installed_entry_point():
    try:
        version = md.version("mtbert-plugin-example")
    except md.PackageNotFoundError:
        pytest.skip("mtbert-plugin-example is not installed (pip install -e examples/mtbert-plugin-example)")
    plugins = tiny_plugins("dwa")  # through the entry point, with its distribution and version
    component = plugins.registry.find("loss_combiner", "dwa")
    assert (component.distribution, component.version) == ("mtbert-plugin-example", version)
    recipe = load_recipe(RECIPE, [], plugins)
    assert recipe.loss_combiner.name == "dwa" and recipe.loss_combiner.options == DWA(temperature=2.0)
    assert RECIPE.read_text().startswith("# Run: ")
