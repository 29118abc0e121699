"""PCGrad (Yu et al. 2020) as the ``pcgrad`` gradient transform.

The projection is checked against hand-computed values (conflicting, non-conflicting, 2-D and
3-D, both orders of a three-task case) and against a plain float64 reference written here from
the paper's Algorithm 1; ``sum`` is 2 x ``mean`` for two tasks; zero-gradient tasks give no NaN;
the logged conflict rate; reproducible randomness across a state round trip; and, through the
engine's own ``_backward`` and ``apply_transforms`` on a tiny BERT with two heads, that only the
shared gradients are projected while every head keeps plain backprop's gradient.
"""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtbert_plugins.transform_pcgrad as pcgrad_module
from mtbert.engine.checkpoint import join_tensors, split_tensors
from mtbert.engine.components import EncodedExamples
from mtbert.engine.gradients import SharedGradients, apply_transforms
from mtbert.engine.multitask_model import MultitaskModel
from mtbert.engine.trainer import MultitaskTrainer
from mtbert.errors import RecipeError
from mtbert.model.bert import BertEncoder
from mtbert.model.config import BertConfig
from mtbert.plugins import load_plugins
from mtbert.recipe import load_recipe
from mtbert_plugins.combiner_basic import Sum
from mtbert_plugins.head_linear import LinearHead
from mtbert_plugins.inputs import SeparatePair, SingleSentence
from mtbert_plugins.tasks_cs224n import SST, STS
from mtbert_plugins.transform_pcgrad import PCGrad


def surgery(rows, *, reduction="sum", eps=0.0, seed=0, tasks=None):
    grads = torch.tensor(rows, dtype=torch.float32)
    state = PCGrad(reduction=reduction, eps=eps, seed=seed).build([])
    out = state.apply(grads, tasks=tasks or [f"t{i}" for i in range(len(rows))])
    return out, state


def reference(grads: torch.Tensor, generator: torch.Generator, eps: float, reduction: str) -> torch.Tensor:
    """Algorithm 1 of the paper on explicit float64 vectors (the documented draw protocol)."""
    g = grads.double()
    count = g.shape[0]
    squared = (g * g).sum(dim=1)
    total = torch.zeros(g.shape[1], dtype=torch.float64)
    for i in range(count):
        gi = g[i].clone()
        if squared[i] > 0:
            for j in torch.randperm(count, generator=generator).tolist():
                if j == i or squared[j] == 0:
                    continue
                dot = gi @ g[j]  # against the ORIGINAL g_j
                if dot < 0:
                    gi = gi - dot / (squared[j] + eps) * g[j]
        total += gi
    return total if reduction == "sum" else total / count


# =========================================================================== hand-computed
def test_two_conflicting_2d_gradients_hand_computed():
    # g1 = (1, 0), g2 = (-1, 1): g1.g2 = -1 < 0.
    # g1' = g1 - (-1 / 2) g2 = (0.5, 0.5);  g2' = g2 - (-1 / 1) g1 = (0, 1).
    out, state = surgery([[1.0, 0.0], [-1.0, 1.0]])
    assert torch.allclose(out, torch.tensor([0.5, 1.5]), atol=1e-7)
    # Projecting g2 against the already projected g1' = (0.5, 0.5) instead (the bug the issue
    # warns of) gives g2' = g2 (no conflict left) and a sum of (-0.5, 1.5).
    assert not torch.allclose(out, torch.tensor([-0.5, 1.5]), atol=1e-3)
    logs = state.logs()
    assert logs["conflict_rate"] == 1.0 and logs["projected"] == 1.0
    assert logs["mean_cosine"] == pytest.approx(-1 / math.sqrt(2))
    assert logs["cosine/t0~t1"] == pytest.approx(-1 / math.sqrt(2))


def test_non_conflicting_gradients_are_left_alone():
    out, state = surgery([[1.0, 0.0], [1.0, 1.0]])
    assert torch.equal(out, torch.tensor([2.0, 1.0]))
    assert state.logs()["conflict_rate"] == 0.0 and state.logs()["projected"] == 0.0
    out, _ = surgery([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]])  # pairwise dots >= 0
    assert torch.equal(out, torch.tensor([2.0, 4.0, 3.0]))


