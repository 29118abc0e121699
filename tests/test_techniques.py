"""The fine-tuning techniques: layer-wise lr decay, EMA, R-Drop, CoSENT, label smoothing.

Each is checked against its formula computed by hand (or by torch's own reference), against its
kind's contract (``mtbert.testing``), and in a whole tiny run.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mtbert.engine.components import PenaltyContext
from mtbert.testing import (check_optimizer_groups, check_regularizer, check_weight_average, tiny_batch, tiny_model)
from mtbert_plugins.average_ema import Ema
from mtbert_plugins.optim_llrd import Llrd
from mtbert_plugins.regularizer_cosent import CoSent, cosent
from mtbert_plugins.regularizer_label_smoothing import LabelSmoothing
from mtbert_plugins.regularizer_rdrop import RDrop

from mtbert.testing import mtbert_plugin_modules, mtbert_plugins, mtbert_tiny_run  # noqa: F401,E402  (fixtures, used by name)


# --------------------------------------------------------------------------- contracts
@pytest.mark.parametrize("options", [RDrop(), CoSent(), LabelSmoothing(), RDrop(alpha=0.3, tasks=["tiny_sentiment"])])
def test_regularizers_keep_the_contract(options):
    check_regularizer(options)


def test_llrd_and_ema_keep_their_contracts():
    check_optimizer_groups(Llrd)
    check_optimizer_groups(Llrd(decay=0.5))
    check_weight_average(Ema)
    check_weight_average(Ema(decay=0.9, warmup=False))


# --------------------------------------------------------------------------- llrd
def test_llrd_rates_decay_by_layer_from_the_top_and_heads_keep_theirs():
    from mtbert.engine.trainer import build_optimizer
    from mtbert.recipe import ComponentSpec, OptimSection

    model = tiny_model()  # 2 layers
    optim = OptimSection(lr=1e-3, head_lr=5e-3)
    spec = ComponentSpec(kind="optimizer_groups", name="llrd", options=Llrd(decay=0.5), component=None)
    optimizer = build_optimizer(model, optim, [], torch.device("cpu"), group_rules=[spec])
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    plain = build_optimizer(model, optim, [], torch.device("cpu"))
    plain_decay = {id(p): g["weight_decay"] for g in plain.param_groups for p in g["params"]}
    expected_scale = {"pooler": 1.0, "layers.1": 0.5, "layers.0": 0.25, "embeddings": 0.125}
    for name, p in model.encoder.named_parameters():
        part = next((k for k in ("pooler", "layers.1", "layers.0") if name.startswith(k)), "embeddings")
        assert rate[id(p)] == pytest.approx(1e-3 * expected_scale[part]), name
        assert decay[id(p)] == plain_decay[id(p)], name  # weight decay and its no-decay split are kept
    for name, p in model.heads.named_parameters():
        assert rate[id(p)] == 5e-3, name
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # the top first: the logged rate is the base rate
    # the schedule scales every group: the ratios hold after warm-up steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / 10)
    scheduler.step()
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["encoder-layer0"] / lrs["encoder-layer3"] == pytest.approx(0.125)


# --------------------------------------------------------------------------- ema
def test_ema_is_the_exponential_average_computed_by_hand():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average = Ema(decay=0.5, warmup=False).build(model)
    for value in (3.0, 5.0):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update(model)
    # 0.5 * (0.5 * 1 + 0.5 * 3) + 0.5 * 5 = 3.5
    assert average.weights()["weight"].item() == pytest.approx(3.5)
    warm = Ema(decay=0.999, warmup=True).build(model)
    assert [round(warm.decay(), 6) for _ in range(1)] == [0.1]  # (1 + 0) / (10 + 0)
    warm.updates = 990
    assert warm.decay() == pytest.approx(991 / 1000)
    warm.updates = 100_000
    assert warm.decay() == 0.999


def test_a_run_evaluates_and_keeps_the_averaged_weights(mtbert_plugins, mtbert_tiny_run):
    """decay = 1 without warm-up: the average never moves, so the best checkpoint is the starting model."""
    from safetensors.torch import load_file

    import mtbert

    folder, _ = mtbert_tiny_run(["weight_average = { name = \"ema\", decay = 1.0, warmup = false }", "optim.epochs=1",
                                 "optim.lr=1e-2"])
    best = load_file(str(folder / "checkpoints" / "best.safetensors"))
    last = load_file(str(folder / "checkpoints" / "last" / "model.safetensors")) \
        if (folder / "checkpoints" / "last" / "model.safetensors").is_file() else None
    encoder, _ = mtbert.load_backbone("testing:tiny", seed=7)
    for key, value in encoder.state_dict().items():
        assert torch.equal(best[f"encoder.{key}"], value), key
    if last is not None:  # the trained weights, which training and --resume continue from, did move
        assert any(not torch.equal(last[k], best[k]) for k in best if k.startswith("encoder.layers"))


# --------------------------------------------------------------------------- r-drop
class TwoPasses(torch.nn.Module):
    """A stand-in model: the second call returns the second pass's logits."""

    def __init__(self, head, second):
        super().__init__()
        self.heads = {"t": head}
        self.second = second

    def forward(self, batch):
        return self.second


