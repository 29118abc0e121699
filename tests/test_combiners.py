"""The loss combiners ``mean``, ``weights``, ``uncertainty`` (Kendall et al. 2018) and
``gradnorm`` (Chen et al. 2018).

GradNorm is checked on a toy two-task network (a shared two-layer trunk, two regression heads
whose targets differ in scale): the network's gradients are exactly those of the plain
``sum_i w_i L_i``; the weights' gradient equals the paper's formula; with a frozen network the
weights reach the point where the weighted gradient norms are equal; in training they move
toward equal training rates; they stay positive and sum to the task count; ``L_i(0)`` is
recorded once, unweighted. Uncertainty weighting's gradients match the analytic formulas.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mtbert_plugins.combiner_gradnorm as gradnorm_module
import mtbert_plugins.combiner_mean as mean_module
import mtbert_plugins.combiner_uncertainty as uncertainty_module
import mtbert_plugins.combiner_weights as weights_module
from mtbert.engine.checkpoint import join_tensors, split_tensors
from mtbert.engine.model import MultitaskModel
from mtbert.errors import MtbertError, RecipeError
from mtbert.model.bert import BertEncoder
from mtbert.model.config import BertConfig
from mtbert.plugins import load_plugins
from mtbert.recipe import load_recipe
from mtbert_plugins.combiner_gradnorm import GradNorm, balanced_parameters
from mtbert_plugins.combiner_mean import Mean
from mtbert_plugins.combiner_uncertainty import Uncertainty
from mtbert_plugins.combiner_weights import Weights
from mtbert_plugins.head_linear import LinearHead
from mtbert_plugins.inputs import SeparatePair, SingleSentence
from mtbert_plugins.tasks_cs224n import SST, STS


# =========================================================================== toy network
class Toy(nn.Module):
    """What GradNorm reads of a MultitaskModel: encoder.layers, encoder.pooler, shared_parameters()."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([nn.Linear(10, 16), nn.Linear(16, 16)])
        self.encoder.pooler = nn.Linear(16, 16)  # unused by the heads
        self.heads = nn.ModuleDict({"a": nn.Linear(16, 1), "b": nn.Linear(16, 1)})

    def shared_parameters(self):
        return list(self.encoder.parameters())

    def losses(self, x, ya, yb):
        h = x
        for layer in self.encoder.layers:
            h = torch.tanh(layer(h))
        return {
            "a": ((self.heads["a"](h).squeeze(-1) - ya) ** 2).mean(),
            "b": ((self.heads["b"](h).squeeze(-1) - yb) ** 2).mean(),
        }


def toy_data(scale: float = 10.0, n: int = 64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 10, generator=g)
    ya = scale * torch.tanh(0.3 * x @ torch.randn(10, generator=g))  # large loss, large gradients
    yb = torch.tanh(x @ torch.randn(10, generator=g))
    return x, ya, yb


def grad_norm_on(loss, params):
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


def round_trip(state):
    skeleton, tensors = split_tensors(state)  # as the engine's checkpoint stores it
    return join_tensors(json.loads(json.dumps(skeleton)), tensors)


# =========================================================================== mean, weights
def test_mean_divides_by_the_tasks_present():
    combiner = Mean().build(["sst", "para", "sts"], None)
    losses = {"sst": torch.tensor(1.0), "para": torch.tensor(2.0), "sts": torch.tensor(6.0)}
    combined = combiner.combine(losses)
    assert combined.total.item() == pytest.approx(3.0)
    assert combined.weights == {"sst": 1 / 3, "para": 1 / 3, "sts": 1 / 3}
    one = combiner.combine({"para": torch.tensor(2.0)})  # one-task step: mean == sum
    assert one.total.item() == 2.0 and one.weights == {"para": 1.0}
    assert combiner.state_dict() == {}


def test_fixed_weights_and_default():
    combiner = Weights(weights={"sst": 1.0, "para": 0.5}, default=2.0).build(["sst", "para", "sts"], None)
    losses = {"sst": torch.tensor(1.0), "para": torch.tensor(2.0), "sts": torch.tensor(3.0)}
    combined = combiner.combine(losses)
    assert combined.total.item() == pytest.approx(1.0 + 1.0 + 6.0)
    assert combined.weights == {"sst": 1.0, "para": 0.5, "sts": 2.0}
    assert combiner.combine({"para": torch.tensor(4.0)}).total.item() == 2.0