def test_three_3d_gradients_hand_computed():
    # g3 is orthogonal to g1 and g2 (dot 0 is no conflict), so the order cannot matter:
    # g1' = (0.5, 0.5, 0), g2' = (0, 1, 0), g3' = g3.
    rows = [[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    for seed in range(5):
        out, state = surgery(rows, seed=seed)
        assert torch.allclose(out, torch.tensor([0.5, 1.5, 1.0]), atol=1e-7)
        assert state.logs()["conflict_rate"] == pytest.approx(1 / 3)


def test_three_tasks_whose_result_depends_on_the_order_hand_computed():
    # g1 = (1, 0), g2 = (-1, 2), g3 = (-1, -2); |g2|^2 = |g3|^2 = 5, g1.g2 = g1.g3 = -1, g2.g3 = -3.
    # g1: order (2, 3) -> (0.8, 0.4) then -> (0.48, -0.24); order (3, 2) -> (0.48, 0.24).
    # g2: order (1, 3) -> (0, 2) then -> (-0.8, 0.4);  order (3, 1) -> (-1.6, 0.8) then -> (0, 0.8).
    # g3 mirrors g2 in the second coordinate: (-0.8, -0.4) or (0, -0.8).
    options = [
        [(0.48, -0.24), (0.48, 0.24)],
        [(-0.8, 0.4), (0.0, 0.8)],
        [(-0.8, -0.4), (0.0, -0.8)],
    ]
    possible = {tuple(round(sum(c), 6) for c in zip(*combo)) for combo in itertools.product(*options)}
    rows = [[1.0, 0.0], [-1.0, 2.0], [-1.0, -2.0]]
    seen = set()
    for seed in range(40):
        out, _ = surgery(rows, seed=seed)
        key = tuple(round(v, 6) for v in out.tolist())
        assert key in possible, (seed, key)
        seen.add(key)
        generator = torch.Generator().manual_seed(seed)
        assert torch.allclose(out.double(), reference(torch.tensor(rows), generator, 0.0, "sum"), atol=1e-6)
    assert len(seen) >= 4  # a fresh random order per i: many of the 8 outcomes occur


def test_eps_is_added_to_the_squared_norm():
    # g1 = (1, 0), g2 = (-1, 1): with eps the coefficient on g2 is -1 / (2 + eps).
    eps = 0.5
    out, _ = surgery([[1.0, 0.0], [-1.0, 1.0]], eps=eps)
    g1 = torch.tensor([1.0, 0.0]) + (1 / (2 + eps)) * torch.tensor([-1.0, 1.0])
    g2 = torch.tensor([-1.0, 1.0]) + (1 / (1 + eps)) * torch.tensor([1.0, 0.0])
    assert torch.allclose(out, g1 + g2, atol=1e-7)


# =========================================================================== reductions, zeros
def test_sum_is_twice_mean_for_two_tasks_hand_computed():
    summed, _ = surgery([[1.0, 0.0], [-1.0, 1.0]], reduction="sum")
    mean, _ = surgery([[1.0, 0.0], [-1.0, 1.0]], reduction="mean")
    assert torch.allclose(mean, torch.tensor([0.25, 0.75]), atol=1e-7)
    assert torch.allclose(summed, 2 * mean, atol=1e-7)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-8, 8), min_size=10, max_size=10), st.integers(0, 2**16))
def test_sum_is_twice_mean_for_two_tasks_property(values, seed):
    grads = torch.tensor(values, dtype=torch.float32).view(2, 5) / 4
    a = PCGrad(reduction="sum", seed=seed).build([]).apply(grads, tasks=["a", "b"])
    b = PCGrad(reduction="mean", seed=seed).build([]).apply(grads, tasks=["a", "b"])
    assert torch.allclose(a, 2 * b, atol=1e-6)


