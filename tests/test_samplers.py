"""The builtin samplers beyond round-robin: in-turn, upsample, loop, random-subset, proportional, temperature.

Each sampler must give the batches per task per epoch its docstring states (exact counts for
the deterministic ones, exact epoch sizes and chi-square-bounded proportions for the
stochastic ones), honour its step mode, be reproducible from its seed, continue identically
after its state went through a checkpoint, and refuse bad options with one line through
recipe validation. The formulas are re-derived here independently of the plugins' code.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import permutations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtbert.engine.checkpoint import join_tensors, split_tensors
from mtbert.engine.sampling import SeededSampler
from mtbert.errors import RecipeError
from mtbert.plugins import load_plugins, set_plugins
from mtbert.recipe import validate
from mtbert_plugins import (
    sampler_in_turn,
    sampler_loop,
    sampler_proportional,
    sampler_random_subset,
    sampler_temperature,
    sampler_upsample,
)
from mtbert_plugins.sampler_in_turn import InTurn
from mtbert_plugins.sampler_loop import Loop
from mtbert.api import cycled_steps, largest_remainder
from mtbert_plugins.sampler_proportional import Proportional
from mtbert_plugins.sampler_random_subset import RandomSubset, subset_size
from mtbert_plugins.sampler_temperature import Temperature, annealed_temperature, task_probabilities
from mtbert_plugins.sampler_upsample import Upsample

B = {"sst": 7, "para": 50, "sts": 4}  # batches per full pass, recipe order sst, para, sts
ALL = ("sst", "para", "sts")
N = sum(B.values())

MODULES = {
    "in-turn": sampler_in_turn,
    "upsample": sampler_upsample,
    "loop": sampler_loop,
    "random-subset": sampler_random_subset,
    "proportional": sampler_proportional,
    "temperature": sampler_temperature,
}

# Options that make each sampler draw from its generator (for seed/state tests).
RANDOMIZED = {
    "in-turn": InTurn(shuffle_tasks=True),
    "upsample": Upsample(),
    "loop": Loop(to="sst", order="shuffled"),
    "random-subset": RandomSubset(fraction={"para": 0.2}, order="shuffled"),
    "proportional": Proportional(),
    "proportional-exact": Proportional(exact=True),
    "temperature": Temperature(temperature=2.0),
    "temperature-annealed": Temperature(temperature=1.0, temperature_end=5.0),
    "temperature-exact": Temperature(temperature=3.0, exact=True),
}


def task_counts(plan):
    return Counter(task for step in plan for task in step)


def one_task(plan):
    return all(len(step) == 1 for step in plan)


def chi_square(observed: Counter, probabilities: dict[str, float], draws: int) -> float:
    return sum((observed[t] - draws * p) ** 2 / (draws * p) for t, p in probabilities.items())


CHI2_DF2_P001 = 13.82  # chi-square critical value, 2 degrees of freedom, p = 0.001


# =========================================================================== in-turn
def test_in_turn_gives_every_batch_of_each_task_in_recipe_order():
    sampler = InTurn().build(dict(B), seed=1, epochs=3)
    expected = [("sst",)] * 7 + [("para",)] * 50 + [("sts",)] * 4
    assert sampler.step_mode == "one-task"
    assert sampler.batches_per_epoch() == B
    assert sampler.steps_per_epoch() == N == 61
    assert sampler.epoch(0) == expected
    assert sampler.epoch(1) == expected  # nothing random without shuffle_tasks


def test_in_turn_shuffled_task_order_keeps_whole_blocks_and_varies():
    sampler = InTurn(shuffle_tasks=True).build(dict(B), seed=5, epochs=50)
    orders = set()
    for e in range(60):
        plan = sampler.epoch(e)
        assert task_counts(plan) == B and one_task(plan)
        blocks = [plan[0][0]] + [b[0] for a, b in zip(plan, plan[1:]) if a != b]
        assert sorted(blocks) == sorted(ALL)  # each task one contiguous block
        orders.add(tuple(blocks))
    assert orders == set(permutations(ALL))  # all 6 orders turn up in 60 epochs


# =========================================================================== upsample
def test_upsample_gives_every_task_the_largest_count_shuffled():
    sampler = Upsample().build(dict(B), seed=2, epochs=3)
    assert sampler.batches_per_epoch() == {"sst": 50, "para": 50, "sts": 50}
    plan = sampler.epoch(0)
    assert len(plan) == sampler.steps_per_epoch() == 150
    assert task_counts(plan) == {"sst": 50, "para": 50, "sts": 50} and one_task(plan)
    assert plan[:3] != [("sst",), ("para",), ("sts",)] or plan[3:6] != [("sst",), ("para",), ("sts",)]
    assert sampler.epoch(1) != plan  # a new interleaving every epoch


def test_upsample_round_robin_and_all_tasks():
    plan = Upsample(order="round-robin").build(dict(B), seed=2, epochs=3).epoch(0)
    assert plan == [("sst",), ("para",), ("sts",)] * 50
    every = Upsample(step="all-tasks").build(dict(B), seed=2, epochs=3)
    assert every.step_mode == "all-tasks"
    assert every.epoch(0) == [ALL] * 50
    assert every.steps_per_epoch() == 50 and every.batches_per_epoch() == {t: 50 for t in ALL}


# =========================================================================== loop
@pytest.mark.parametrize("to, n", [("sst", 7), ("sts", 4), ("para", 50)])
def test_loop_matches_every_task_to_the_named_one(to, n):
    sampler = Loop(to=to).build(dict(B), seed=3, epochs=3)
    assert sampler.batches_per_epoch() == {t: n for t in ALL}
    plan = sampler.epoch(0)
    assert plan == [("sst",), ("para",), ("sts",)] * n  # default order: round-robin
    assert sampler.steps_per_epoch() == 3 * n
    shuffled = Loop(to=to, order="shuffled").build(dict(B), seed=3, epochs=3).epoch(0)
    assert task_counts(shuffled) == {t: n for t in ALL}
    every = Loop(to=to, step="all-tasks").build(dict(B), seed=3, epochs=3)
    assert every.epoch(0) == [ALL] * n and every.steps_per_epoch() == n


def test_loop_in_a_stage_without_its_task_gives_full_passes():
    sampler = Loop(to="sst").build({"para": 9, "sts": 2}, seed=3, epochs=1)
    assert sampler.batches_per_epoch() == {"para": 9, "sts": 2}
    assert task_counts(sampler.epoch(0)) == {"para": 9, "sts": 2}
    assert sampler.steps_per_epoch() == 11


def test_loop_check_tasks_names_the_missing_task():
    assert Loop(to="sst").check_tasks(["sst", "sts"]) is None
    reason = Loop(to="stss").check_tasks(["sst", "sts"])
    assert reason == "to names task 'stss', which is not under [tasks] (tasks: sst, sts) — did you mean 'sts'?"


# =========================================================================== random-subset
def test_random_subset_per_task_fraction():
    sampler = RandomSubset(fraction={"para": 0.1}).build(dict(B), seed=4, epochs=3)
    assert sampler.batches_per_epoch() == {"sst": 7, "para": 5, "sts": 4}
    plan = sampler.epoch(0)
    # round-robin interleaving (seed 003); a task drops out once its batches are spent
    assert plan == [("sst",), ("para",), ("sts",)] * 4 + [("sst",), ("para",)] + [("sst",)] * 2
    assert sampler.steps_per_epoch() == len(plan) == 16


def test_random_subset_single_fraction_rounds_halves_up_and_keeps_one_batch():
    half = RandomSubset(fraction=0.5).build(dict(B), seed=4, epochs=3)
    assert half.batches_per_epoch() == {"sst": 4, "para": 25, "sts": 2}  # 3.5 -> 4
    tiny = RandomSubset(fraction=0.001).build(dict(B), seed=4, epochs=3)
    assert tiny.batches_per_epoch() == {"sst": 1, "para": 1, "sts": 1}


def test_random_subset_fixed_batches_and_seed_003_numbers():
    sampler = RandomSubset(batches={"para": 3, "sts": 99}).build(dict(B), seed=4, epochs=3)
    assert sampler.batches_per_epoch() == {"sst": 7, "para": 3, "sts": 4}  # capped at a full pass
    # seed 003: 6,000 of 141,505 Quora rows at batch size 16 (8,845 batches per pass)
    para = math.ceil(141_505 / 16)
    assert RandomSubset(batches={"para": 375}).build({"para": para}, 0, 1).batches_per_epoch() == {"para": 375}
    assert RandomSubset(fraction={"para": 0.0424}).build({"para": para}, 0, 1).batches_per_epoch() == {"para": 375}


def test_random_subset_all_tasks_and_shuffled():
    every = RandomSubset(fraction={"para": 0.1}, step="all-tasks").build(dict(B), seed=4, epochs=3)
    assert every.epoch(0) == [ALL] * 7 and every.steps_per_epoch() == 7
    assert every.batches_per_epoch() == {t: 7 for t in ALL}
    shuffled = RandomSubset(fraction={"para": 0.1}, order="shuffled").build(dict(B), seed=4, epochs=3)
    plans = [shuffled.epoch(e) for e in range(3)]
    assert all(task_counts(p) == {"sst": 7, "para": 5, "sts": 4} for p in plans)
    assert plans[0] != plans[1]


@given(n=st.integers(1, 100_000), f=st.floats(1e-6, 1.0))
def test_subset_size_is_the_rounded_fraction_within_one_and_n(n, f):
    k = subset_size(n, f)
    assert 1 <= k <= n
    if f * n >= 1:
        assert abs(k - f * n) <= 0.5 + 1e-9
    assert subset_size(0, f) == 0


# =========================================================================== temperature
def reference_probabilities(batches: dict[str, int], T: float) -> dict[str, float]:
    weights = {t: (1.0 if math.isinf(T) else n ** (1.0 / T)) for t, n in batches.items()}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 5.0, math.inf])
def test_temperature_probabilities_follow_n_to_the_one_over_t(T):
    p = task_probabilities(dict(B), T)
    assert p == pytest.approx(reference_probabilities(B, T), rel=1e-12)
    assert sum(p.values()) == pytest.approx(1.0)


def test_temperature_limits_proportional_and_uniform():
    assert task_probabilities(dict(B), 1.0) == {"sst": 7 / 61, "para": 50 / 61, "sts": 4 / 61}
    assert task_probabilities(dict(B), math.inf) == pytest.approx({t: 1 / 3 for t in ALL})
    # small T: the largest task takes (almost) everything, without overflow
    assert task_probabilities({"a": 10_000, "b": 9_000}, 0.001)["a"] == pytest.approx(1.0)
    assert task_probabilities({"a": 3, "empty": 0}, 2.0) == {"a": 1.0, "empty": 0.0}


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 20_000), min_size=1, max_size=6), T=st.floats(0.25, 20.0))
def test_temperature_probabilities_match_the_reference(counts, T):
    batches = {f"t{i}": n for i, n in enumerate(counts)}
    assert task_probabilities(batches, T) == pytest.approx(reference_probabilities(batches, T), rel=1e-9, abs=1e-300)


def test_temperature_draws_have_the_right_size_and_proportions():
    T = 2.0
    sampler = Temperature(temperature=T).build(dict(B), seed=6, epochs=300)
    assert sampler.steps_per_epoch() == N
    observed: Counter = Counter()
    epochs = 300
    for e in range(epochs):
        plan = sampler.epoch(e)
        assert len(plan) == N and one_task(plan)
        observed += task_counts(plan)
    p = reference_probabilities(B, T)
    assert chi_square(observed, p, epochs * N) < CHI2_DF2_P001
    # the same draws are far from proportional sampling (the test can tell T apart)
    assert chi_square(observed, reference_probabilities(B, 1.0), epochs * N) > 100


def test_temperature_exact_counts_are_the_rounded_expectation():
    # weights 1, 2, 4 at T = 2 -> p = 1/7, 2/7, 4/7 of N = 21 steps
    batches = {"a": 1, "b": 4, "c": 16}
    sampler = Temperature(temperature=2.0, exact=True).build(batches, seed=1, epochs=2)
    assert sampler.batches_per_epoch() == {"a": 3, "b": 6, "c": 12}
    plans = [sampler.epoch(e) for e in range(2)]
    assert all(task_counts(p) == {"a": 3, "b": 6, "c": 12} for p in plans)
    assert plans[0] != plans[1]
    # B at T = 2: 61 * sqrt(n) / (sqrt 7 + sqrt 50 + 2) = 13.77, 36.81, 10.41: floors 13, 36, 10 (59);
    # the 2 left go to the largest remainders (para .81, sst .77) -> 14, 37, 10
    assert Temperature(temperature=2.0, exact=True).build(dict(B), 1, 1).batches_per_epoch() == {"sst": 14, "para": 37, "sts": 10}


def test_temperature_schedule_start_middle_end():
    # Stickland & Murray (2019) annealed sampling: alpha = 1 - 0.8 (e - 1) / (E - 1), e = 1..E
    E = 5
    sampler = Temperature(temperature=1.0, temperature_end=5.0).build(dict(B), seed=0, epochs=E)
    for e in range(E):
        alpha = 1 - 0.8 * e / (E - 1)
        assert sampler.temperature_at(e) == pytest.approx(1 / alpha)
    assert [round(sampler.temperature_at(e), 6) for e in (0, 2, 4)] == [1.0, round(5 / 3, 6), 5.0]
    assert sampler.temperature_at(99) == pytest.approx(5.0)  # clamped after the last epoch
    linear = Temperature(temperature=1.0, temperature_end=5.0, anneal="temperature").build(dict(B), 0, E)
    assert [linear.temperature_at(e) for e in range(E)] == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])
    assert Temperature(temperature=1.0, temperature_end=5.0).build(dict(B), 0, 1).temperature_at(0) == 1.0
    assert Temperature(temperature=3.0).build(dict(B), 0, 10).temperature_at(7) == 3.0
    to_uniform = Temperature(temperature=1.0, temperature_end=math.inf).build(dict(B), 0, 3)
    assert [to_uniform.temperature_at(e) for e in range(3)] == [1.0, 2.0, math.inf]
    assert to_uniform.probabilities(2) == pytest.approx({t: 1 / 3 for t in ALL})
    assert annealed_temperature(2.0, None, "exponent", 3, 4) == 2.0


def test_annealed_sampling_moves_from_proportional_to_flatter():
    sampler = Temperature(temperature=1.0, temperature_end=math.inf, exact=True).build(dict(B), seed=8, epochs=3)
    assert task_counts(sampler.epoch(0)) == B
    assert task_counts(sampler.epoch(2)) == {"sst": 21, "para": 20, "sts": 20}
    assert sampler.expected_batches(1) == pytest.approx({t: N * p for t, p in reference_probabilities(B, 2.0).items()})


# =========================================================================== proportional
def test_proportional_exact_is_every_batch_once_shuffled():
    sampler = Proportional(exact=True).build(dict(B), seed=9, epochs=3)
    assert sampler.batches_per_epoch() == B and sampler.steps_per_epoch() == N
    plans = [sampler.epoch(e) for e in range(3)]
    assert all(task_counts(p) == B and one_task(p) for p in plans)
    assert plans[0] != plans[1] != plans[2]


@pytest.mark.parametrize("exact", [False, True])
def test_proportional_plans_exactly_as_temperature_one(exact):
    proportional = Proportional(exact=exact).build(dict(B), seed=12, epochs=4)
    temperature = Temperature(temperature=1.0, exact=exact).build(dict(B), seed=12, epochs=4)
    assert proportional.batches_per_epoch() == temperature.batches_per_epoch() == B
    assert [proportional.epoch(e) for e in range(4)] == [temperature.epoch(e) for e in range(4)]


def test_proportional_draws_have_the_batch_count_proportions():
    sampler = Proportional().build(dict(B), seed=10, epochs=1)
    assert sampler.batches_per_epoch() == B
    observed: Counter = Counter()
    for e in range(300):
        plan = sampler.epoch(e)
        assert len(plan) == N
        observed += task_counts(plan)
    assert chi_square(observed, {t: n / N for t, n in B.items()}, 300 * N) < CHI2_DF2_P001
    assert chi_square(observed, reference_probabilities(B, math.inf), 300 * N) > 100


# =========================================================================== shared behaviour
@pytest.mark.parametrize("key", sorted(RANDOMIZED))
def test_same_seed_same_plans_other_seed_other_plans(key):
    options = RANDOMIZED[key]
    a, b, c = (options.build(dict(B), seed=s, epochs=4) for s in (21, 21, 22))
    plans_a = [a.epoch(e) for e in range(4)]
    assert plans_a == [b.epoch(e) for e in range(4)]
    assert plans_a != [c.epoch(e) for e in range(4)]
    assert any(plans_a[0] != p for p in plans_a[1:])  # epochs differ
    assert isinstance(a, SeededSampler)


def roundtrip(state):
    skeleton, tensors = split_tensors(state)
    return join_tensors(json.loads(json.dumps(skeleton)), tensors)


@pytest.mark.parametrize("key", sorted(RANDOMIZED))
def test_state_round_trip_continues_identically(key):
    options = RANDOMIZED[key]
    first = options.build(dict(B), seed=31, epochs=6)
    for e in range(2):  # two epochs drawn, as the trainer does before a checkpoint in epoch 2
        first.epoch(e)
    saved = roundtrip(first.state_dict())
    resumed = options.build(dict(B), seed=999, epochs=6)
    resumed.load_state_dict(saved)
    assert [resumed.epoch(e) for e in range(2, 6)] == [first.epoch(e) for e in range(2, 6)]


@pytest.mark.parametrize("options", [Upsample(step="all-tasks"), Loop(to="sts", step="all-tasks"),
                                     RandomSubset(fraction=0.5, step="all-tasks")])
def test_all_tasks_mode_gives_every_task_in_every_step(options):
    sampler = options.build(dict(B), seed=1, epochs=2)
    plan = sampler.epoch(0)
    assert plan and all(step == ALL for step in plan)
    assert len(plan) == sampler.steps_per_epoch() == max(sampler.batches_per_epoch().values())


@pytest.mark.parametrize("cls", [InTurn, Proportional, Temperature])
def test_one_task_samplers_refuse_all_tasks_with_one_line(cls):
    with pytest.raises(ValueError) as info:
        cls(step="all-tasks")
    message = str(info.value)
    assert "\n" not in message and 'step = "all-tasks" does not fit sampler' in message
    assert cls.step_modes == ("one-task",)
    assert Upsample.step_modes == Loop.step_modes == RandomSubset.step_modes == ("one-task", "all-tasks")


@pytest.mark.parametrize("name, module", sorted(MODULES.items()))
def test_module_docstrings_state_counts_and_cite(name, module):
    doc = module.__doc__
    assert "Batches per task per epoch" in doc
    assert "Source" in doc and "Stanford CS224N report" in doc or ", 2019, " in doc  # cites its source
    assert module.mtbert_register_samplers is not None


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.integers(0, 30), min_size=1, max_size=5))
def test_cycled_steps_equals_a_naive_round_robin(counts):
    tasks = [f"t{i}" for i in range(len(counts))]
    left = dict(zip(tasks, counts))
    naive = []
    while any(left.values()):
        for t in tasks:
            if left[t]:
                naive.append((t,))
                left[t] -= 1
    assert cycled_steps(tasks, dict(zip(tasks, counts))) == naive


def test_largest_remainder_gives_the_leftovers_to_the_largest_fractions():
    # floors 1, 2, 3 (6 of 7): the one left goes to b (.7), not to the first task
    assert largest_remainder({"a": 1.2, "b": 2.7, "c": 3.1}, 7) == {"a": 1, "b": 3, "c": 3}
    assert largest_remainder({"a": 0.5, "b": 0.5, "c": 2.0}, 3) == {"a": 1, "b": 0, "c": 2}  # tie: recipe order


@settings(max_examples=100, deadline=None)
@given(weights=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=6), total=st.integers(0, 5000))
def test_largest_remainder_keeps_the_total_and_stays_within_one(weights, total):
    norm = sum(weights)
    expected = {f"t{i}": total * w / norm for i, w in enumerate(weights)}
    counts = largest_remainder(expected, total)
    assert sum(counts.values()) == total
    assert all(abs(counts[t] - expected[t]) < 1 for t in expected)
    raised = [expected[t] % 1 for t in expected if counts[t] > math.floor(expected[t])]
    kept = [expected[t] % 1 for t in expected if counts[t] == math.floor(expected[t])]
    assert not raised or not kept or min(raised) >= max(kept)


# =========================================================================== registration and recipes
@pytest.fixture
def sampler_plugins(monkeypatch):
    """The builtins plus these sampler modules (unless the builtins already advertise them)."""
    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    monkeypatch.delenv("MTBERT_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("MTBERT_STRICT_PLUGINS", raising=False)
    base = load_plugins()
    extra = [(f"test-sampler-{name}", module) for name, module in MODULES.items()
             if base.registry.find("sampler", name) is None]
    plugins = load_plugins(extra) if extra else base
    set_plugins(plugins)
    yield plugins
    set_plugins(None)


@pytest.mark.parametrize("name, module", sorted(MODULES.items()))
def test_each_module_registers_its_sampler(name, module):
    plugins = load_plugins([("x", module)], entry_points=False)
    component = plugins.registry.find("sampler", name)
    assert component is not None
    assert component.factory.__doc__.strip()


def recipe_table(sampler) -> dict:
    return {"name": "t", "tasks": {"sst": {}, "sts": {}}, "sampler": sampler}


@pytest.mark.parametrize("sampler", [
    "in-turn", {"name": "in-turn", "shuffle_tasks": True},
    "upsample", {"name": "upsample", "step": "all-tasks", "order": "round-robin"},
    {"name": "loop", "to": "sst"}, {"name": "loop", "to": "sts", "step": "all-tasks"},
    "random-subset", {"name": "random-subset", "fraction": {"sts": 0.5}, "batches": {"sst": 3}},
    {"name": "random-subset", "fraction": 0.25},
    "proportional", {"name": "proportional", "exact": True},
    "temperature", {"name": "temperature", "temperature": 2.0, "temperature_end": math.inf},
])
def test_valid_recipes_validate(sampler_plugins, sampler):
    recipe = validate(recipe_table(sampler), sampler_plugins)
    assert recipe.sampler.name == (sampler if isinstance(sampler, str) else sampler["name"])


@pytest.mark.parametrize("sampler, expected", [
    ({"name": "loop"}, "sampler.to: is required"),
    ({"name": "loop", "to": "stss"}, "sampler: 'loop': to names task 'stss', which is not under [tasks] (tasks: sst, sts) — did you mean 'sts'?"),
    ({"name": "in-turn", "step": "all-tasks"}, "sampler: step = \"all-tasks\" does not fit sampler 'in-turn'"),
    ({"name": "temperature", "step": "all-tasks"}, "sampler: step = \"all-tasks\" does not fit sampler 'temperature'"),
    ({"name": "proportional", "step": "all-tasks"}, "sampler: step = \"all-tasks\" does not fit sampler 'proportional'"),
    ({"name": "temperature", "temperature": 0}, "sampler.temperature: 0.0 must be greater than 0"),
    ({"name": "temperature", "temperature": math.nan}, "sampler: temperature = nan is not a temperature"),
    ({"name": "temperature", "temperature_end": -1.0}, "sampler.temperature_end: -1.0 must be greater than 0"),
    ({"name": "temperature", "temperature_end": math.inf, "anneal": "temperature"}, "sampler: anneal = \"temperature\" needs finite temperatures"),
    ({"name": "temperature", "anneal": "cosine"}, "sampler.anneal: 'cosine' is not allowed; choose one of 'exponent', 'temperature'"),
    ({"name": "random-subset", "fraction": 1.5}, "sampler.fraction: 1.5 must be at most 1"),
    ({"name": "random-subset", "fraction": 0}, "sampler.fraction: 0.0 must be greater than 0"),
    ({"name": "random-subset", "fraction": {"sts": 0}}, "sampler: fraction.sts = 0.0 must be greater than 0 and at most 1"),
    ({"name": "random-subset", "fraction": {"para": 0.1}}, "sampler: 'random-subset': fraction names task 'para', which is not under [tasks] (tasks: sst, sts)"),
    ({"name": "random-subset", "batches": {"sts": 0}}, "sampler: batches.sts = 0 must be at least 1"),
    ({"name": "random-subset", "batches": {"ssts": 4}}, "sampler: 'random-subset': batches names task 'ssts', which is not under [tasks] (tasks: sst, sts) — did you mean 'sts'?"),
    ({"name": "random-subset", "batches": {"sts": 4}, "fraction": {"sts": 0.5}}, "sampler: task 'sts' is named in both fraction and batches; keep one"),
    ({"name": "upsample", "order": "random"}, "sampler.order: 'random' is not allowed; choose one of 'shuffled', 'round-robin'"),
    ({"name": "upsample", "shuffle": True}, "sampler.shuffle: unknown key"),
])
def test_invalid_options_are_one_line_recipe_errors(sampler_plugins, sampler, expected):
    with pytest.raises(RecipeError) as info:
        validate(recipe_table(sampler), sampler_plugins)
    problems = info.value.problems
    assert len(problems) == 1, problems
    assert "\n" not in problems[0]
    assert problems[0].startswith(expected), problems[0]


# =========================================================================== inside a real (tiny) run
TINY = """\
name = "tiny-sampler"
seed = 7