def test_weights_check_tasks_one_line_reasons():
    assert Weights(weights={"sst": 1.0}).check_tasks(["sst", "sts"]) is None
    reason = Weights(weights={"sts2": 1.0}).check_tasks(["sst", "sts"])
    assert reason is not None and "'sts2'" in reason and "did you mean 'sts'" in reason and "\n" not in reason
    reason = Weights(weights={"sst": -1.0}).check_tasks(["sst"])
    assert reason is not None and ">= 0" in reason
    assert Weights(weights={"sst": float("nan")}).check_tasks(["sst"]) is not None
    with pytest.raises(MtbertError, match="sts2"):
        Weights(weights={"sts2": 1.0}).build(["sst", "sts"], None)


# =========================================================================== uncertainty
class KindHead(nn.Module):
    def __init__(self, label_kind):
        super().__init__()
        self.label_kind = label_kind


def kind_model():
    model = nn.Module()
    model.heads = nn.ModuleDict({"sst": KindHead("multiclass"), "para": KindHead("binary"), "sts": KindHead("regression")})
    return model


def set_log_vars(combiner, values):
    with torch.no_grad():
        for parameter, value in zip(combiner.log_vars, values):
            parameter.fill_(value)


def log_var_grads(combiner):
    return [0.0 if p.grad is None else p.grad.item() for p in combiner.log_vars]


@settings(max_examples=40, deadline=None)
@given(st.floats(-3, 3), st.floats(-3, 3), st.floats(-3, 3), st.floats(0.01, 10), st.floats(0.01, 10), st.floats(0.01, 10))
def test_uncertainty_gradients_match_the_paper_form(s1, s2, s3, l1, l2, l3):
    combiner = Uncertainty().build(["sst", "para", "sts"], kind_model())
    set_log_vars(combiner, [s1, s2, s3])
    losses = {t: torch.tensor(v, requires_grad=True) for t, v in zip(["sst", "para", "sts"], [l1, l2, l3])}
    combined = combiner.combine(losses)
    combined.total.backward()
    s, grad = [s1, s2, s3], log_var_grads(combiner)
    # classification: exp(-s) L + s/2  -> d/ds = -exp(-s) L + 1/2 ; d/dL = exp(-s)
    # regression:     exp(-s) L / 2 + s/2 -> d/ds = -exp(-s) L / 2 + 1/2 ; d/dL = exp(-s) / 2
    assert grad[0] == pytest.approx(-math.exp(-s1) * l1 + 0.5, rel=1e-4, abs=1e-5)
    assert grad[1] == pytest.approx(-math.exp(-s2) * l2 + 0.5, rel=1e-4, abs=1e-5)
    assert grad[2] == pytest.approx(-0.5 * math.exp(-s3) * l3 + 0.5, rel=1e-4, abs=1e-5)
    assert losses["sst"].grad.item() == pytest.approx(math.exp(-s1), rel=1e-5)
    assert losses["sts"].grad.item() == pytest.approx(0.5 * math.exp(-s3), rel=1e-5)
    assert combined.weights["sts"] == pytest.approx(0.5 * math.exp(-s3), rel=1e-5)
    assert combined.logs["log_var/para"] == pytest.approx(s[1], abs=1e-6)
    total = math.exp(-s1) * l1 + s1 / 2 + math.exp(-s2) * l2 + s2 / 2 + 0.5 * math.exp(-s3) * l3 + s3 / 2
    assert combined.total.item() == pytest.approx(total, rel=1e-4, abs=1e-5)