def test_zero_gradient_task_gives_no_nan_and_is_skipped():
    out, state = surgery([[0.0, 0.0], [1.0, 2.0]])
    assert torch.equal(out, torch.tensor([1.0, 2.0]))
    assert state.logs()["conflict_rate"] == 0.0
    assert all(math.isfinite(v) for v in state.logs().values())
    out, _ = surgery([[0.0, 0.0], [0.0, 0.0]])
    assert torch.equal(out, torch.zeros(2))
    # A zero task among conflicting ones changes nothing for the others (and needs no eps).
    out, state = surgery([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.tensor([0.5, 1.5, 0.0]), atol=1e-7)
    assert state.logs()["conflict_rate"] == 1.0  # one pair of non-zero tasks, conflicting
    assert state.logs()["projected"] == 1.0  # both visits were between the non-zero tasks
    assert all(math.isfinite(v) for v in state.logs().values())
    out, _ = surgery([[0.0, 0.0], [1.0, 2.0]], reduction="mean")
    assert torch.equal(out, torch.tensor([0.5, 1.0]))  # the mean still counts every task of the step


def test_conflict_rate_and_mean_cosine():
    # pairs: (0, 1) dot -1 (conflict), (0, 2) dot 0, (1, 2) dot 0.1: one of three conflicts.
    rows = [[1.0, 0.0], [-1.0, 0.1], [0.0, 1.0]]
    _, state = surgery(rows, tasks=["sst", "para", "sts"])
    logs = state.logs()
    assert logs["conflict_rate"] == pytest.approx(1 / 3)
    norm1 = math.sqrt(1.01)
    cosines = [-1 / norm1, 0.0, 0.1 / norm1]
    assert logs["mean_cosine"] == pytest.approx(sum(cosines) / 3)
    assert logs["cosine/sst~para"] == pytest.approx(cosines[0])
    assert logs["cosine/para~sts"] == pytest.approx(cosines[2])


# =========================================================================== properties
grad_rows = st.integers(2, 4).flatmap(
    lambda t: st.lists(st.lists(st.integers(-6, 6), min_size=6, max_size=6), min_size=t, max_size=t)
)


@settings(max_examples=80, deadline=None)
@given(grad_rows, st.integers(0, 2**16), st.sampled_from(["sum", "mean"]))
def test_matches_float64_reference_of_algorithm_1(rows, seed, reduction):
    grads = torch.tensor(rows, dtype=torch.float32) / 3
    out = PCGrad(reduction=reduction, seed=seed, eps=1e-8).build([]).apply(grads, tasks=[str(i) for i in range(len(rows))])
    expected = reference(grads, torch.Generator().manual_seed(seed), 1e-8, reduction)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), expected, atol=1e-5, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-6, 6), min_size=12, max_size=12), st.integers(0, 100))
def test_two_tasks_no_conflict_remains(values, seed):
    grads = torch.tensor(values, dtype=torch.float32).view(2, 6)
    state = PCGrad(seed=seed, eps=0.0).build([])
    coeff, _, _ = pcgrad_module.surgery_coefficients(pcgrad_module.gram_matrix(grads), 0.0, state.generator)
    projected = coeff.float() @ grads
    for i, j in ((0, 1), (1, 0)):
        assert float(projected[i] @ grads[j]) >= -1e-4  # g_i' no longer conflicts with g_j


# =========================================================================== state
def test_randomness_is_reproducible_from_state():
    torch.manual_seed(0)
    steps = [torch.randn(4, 7) for _ in range(8)]
    a = PCGrad(seed=123).build([])
    for grads in steps[:3]:
        a.apply(grads, tasks=list("abcd"))
    skeleton, tensors = split_tensors(a.state_dict())  # as the engine's checkpoint stores it
    saved = join_tensors(json.loads(json.dumps(skeleton)), tensors)
    expected = [a.apply(grads, tasks=list("abcd")) for grads in steps[3:]]
    b = PCGrad(seed=999).build([])
    b.load_state_dict(saved)
    assert all(torch.equal(x, b.apply(grads, tasks=list("abcd"))) for x, grads in zip(expected, steps[3:]))
    # The orders matter for these gradients: another seed gives different results.
    c = PCGrad(seed=999).build([])
    assert any(not torch.allclose(x, c.apply(grads, tasks=list("abcd"))) for x, grads in zip(expected, steps[3:]))


# =========================================================================== through the engine
def _tiny_model(seed: int) -> MultitaskModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    encoder = BertEncoder(config)
    encoder.init_weights()
    heads = {
        "sst": LinearHead(dropout=0.0).build(16, SST, SingleSentence()),
        "sts": LinearHead(dropout=0.0).build(16, STS, SeparatePair()),
    }
    return MultitaskModel(encoder, heads, {"sst": SingleSentence(), "sts": SeparatePair()})