[model]
checkpoint = "random:tiny"

[tasks.sst]
train_limit = 32
dev_limit = 16
test_limit = 8

[tasks.sts]
train_limit = 16
dev_limit = 16
test_limit = 8

[optim]
lr = 1e-3
epochs = 1
batch_size = 16

[train]
progress = false
predict = false
"""


@pytest.mark.parametrize("sampler, steps", [
    ('{ name = "upsample", step = "all-tasks" }', 2),  # max(2, 1) steps, each with both tasks
])
def test_sampler_drives_a_real_run(sampler_plugins, write_recipe, data_dir, minilm_dir, tmp_path, sampler, steps):
    from mtbert.engine.run import run_recipe
    from mtbert.recipe import load_recipe

    # sst: 32 rows / 16 = 2 batches per pass, sts: 16 / 16 = 1
    text = TINY.replace('name = "tiny-sampler"\n', f'name = "tiny-sampler"\nsampler = {sampler}\n')
    path = write_recipe(text, name="tiny.toml")
    recipe = load_recipe(path, [f"data.dir={json.dumps(str(data_dir))}"], sampler_plugins)
    _, summary = run_recipe(recipe, sampler_plugins, out=tmp_path / "run", say=lambda _: None, warn=lambda _: None)
    assert summary["last"]["step"] == steps