def test_uncertainty_exp_form_and_stationary_points():
    combiner = Uncertainty(form="exp", init=0.5).build(["sst", "sts"], kind_model())
    losses = {"sst": torch.tensor(2.0), "sts": torch.tensor(3.0)}
    combiner.combine(losses).total.backward()
    # exp(-s) L + s for every task: d/ds = -exp(-s) L + 1
    assert log_var_grads(combiner) == pytest.approx([-math.exp(-0.5) * 2 + 1, -math.exp(-0.5) * 3 + 1], rel=1e-5)
    # Paper form: the gradient vanishes at s = log(2L) (classification) and s = log(L) (regression).
    paper = Uncertainty().build(["sst", "sts"], kind_model())
    set_log_vars(paper, [math.log(2 * 2.0), math.log(3.0)])
    paper.combine(losses).total.backward()
    assert max(abs(g) for g in log_var_grads(paper)) < 1e-6


def test_uncertainty_parameters_state_and_one_task_steps():
    combiner = Uncertainty(lr=0.01).build(["sst", "sts"], kind_model())
    params = combiner.parameters()
    assert params == combiner.log_vars and len(params) == 2  # one parameter per task
    assert all(p.requires_grad and p.dim() == 0 for p in params) and combiner.lr == 0.01
    combiner.combine({"sts": torch.tensor(3.0)}).total.backward()  # sst absent: its s gets no gradient at all
    assert params[0].grad is None and params[1].grad.item() != 0.0
    set_log_vars(combiner, [0.3, -0.7])
    saved = round_trip(combiner.state_dict())
    other = Uncertainty().build(["sst", "sts"], kind_model())
    other_params = other.parameters()
    other.load_state_dict(saved)
    assert all(a is b for a, b in zip(other.parameters(), other_params))  # in place: the optimizer keeps them
    assert [p.item() for p in other_params] == pytest.approx([0.3, -0.7])


def test_an_absent_task_does_not_move_through_adamw_momentum():
    """sst trains in step 1 only; AdamW's momentum must not move its s in the sts-only steps after."""
    combiner = Uncertainty(lr=0.1).build(["sst", "sts"], kind_model())
    optimizer = torch.optim.AdamW(combiner.parameters(), lr=0.1, weight_decay=0.01)
    plan = [("sst", "sts"), ("sts",), ("sts",), ("sts",)]
    history = []
    for tasks in plan:
        losses = {t: torch.tensor(2.0 if t == "sst" else 3.0) for t in tasks}
        combiner.combine(losses).total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append([p.item() for p in combiner.log_vars])
    assert history[0][0] != 0.0  # sst moved in the step it trained
    assert history[1][0] == history[2][0] == history[3][0] == history[0][0]  # and then stayed put
    assert len({h[1] for h in history}) == 4  # sts moved every step


# =========================================================================== gradnorm
def test_gradnorm_network_gradients_equal_plain_weighted_loss():
    model = Toy()
    x, ya, yb = toy_data()
    combiner = GradNorm(alpha=1.5).build(["a", "b"], model)
    combiner.load_state_dict({**combiner.state_dict(), "weights": torch.tensor([1.4, 0.6])})
    combined = combiner.combine(model.losses(x, ya, yb))
    # The balancing ran (autograd.grad on W) without writing any network .grad.
    assert combiner.last_w_grad is not None
    assert all(p.grad is None for p in model.parameters())
    combined.total.backward()
    with_gradnorm = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert combiner.w.grad is None  # and the network's loss gave the weights no gradient
    assert combined.weights == pytest.approx({"a": 1.4, "b": 0.6})

    model.zero_grad(set_to_none=True)
    losses = model.losses(x, ya, yb)
    (1.4 * losses["a"] + 0.6 * losses["b"]).backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert with_gradnorm.keys() == plain.keys()
    for name in plain:
        assert torch.equal(with_gradnorm[name], plain[name]), name


def test_gradnorm_weight_gradient_is_the_papers_formula():
    model = Toy()
    x, ya, yb = toy_data()
    combiner = GradNorm(alpha=1.5).build(["a", "b"], model)
    first = model.losses(x, ya, yb)
    combiner.combine(first)  # records L(0)
    combiner.after_step()
    with torch.no_grad():  # a different point, so that the ratios differ from 1
        model.encoder.layers[0].weight.mul_(0.5)
    losses = model.losses(x, ya, yb)
    w = combiner.w.detach().clone()
    combiner.combine(losses)
    W = list(model.encoder.layers[-1].parameters())
    norms = torch.tensor([grad_norm_on(losses[t], W) for t in ("a", "b")], dtype=torch.float64)
    inverse = torch.tensor([losses[t].item() / first[t].item() for t in ("a", "b")], dtype=torch.float64)
    rates = inverse / inverse.mean()
    g = w.double() * norms
    target = g.mean() * rates ** 1.5
    expected = norms * torch.sign(g - target)  # d/dw_i sum_j |w_j n_j - target_j|, target constant
    assert torch.allclose(combiner.last_w_grad.double(), expected, rtol=1e-4)
    assert not torch.allclose(rates, torch.ones(2, dtype=torch.float64), atol=1e-3)