def _batches(seed: int):
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return [[2] + torch.randint(5, 100, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist() + [3]
                for _ in range(n)]

    sst = EncodedExamples(ids=[f"s{i}" for i in range(6)], sequences=[ids(6)], type_ids=[None],
                          labels=torch.randint(0, 5, (6,), generator=g).tolist())
    sts = EncodedExamples(ids=[f"p{i}" for i in range(6)], sequences=[ids(6), ids(6)], type_ids=[None, None],
                          labels=(torch.rand(6, generator=g) * 5).tolist())
    return {
        "sst": SingleSentence().collate(sst, range(6), "sst", torch.long),
        "sts": SeparatePair().collate(sts, range(6), "sts", torch.float32),
    }


def _losses(model, batches):
    return {t: model.heads[t].loss(model(b), b.labels) for t, b in batches.items()}


def _trainer(model, transform, accumulation=1):
    """The real MultitaskTrainer's per-task backward and transform code on a stub state."""
    trainer = MultitaskTrainer.__new__(MultitaskTrainer)
    trainer.accumulation = accumulation
    trainer.device = torch.device("cpu")
    trainer.task_names = ["sst", "sts"]
    trainer.transforms = [(SimpleNamespace(name="pcgrad"), transform)]
    trainer.per_task = True
    trainer.grads = SharedGradients(model.shared_parameters(), trainer.device)
    trainer.task_grads = None
    trainer.trainable = list(model.parameters())
    return trainer


def _flat(params):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


@pytest.mark.parametrize("accumulation", [1, 2])
def test_engine_projects_shared_gradients_only_and_heads_get_plain_backprop(accumulation):
    model = _tiny_model(0)
    shared = model.shared_parameters()
    micro = [_batches(seed) for seed in (14, 12)[:accumulation]]  # seeds whose task gradients conflict

    # Reference 1: plain backprop of the summed loss (what the heads must receive).
    model.zero_grad(set_to_none=True)
    for batches in micro:
        (sum(_losses(model, batches).values()) / accumulation).backward()
    plain_heads = {n: p.grad.clone() for n, p in model.heads.named_parameters()}

    # Reference 2: per-task shared gradients by autograd, then the 2-task projection by hand.
    per_task = {t: torch.zeros(sum(p.numel() for p in shared), dtype=torch.float64) for t in ("sst", "sts")}
    for batches in micro:
        for task, loss in _losses(model, batches).items():
            grads = torch.autograd.grad(loss / accumulation, shared, allow_unused=True)
            per_task[task] += torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                         for g, p in zip(grads, shared)]).double()
    g1, g2 = per_task["sst"], per_task["sts"]
    dot = float(g1 @ g2)
    assert dot < 0, "the test needs conflicting task gradients on the shared encoder"
    expected_shared = (g1 - dot / float(g2 @ g2) * g2) + (g2 - dot / float(g1 @ g1) * g1)

    # The engine's path: per-task backward into the [T, P] buffer, then pcgrad.
    model.zero_grad(set_to_none=True)
    trainer = _trainer(model, PCGrad(eps=0.0).build(shared), accumulation)
    for batches in micro:
        combined = Sum().build(["sst", "sts"], model).combine(_losses(model, batches))
        trainer._backward(("sst", "sts"), combined)
    logs = apply_transforms(trainer.transforms, trainer.grads, trainer.task_grads, trainer.task_names, ["sst", "sts"],
                            trainer.trainable)

    for name, p in model.heads.named_parameters():
        assert torch.equal(p.grad, plain_heads[name]), name  # heads untouched: exactly plain backprop
    got = _flat(shared).double()
    assert torch.allclose(got, expected_shared, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(got, g1 + g2, rtol=1e-3)  # the projection did change the shared gradient
    assert logs["pcgrad/conflict_rate"] == 1.0


# =========================================================================== registration
def _plugins(monkeypatch):
    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    base = load_plugins()
    if any(p.module == pcgrad_module.__name__ for p in base.plugins):
        return base  # already an installed builtin
    return load_plugins([("transform-pcgrad", pcgrad_module)])


RECIPE = """\
name = "t"
[tasks.sst]
[tasks.sts]
[sampler]
name = "round-robin"
step = "{step}"
[[gradient_transforms]]
name = "pcgrad"
reduction = "{reduction}"
"""


def test_registered_and_recipe_validation(monkeypatch, write_recipe):
    plugins = _plugins(monkeypatch)
    component = plugins.registry.find("gradient_transform", "pcgrad")
    assert component is not None and component.factory is PCGrad
    recipe = load_recipe(write_recipe(RECIPE.format(step="all-tasks", reduction="mean")), [], plugins)
    (spec,) = recipe.gradient_transforms
    assert spec.options.reduction == "mean" and spec.options.seed is None  # derived from the recipe's seed
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(RECIPE.format(step="one-task", reduction="sum")), [], plugins)
    assert "'pcgrad' needs a batch of every task per step" in str(info.value)
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(RECIPE.format(step="all-tasks", reduction="avg")), [], plugins)
    assert "gradient_transforms[0].reduction" in str(info.value)