def test_rdrop_penalty_is_the_papers_objective_halved():
    from mtbert.engine.heads import TaskHeadModule
    from mtbert.testing import TINY_TASKS

    head = TaskHeadModule(TINY_TASKS["tiny_sentiment"])
    g = torch.Generator().manual_seed(0)
    first = torch.randn(4, 3, generator=g, requires_grad=True)
    second = torch.randn(4, 3, generator=g)
    labels = torch.tensor([0, 2, 1, 1])
    batch = type("B", (), {"labels": labels})()
    loss_1 = F.cross_entropy(first, labels)
    context = PenaltyContext(model=TwoPasses(head, second), task="t", batch=batch, predictions=first, loss=loss_1)
    state = RDrop(alpha=0.7).build()
    term = state.penalty(context)
    p, q = F.softmax(first, -1), F.softmax(second, -1)
    kl_pq = (p * (p.log() - q.log())).sum(-1)
    kl_qp = (q * (q.log() - p.log())).sum(-1)
    paper = loss_1 + F.cross_entropy(second, labels) + 0.7 * 0.5 * (kl_pq + kl_qp).mean()  # Liang et al., eq. 3
    assert (loss_1 + term).item() == pytest.approx(paper.item() / 2, rel=1e-5)


def test_rdrop_is_zero_without_dropout_and_positive_with_it():
    model = tiny_model().eval()  # no dropout at all (attention dropout included): two identical passes
    batch = tiny_batch("tiny_sentiment", input_format=model.input_formats["tiny_sentiment"])
    predictions = model(batch)
    context = PenaltyContext(model=model, task="tiny_sentiment", batch=batch, predictions=predictions,
                             loss=model.heads["tiny_sentiment"].loss(predictions, batch.labels))
    assert RDrop().build().penalty(context).item() == pytest.approx(0.0, abs=1e-7)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    torch.manual_seed(0)
    predictions = model(batch)
    context = PenaltyContext(model=model, task="tiny_sentiment", batch=batch, predictions=predictions,
                             loss=model.heads["tiny_sentiment"].loss(predictions, batch.labels))
    state = RDrop().build()
    state.penalty(context)
    assert state.logs()["divergence"] > 0


# --------------------------------------------------------------------------- cosent
def test_cosent_matches_the_sum_over_wrongly_ordered_pairs_by_hand():
    scores = torch.tensor([0.2, 0.9, -0.4, 0.5])
    labels = torch.tensor([3.0, 1.0, 2.0, 3.0])  # ties (examples 0 and 3) form no pair
    total = 1.0
    for i, j in itertools.permutations(range(4), 2):
        if labels[i] > labels[j]:
            total += math.exp(20 * (scores[j].item() - scores[i].item()))
    assert cosent(scores, labels, 20.0).item() == pytest.approx(math.log(total), rel=1e-6)
    # perfectly ordered with a large margin: ~0; a batch of equal labels: exactly 0
    assert cosent(torch.tensor([1.0, 0.0, -1.0]), torch.tensor([5.0, 2.0, 0.0]), 20.0).item() < 1e-8
    assert cosent(torch.tensor([0.3, 0.1]), torch.tensor([2.0, 2.0]), 20.0).item() == 0.0


def test_cosent_normalises_the_scores_to_the_cosine_range_and_skips_classification():
    from mtbert.engine.heads import TaskHeadModule
    from mtbert.testing import TINY_TASKS

    similarity = TaskHeadModule(TINY_TASKS["tiny_similarity"])
    low, high = similarity.label_range
    predictions = torch.tensor([low, high, (low + high) / 2], requires_grad=True)
    labels = torch.tensor([high, low, (low + high) / 2])
    batch = type("B", (), {"labels": labels})()
    model = type("M", (), {"heads": {"s": similarity, "c": TaskHeadModule(TINY_TASKS["tiny_sentiment"])}})()
    term = CoSent(weight=0.5).build().penalty(PenaltyContext(model=model, task="s", batch=batch, predictions=predictions,
                                                             loss=torch.tensor(0.0)))
    assert term.item() == pytest.approx(0.5 * cosent(torch.tensor([-1.0, 1.0, 0.0]), labels, 20.0).item(), rel=1e-6)
    term.backward()
    assert predictions.grad[0] < 0 < predictions.grad[1]  # raise the first (truly higher), lower the second
    assert CoSent().build().penalty(PenaltyContext(model=model, task="c", batch=batch, predictions=predictions,
                                                   loss=torch.tensor(0.0))) is None