def test_gradnorm_frozen_network_equalises_weighted_gradient_norms():
    # With the network fixed every L_i(t) = L_i(0), so r_i = 1 and the targets are all Gbar:
    # the weights must settle where w_i ||grad_W L_i|| is the same for every task.
    model = Toy()
    x, ya, yb = toy_data(scale=3.0)
    combiner = GradNorm(lr=0.01).build(["a", "b"], model)
    losses = model.losses(x, ya, yb)
    W = list(model.encoder.layers[-1].parameters())
    n = torch.tensor([grad_norm_on(losses[t], W) for t in ("a", "b")])
    assert n[0] > 2 * n[1]  # the toy's task a has much larger gradients
    history = []
    for _ in range(300):
        combiner.combine(losses)
        combiner.after_step()
        history.append(combiner.w.detach().clone())
    settled = torch.stack(history[-50:]).mean(dim=0)
    expected = 2 * (1 / n) / (1 / n).sum()
    assert torch.allclose(settled, expected, atol=0.03)
    assert abs(float(settled[0] * n[0] / (settled[1] * n[1])) - 1) < 0.1


def _train_toy(alpha: float | None, steps: int = 150):
    """Train the toy with SGD on the plain sum (alpha None) or under GradNorm; per step,
    log(r_a / r_b) with r_i = L_i(t) / L_i(0), and GradNorm's weights."""
    model = Toy(seed=0)
    x, ya, yb = toy_data(scale=10.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=3e-3)
    combiner = None if alpha is None else GradNorm(alpha=alpha).build(["a", "b"], model)
    initial = {t: float(v.detach()) for t, v in model.losses(x, ya, yb).items()}
    spreads, weights = [], []
    for _ in range(steps):
        losses = model.losses(x, ya, yb)
        spreads.append(math.log((float(losses["a"].detach()) / initial["a"]) / (float(losses["b"].detach()) / initial["b"])))
        total = combiner.combine(losses).total if combiner else losses["a"] + losses["b"]
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        if combiner:
            combiner.after_step()
            weights.append(combiner.w.detach().clone())
    return spreads, weights


def test_gradnorm_moves_toward_equal_training_rates_keeping_sum_and_positivity():
    plain, _ = _train_toy(None)
    balanced, weights = _train_toy(1.5)
    mild, _ = _train_toy(0.5)
    # Plain summing lets the large-gradient task a train far faster than b (log-rate gap ~ -4.5) ...
    assert plain[-1] < -3
    # ... GradNorm moves weight to the slower task b and keeps the training rates close,
    assert weights[-1][1] > 1.5 > weights[-1][0]
    assert abs(balanced[-1]) < 0.2 * abs(plain[-1])
    assert sum(map(abs, balanced)) < 0.25 * sum(map(abs, plain))
    # ... the more so the larger alpha (the strength of the pull toward a common rate),
    assert abs(balanced[-1]) < abs(mild[-1])
    # ... with positive weights that sum to the task count after every update.
    for w in weights:
        assert float(w.sum()) == pytest.approx(2.0, abs=1e-5) and bool((w > 0).all())


def test_gradnorm_weights_stay_positive_and_sum_to_task_count_under_a_huge_lr():
    model = Toy()
    x, ya, yb = toy_data()
    combiner = GradNorm(lr=50.0, min_weight=0.05).build(["a", "b"], model)
    losses = model.losses(x, ya, yb)
    for _ in range(5):
        combiner.combine(losses)
        combiner.after_step()
        w = combiner.w.detach()
        assert float(w.sum()) == pytest.approx(2.0, abs=1e-5)
        assert bool((w > 0).all()) and float(w.min()) >= 0.05 - 1e-6
    assert float(w.min()) == pytest.approx(0.05)  # the floor was needed: lr = 50 drives a weight below it


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=5), st.floats(0.001, 1.0))
def test_gradnorm_renormalise_property(values, floor):
    w = gradnorm_module.renormalise(torch.tensor(values, dtype=torch.float64), len(values), floor)
    assert float(w.sum()) == pytest.approx(len(values), rel=1e-9)
    assert float(w.min()) >= floor * (1 - 1e-9)
    positive = torch.tensor(values, dtype=torch.float64)
    if bool((positive > 0).all()):
        scaled = positive * len(values) / positive.sum()
        if bool((scaled >= floor).all()):  # nothing to raise: a plain rescaling
            assert torch.allclose(w, scaled)


def test_gradnorm_initial_losses_recorded_once_unweighted_and_ratios_unweighted():
    model = Toy()
    x, ya, yb = toy_data()
    combiner = GradNorm(alpha=1.0).build(["a", "b"], model)
    combiner.load_state_dict({**combiner.state_dict(), "weights": torch.tensor([1.5, 0.5])})
    first = model.losses(x, ya, yb)
    combined = combiner.combine(first)
    assert combiner.initial == pytest.approx({t: float(first[t].detach()) for t in first})  # not 1.5 * L_a
    assert combined.logs["rate/a"] == pytest.approx(1.0) and combined.logs["rate/b"] == pytest.approx(1.0)
    second = {"a": first["a"] * 0.5, "b": first["b"] * 2.0}
    combined = combiner.combine(second)
    assert combiner.initial == pytest.approx({t: float(first[t].detach()) for t in first})  # unchanged
    # r_i = (L_i / L_i(0)) / mean: (0.5, 2) / 1.25, whatever the weights
    assert combined.logs["rate/a"] == pytest.approx(0.4) and combined.logs["rate/b"] == pytest.approx(1.6)
    assert {"gradnorm_loss", "grad_norm/a", "grad_norm/b"} <= combined.logs.keys()


def test_gradnorm_uses_pre_update_weights_and_updates_after_the_step():
    model = Toy()
    x, ya, yb = toy_data()
    combiner = GradNorm().build(["a", "b"], model)
    combined = combiner.combine(model.losses(x, ya, yb))
    assert combined.weights == {"a": 1.0, "b": 1.0}
    second = combiner.combine(model.losses(x, ya, yb))  # a second micro-batch of the same step
    assert second.weights == {"a": 1.0, "b": 1.0}
    combiner.after_step()
    after = combiner.combine(model.losses(x, ya, yb)).weights
    assert after["a"] != 1.0 and after["a"] + after["b"] == pytest.approx(2.0)
    combiner.after_step()
    combiner.after_step()  # nothing pending: no change
    assert combiner.w.tolist() == pytest.approx(combiner.w.tolist())


def test_gradnorm_state_round_trip_continues_identically():
    model = Toy()
    x, ya, yb = toy_data()
    a = GradNorm().build(["a", "b"], model)
    for _ in range(3):
        a.combine(model.losses(x, ya, yb))
        a.after_step()
    saved = round_trip(a.state_dict())
    b = GradNorm().build(["a", "b"], model)
    b.load_state_dict(saved)
    assert b.initial == a.initial
    for _ in range(3):
        for c in (a, b):
            c.combine(model.losses(x, ya, yb))
            c.after_step()
    assert torch.equal(a.w.detach(), b.w.detach())  # Adam's moments came along too


def test_gradnorm_balanced_layer_choices_and_errors():
    model = Toy()
    assert balanced_parameters(model, "last") == list(model.encoder.layers[-1].parameters())
    assert balanced_parameters(model, "all-shared") == model.shared_parameters()
    x, ya, yb = toy_data()
    combiner = GradNorm(layer="pooler").build(["a", "b"], model)
    with pytest.raises(MtbertError, match="does not depend on the balanced layer"):
        combiner.combine(model.losses(x, ya, yb))  # the toy's heads never use the pooler
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    with pytest.raises(MtbertError, match="no trainable parameters"):
        GradNorm().build(["a", "b"], model)