# --------------------------------------------------------------------------- label smoothing
def test_label_smoothing_equals_torchs_smoothed_cross_entropy():
    from mtbert.engine.heads import TaskHeadModule
    from mtbert.testing import TINY_TASKS

    g = torch.Generator().manual_seed(1)
    heads = {"c": TaskHeadModule(TINY_TASKS["tiny_sentiment"]), "b": TaskHeadModule(TINY_TASKS["tiny_paraphrase"])}
    model = type("M", (), {"heads": heads})()
    logits = torch.randn(6, 3, generator=g)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    loss = heads["c"].loss(logits, labels)
    term = LabelSmoothing(epsilon=0.2).build().penalty(PenaltyContext(
        model=model, task="c", batch=type("B", (), {"labels": labels})(), predictions=logits, loss=loss))
    assert (loss + term).item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.2).item(), rel=1e-6)
    z = torch.randn(6, generator=g)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    loss = heads["b"].loss(z, y)
    term = LabelSmoothing(epsilon=0.2).build().penalty(PenaltyContext(
        model=model, task="b", batch=type("B", (), {"labels": y})(), predictions=z, loss=loss))
    smoothed = F.binary_cross_entropy_with_logits(z, y.float() * 0.8 + 0.1)
    assert (loss + term).item() == pytest.approx(smoothed.item(), rel=1e-6)


# --------------------------------------------------------------------------- whole runs
@pytest.mark.parametrize("override", [
    'regularizers = [{ name = "rdrop" }]',
    'regularizers = [{ name = "cosent" }]',
    'regularizers = [{ name = "label-smoothing" }]',
    'optimizer_groups = [{ name = "llrd", decay = 0.8 }]',
    'weight_average = { name = "ema" }',
])
def test_each_technique_trains_in_a_whole_run(mtbert_plugins, mtbert_tiny_run, override):
    import tomllib

    folder, summary = mtbert_tiny_run([override, "optim.epochs=1"])
    assert summary["last"]["epoch"] == 1 and math.isfinite(summary["best"]["dev"]["mean"])
    resolved = tomllib.loads((folder / "recipe.toml").read_text())
    key = override.split("=", 1)[0].strip()
    assert resolved[key]  # the resolved recipe keeps the technique with its options


# --------------------------------------------------------------------------- the extension points, third-party
import attrs  # noqa: E402

from mtbert import hookimpl  # noqa: E402
from mtbert.schema import option  # noqa: E402


@attrs.define
class HalfHeads:
    """Heads at half their rate (or drop the heads' groups when broken: to test the engine's check)."""

    broken: bool = option(False, help="drop the heads' groups (the engine must refuse)")

    def build(self):
        broken = self.broken

        class Rule:
            def apply(self, model, groups):
                if broken:
                    return [g for g in groups if not g["name"].startswith("heads")]
                return [{**g, "lr": g["lr"] * 0.5} if g["name"].startswith("heads") else g for g in groups]

        return Rule()


@attrs.define
class Latest:
    """A 'weight average' of the last step only: weights() is a copy of the weights after each update."""

    def build(self, model):
        class Average:
            def __init__(self):
                self.copy = {n: p.detach().clone() for n, p in model.named_parameters()}

            def update(self, model):
                self.copy = {n: p.detach().clone() for n, p in model.named_parameters()}

            def weights(self):
                return self.copy

            def state_dict(self):
                return {"copy": dict(self.copy)}

            def load_state_dict(self, state):
                self.copy = {n: torch.as_tensor(v) for n, v in state["copy"].items()}

        return Average()


class ThirdParty:
    """A plugin registering one component of each new kind through the hooks, as a third-party package would."""

    @hookimpl
    def mtbert_register_optimizer_groups(self, register):
        register("half-heads", HalfHeads)

    @hookimpl
    def mtbert_register_weight_averages(self, register):
        register("latest", Latest)


def test_third_party_rules_register_through_the_hooks_and_a_bad_rule_is_one_line(tmp_path):
    from mtbert.errors import MtbertError
    from mtbert.testing import run_tiny_recipe, tiny_plugins

    plugins = tiny_plugins(("third-party", ThirdParty()))
    assert plugins.registry.find("optimizer_groups", "half-heads") is not None
    assert plugins.registry.find("weight_average", "latest") is not None
    check_optimizer_groups(HalfHeads, plugins=plugins)
    check_weight_average(Latest, plugins=plugins)
    folder, summary = run_tiny_recipe(plugins, tmp_path / "ok", overrides=[
        'optimizer_groups = [{ name = "half-heads" }, { name = "llrd" }]', 'weight_average = "latest"', "optim.epochs=1"])
    assert summary["last"]["epoch"] == 1
    with pytest.raises(MtbertError) as info:
        run_tiny_recipe(plugins, tmp_path / "bad", overrides=['optimizer_groups = [{ name = "half-heads", broken = true }]'])
    assert "optimizer_groups[0] 'half-heads'" in str(info.value) and "exactly once" in str(info.value)
    assert "\n" not in str(info.value)