def test_gradnorm_on_a_tiny_bert_multitask_model():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    encoder = BertEncoder(config)
    encoder.init_weights()
    heads = {"sst": LinearHead(dropout=0.0).build(16, SST, SingleSentence()),
             "sts": LinearHead(dropout=0.0, pooling="pooler").build(16, STS, SeparatePair())}
    model = MultitaskModel(encoder, heads, {"sst": SingleSentence(), "sts": SeparatePair()})
    assert balanced_parameters(model, "last") == list(encoder.layers[-1].parameters())
    combiner = GradNorm().build(["sst", "sts"], model)
    ids = torch.randint(5, 100, (4, 6))
    features = lambda: encoder(ids, torch.ones_like(ids), torch.zeros_like(ids))  # noqa: E731
    out = features()
    losses = {"sst": out.last_hidden_state[:, 0].pow(2).mean(), "sts": out.pooler_output.pow(2).mean() * 10}
    combined = combiner.combine(losses)
    assert set(combined.logs) >= {"grad_norm/sst", "grad_norm/sts"}
    assert all(p.grad is None for p in model.parameters())
    # layer = "pooler" fails for a head that does not use the pooler output, with a one-line reason
    pooler = GradNorm(layer="pooler").build(["sst", "sts"], model)
    out = features()
    with pytest.raises(MtbertError, match="task 'sst'"):
        pooler.combine({"sst": out.last_hidden_state[:, 0].pow(2).mean(), "sts": out.pooler_output.pow(2).mean()})


# =========================================================================== registration
MODULES = [mean_module, weights_module, uncertainty_module, gradnorm_module]


def _plugins(monkeypatch):
    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    base = load_plugins()
    loaded = {p.module for p in base.plugins}
    extra = [(m.__name__.rsplit(".", 1)[-1].replace("_", "-"), m) for m in MODULES if m.__name__ not in loaded]
    return load_plugins(extra) if extra else base


RECIPE = """\
name = "t"
[tasks.sst]
[tasks.sts]
[sampler]
name = "round-robin"
step = "{step}"
"""


def test_registered_and_recipes_validate(monkeypatch, write_recipe):
    plugins = _plugins(monkeypatch)
    for name, factory in [("mean", Mean), ("weights", Weights), ("uncertainty", Uncertainty), ("gradnorm", GradNorm)]:
        assert plugins.registry.find("loss_combiner", name).factory is factory
    ok = [
        ("one-task", 'loss_combiner = { name = "mean" }'),
        ("one-task", 'loss_combiner = { name = "weights", weights = { sst = 1.0, sts = 0.5 } }'),
        ("one-task", 'loss_combiner = { name = "uncertainty", lr = 0.01 }'),
        ("all-tasks", 'loss_combiner = { name = "gradnorm", alpha = 1.0, layer = "all-shared" }'),
    ]
    for step, line in ok:
        recipe = load_recipe(write_recipe(line + "\n" + RECIPE.format(step=step)), [], plugins)
        assert recipe.loss_combiner.name in line
    recipe = load_recipe(write_recipe(ok[3][1] + "\n" + RECIPE.format(step="all-tasks")), [], plugins)
    assert recipe.loss_combiner.options.alpha == 1.0 and recipe.loss_combiner.options.lr == 0.025

    def problems(line, step="all-tasks"):
        with pytest.raises(RecipeError) as info:
            load_recipe(write_recipe(line + "\n" + RECIPE.format(step=step)), [], plugins)
        return str(info.value)

    assert "'gradnorm' needs a batch of every task per step" in problems('loss_combiner = { name = "gradnorm" }', "one-task")
    assert "did you mean 'sts'" in problems('loss_combiner = { name = "weights", weights = { stss = 1.0 } }')
    assert "'sst' must be >= 0" in problems('loss_combiner = { name = "weights", weights = { sst = -1.0 } }')
    assert "loss_combiner.layer" in problems('loss_combiner = { name = "gradnorm", layer = "first" }')
    assert "loss_combiner.form" in problems('loss_combiner = { name = "uncertainty", form = "log" }')
