"""The regularizer plugins: SMART, mixout and the head-norm penalty, checked against their maths.

The bugs of the reference implementations each have a test here: SMART perturbs the
word-embedding lookup (position embeddings enter once), its epsilon is a real radius, padding
gets no noise; mixout's gradient carries the 1/(1 - p) factor and its targets are
non-persistent buffers that follow ``.to()``.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mtbert_plugins.inputs as inputs_module
import mtbert_plugins.regularizer_mixout as mixout_module
import mtbert_plugins.regularizer_norm_penalty as norm_module
import mtbert_plugins.regularizer_smart as smart_module
from mtbert.data.readers import Example
from mtbert.engine.components import PenaltyContext
from mtbert.engine.heads import TaskHeadModule
from mtbert.engine.multitask_model import MultitaskModel
from mtbert.engine.trainer import MultitaskTrainer
from mtbert.engine.seeding import RandomState
from mtbert.errors import RecipeError
from mtbert.model.bert import BertEncoder
from mtbert.model.config import BertConfig
from mtbert_plugins.head_linear import LinearHead
from mtbert_plugins.inputs import SeparatePair, SingleSentence
from mtbert_plugins.regularizer_mixout import Mixout, MixoutLinear, draw_mask, mixout
from mtbert_plugins.regularizer_norm_penalty import NormPenalty
from mtbert_plugins.regularizer_smart import Smart, divergence
from mtbert_plugins.tasks_cs224n import PARA, SST, STS

HIDDEN = 16


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from mtbert.model.tokenizer import BertTokenizer

    return BertTokenizer.from_folder(minilm_dir)


EXAMPLES = [
    Example(id="a", texts=("a gripping, beautifully acted film", "a fine movie"), label=1, line=2),
    Example(id="b", texts=("dull", "the plot drags on and on without any point at all"), label=0, line=3),
    Example(id="c", texts=("not bad at all", "surprisingly not bad"), label=1, line=4),
]
LABELS = {"sst": [4, 0, 2], "para": [1, 0, 1], "sts": [3.5, 0.2, 4.8]}


def make_model(dropout: float = 0.0, seed: int = 0, vocab: int = 30522) -> MultitaskModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    encoder = BertEncoder(config)
    encoder.init_weights()
    head = LinearHead(dropout=dropout)
    heads = {"sst": head.build(HIDDEN, SST, SingleSentence()), "para": head.build(HIDDEN, PARA, SeparatePair()),
             "sts": head.build(HIDDEN, STS, SeparatePair())}
    formats = {"sst": SingleSentence(), "para": SeparatePair(), "sts": SeparatePair()}
    return MultitaskModel(encoder, heads, formats)


def make_batch(tokenizer, task: str):
    fmt = SingleSentence() if task == "sst" else SeparatePair()
    examples = [
        Example(id=e.id, texts=e.texts[:1] if task == "sst" else e.texts, label=LABELS[task][i], line=e.line)
        for i, e in enumerate(EXAMPLES)
    ]
    encoded = fmt.encode_examples(tokenizer, examples, 64)
    dtype = torch.long if task == "sst" else torch.float
    return fmt.collate(encoded, list(range(len(examples))), task, dtype)


def context_for(model, batch, capture: bool = False):
    """The context of a training forward; ``capture``: with the random state before it, as the trainer gives
    it to a regularizer that ``wants_random_state``."""
    random_state = RandomState(torch.device("cpu")) if capture else None
    predictions = model(batch)
    loss = model.heads[batch.task].loss(predictions, batch.labels)
    return PenaltyContext(model=model, task=batch.task, batch=batch, predictions=predictions, loss=loss,
                          random_state=random_state)


def smart(model, **options):
    """SMART with an absolute ball over the whole example unless told otherwise (the mechanics under test)."""
    state = Smart(**{"scale": "absolute", "scope": "example", **options}).build()
    state.setup(model)
    return state


class ConstantHead(TaskHeadModule):
    """A head that ignores its input: every example gets the same logits."""

    def __init__(self, task):
        super().__init__(task)
        self.logits = nn.Parameter(torch.randn(self.out_features))

    def forward(self, features):
        batch = features.hidden[0].shape[0]
        return self.squeeze_output(self.logits.expand(batch, -1))


# --------------------------------------------------------------------------- SMART: divergences
def test_symmetric_kl_multiclass_matches_a_hand_computed_value():
    a = torch.tensor([[1.0, 0.0, -1.0]])
    b = torch.tensor([[0.0, 0.0, 0.0]])
    z = math.exp(1) + 1 + math.exp(-1)
    p = [math.exp(1) / z, 1 / z, math.exp(-1) / z]
    q = [1 / 3] * 3
    kl_pq = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    kl_qp = sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))
    assert divergence("multiclass", a, b).item() == pytest.approx(kl_pq + kl_qp, rel=1e-6)
    # by hand: p = (0.6652, 0.2447, 0.0900), p - q = (0.3319, -0.0886, -0.2433),
    # log(p / q) = (0.6910, -0.3090, -1.3090): 0.2293 + 0.0274 + 0.3185 = 0.5752
    assert divergence("multiclass", a, b).item() == pytest.approx(0.5752, abs=1e-4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-8, 8), min_size=4, max_size=4), st.lists(st.floats(-8, 8), min_size=4, max_size=4))
def test_symmetric_kl_multiclass_equals_kl_both_ways(xs, ys):
    a, b = torch.tensor([xs], dtype=torch.float64), torch.tensor([ys], dtype=torch.float64)
    P, Q = torch.distributions.Categorical(logits=a), torch.distributions.Categorical(logits=b)
    reference = torch.distributions.kl_divergence(P, Q) + torch.distributions.kl_divergence(Q, P)
    assert divergence("multiclass", a, b).item() == pytest.approx(reference.item(), rel=1e-4, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.floats(-10, 10), st.floats(-10, 10))
def test_symmetric_kl_binary_is_the_bernoulli_one(x, y):
    a, b = torch.tensor([x], dtype=torch.float64), torch.tensor([y], dtype=torch.float64)
    P, Q = torch.distributions.Bernoulli(logits=a), torch.distributions.Bernoulli(logits=b)
    reference = (torch.distributions.kl_divergence(P, Q) + torch.distributions.kl_divergence(Q, P)).item()
    assert divergence("binary", a, b).item() == pytest.approx(reference, rel=1e-4, abs=1e-6)
    # the same as a two-class softmax with logits (0, a): one logit is a Bernoulli distribution
    two = divergence("multiclass", torch.stack([torch.zeros_like(a), a], -1), torch.stack([torch.zeros_like(b), b], -1))
    assert divergence("binary", a, b).item() == pytest.approx(two.item(), rel=1e-4, abs=1e-6)


def test_regression_divergence_is_the_squared_error_per_example():
    a, b = torch.tensor([1.0, 2.5, -1.0]), torch.tensor([0.5, 2.5, 1.0])
    assert divergence("regression", a, b).tolist() == [0.25, 0.0, 4.0]


def test_divergences_reduce_in_fp32_under_bf16_inputs():
    torch.manual_seed(0)
    a, b = torch.randn(4, 5).bfloat16(), torch.randn(4, 5).bfloat16()
    for kind, x, y in [("multiclass", a, b), ("binary", a[:, 0], b[:, 0]), ("regression", a[:, 0], b[:, 0])]:
        out = divergence(kind, x, y)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, divergence(kind, x.float(), y.float()), rtol=0, atol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert divergence(kind, x, y).dtype == torch.float32


def test_penalty_is_fp32_under_bf16_autocast(tokenizer):
    model = make_model()
    batch = make_batch(tokenizer, "sst")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ctx = context_for(model, batch)
        assert ctx.predictions.dtype == torch.bfloat16
        value = smart(model, epsilon=1e-2, step_size=1e-2).penalty(ctx)
    assert value.dtype == torch.float32 and torch.isfinite(value) and value > 0


# --------------------------------------------------------------------------- SMART: the ball
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("scope", ["example", "token"])
def test_perturbation_stays_within_epsilon_and_reaches_it(tokenizer, norm, scope):
    model = make_model()
    batch = make_batch(tokenizer, "sts")  # two sequences per example: the example ball spans both
    eps = 1e-3
    state = smart(model, epsilon=eps, step_size=1.0, norm=norm, scope=scope)
    state.penalty(context_for(model, batch))
    deltas = state.last_perturbation
    assert len(deltas) == 2
    tol = eps * (1 + 1e-5)
    if norm == "linf":
        assert max(d.abs().max().item() for d in deltas) <= tol
    if scope == "token":
        per_token = torch.cat([smart_module.token_norms(d, norm).flatten() for d in deltas])
        assert per_token.max().item() <= tol
    per_example = smart_module.example_norms(deltas, norm)
    if scope == "example" or norm == "linf":
        assert per_example.max().item() <= tol
    # a step much larger than epsilon ends on the sphere: epsilon is the radius, not a scale
    if scope == "example":
        assert per_example.min().item() == pytest.approx(eps, rel=1e-4)
    else:
        real = torch.cat([smart_module.token_norms(d, norm)[s["attention_mask"] == 1]
                          for d, s in zip(deltas, model.sequences(batch))])
        assert real.min().item() == pytest.approx(eps, rel=1e-4)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_relative_scale_measures_the_ball_in_each_tokens_embedding_norm(tokenizer, norm):
    model = make_model()
    batch = make_batch(tokenizer, "sts")
    state = smart(model, scale="relative", scope="token", epsilon=0.1, step_size=10.0, norm=norm)
    state.penalty(context_for(model, batch))
    words = model.word_embeddings(batch)
    for delta, word, seq in zip(state.last_perturbation, words, model.sequences(batch)):
        real = seq["attention_mask"] == 1
        ratio = smart_module.token_norms(delta, norm)[real] / smart_module.token_norms(word.detach(), norm)[real]
        assert ratio.max().item() <= 0.1 * (1 + 1e-4)
        assert ratio.min().item() == pytest.approx(0.1, rel=1e-3)  # a large step ends on each token's sphere


def test_the_defaults_perturb_a_meaningful_fraction_and_log_the_ratio(tokenizer):
    """Relative defaults: the penalty is far from the 1e-5 of the literal reading, and smart/ratio says how far."""
    model = make_model()
    batch = make_batch(tokenizer, "sst")
    default = Smart().build()
    default.setup(model)
    literal = smart(model, epsilon=1e-5, sigma=1e-5, step_size=1e-3)
    torch.manual_seed(0)
    context = context_for(model, batch)
    penalty = default.penalty(context)
    small = literal.penalty(context)
    assert penalty.item() > 100 * small.item()
    logs = default.logs()
    assert logs["ratio"] == pytest.approx(penalty.item() / context.loss.item(), rel=1e-5)
    assert Smart().scale == "relative" and Smart().step_size == Smart().epsilon


def test_epsilon_is_a_radius_the_perturbation_scales_with_it(tokenizer):
    model = make_model()
    batch = make_batch(tokenizer, "sst")
    sizes = []
    for eps in (1e-4, 4e-4):
        state = smart(model, epsilon=eps, step_size=1.0, norm="l2")
        torch.manual_seed(1)
        state.penalty(context_for(model, batch))
        sizes.append(smart_module.example_norms(state.last_perturbation, "l2"))
    torch.testing.assert_close(sizes[1], 4 * sizes[0], rtol=1e-4, atol=0)


@pytest.mark.parametrize("steps", [0, 1, 2])
def test_padding_positions_get_no_perturbation(tokenizer, steps):
    model = make_model()
    batch = make_batch(tokenizer, "sts")
    state = smart(model, epsilon=1e-2, sigma=1e-3, step_size=1e-2, steps=steps)
    state.penalty(context_for(model, batch))
    for delta, seq in zip(state.last_perturbation, model.sequences(batch)):
        pad = seq["attention_mask"] == 0
        assert pad.any()  # the fixture batch really has padding
        assert torch.count_nonzero(delta[pad]) == 0
        assert torch.count_nonzero(delta[~pad]) > 0


def test_ascent_finds_a_worse_direction_than_random_ones(tokenizer):
    """One ascent step from small noise is a power-iteration step on the divergence's Hessian:
    it must beat random corners of the same l_inf ball."""
    model = make_model()
    batch = make_batch(tokenizer, "sst")
    eps = 1e-2
    state = smart(model, epsilon=eps, step_size=1.0, sigma=1e-4, dropout="independent")
    ctx = context_for(model, batch)
    torch.manual_seed(3)
    adversarial = state.penalty(ctx).item()
    words = model.word_embeddings(batch)
    mask = batch.inputs["attention_mask"][..., None].float()
    gen = torch.Generator().manual_seed(0)
    randoms = []
    with torch.no_grad():
        for _ in range(20):
            corner = (torch.randint(0, 2, words[0].shape, generator=gen) * 2 - 1).float() * eps * mask
            adv = model(batch, inputs_embeds=(words[0] + corner,))
            randoms.append(divergence("multiclass", adv, ctx.predictions).mean().item())
    assert adversarial > max(randoms)


# --------------------------------------------------------------------------- SMART: the term
def test_penalty_is_zero_for_a_constant_model_and_positive_otherwise(tokenizer):
    for task, spec in [("sst", SST), ("sts", STS), ("para", PARA)]:
        batch = make_batch(tokenizer, task)
        model = make_model()
        assert smart(model).penalty(context_for(model, batch)).item() > 0  # the paper's defaults
        assert smart(model, epsilon=1e-2, step_size=1e-2).penalty(context_for(model, batch)).item() > 0
        model.heads[task] = ConstantHead(spec)
        value = smart(model, epsilon=1e-2, step_size=1e-2).penalty(context_for(model, batch))
        assert value.item() == 0.0


@pytest.mark.parametrize("capture", [True, False])
def test_shared_dropout_masks_isolate_the_perturbation(tokenizer, capture):
    """With dropout on and no perturbation, shared masks give exactly zero; independent masks do not.
    ``capture``: the engine's path (f(x) is the training forward, its masks replayed); without: f(x)
    is recomputed."""
    model = make_model(dropout=0.3)
    model.train()
    batch = make_batch(tokenizer, "sst")
    shared = smart(model, sigma=0.0, steps=0, dropout="shared").penalty(context_for(model, batch, capture))
    assert shared.item() == 0.0
    independent = smart(model, sigma=0.0, steps=0, dropout="independent").penalty(context_for(model, batch))
    assert independent.item() > 0


@pytest.mark.parametrize("task", ["sst", "sts"])
def test_shared_dropout_reuses_the_training_forward_and_its_masks(tokenizer, task):
    """The engine's path: f(x) IS the training forward, and the ascent and the final pass replay its
    random state (its dropout masks). A reference that replays that state by hand gives the same
    perturbation and penalty; afterwards the generator is where the noise left it, so the next
    random numbers repeat neither the noise nor the training forward's masks."""
    model = make_model(dropout=0.3).train()
    batch = make_batch(tokenizer, task)
    kind = model.heads[task].label_kind
    eps, step, sigma = 1e-2, 1e-2, 1e-3
    torch.manual_seed(7)
    ctx = context_for(model, batch, capture=True)
    state = smart(model, epsilon=eps, step_size=step, sigma=sigma, steps=1)
    assert state.wants_random_state
    value = state.penalty(ctx)
    shapes = [s["input_ids"].shape + (HIDDEN,) for s in model.sequences(batch)]
    following = [torch.randn(shape) for shape in shapes]  # what later random draws get

    # By hand: the same seed, the training forward, then the noise.
    torch.manual_seed(7)
    start = RandomState(torch.device("cpu"))
    clean = model(batch)
    torch.testing.assert_close(clean, ctx.predictions, rtol=0, atol=0)
    masks = [s["attention_mask"][..., None].float() for s in model.sequences(batch)]
    with torch.no_grad():
        words = model.word_embeddings(batch)
    raw = [torch.randn_like(w) for w in words]
    after_noise = torch.get_rng_state()
    noise = [r * sigma * m for r, m in zip(raw, masks)]
    leaves = [d.clone().requires_grad_(True) for d in noise]
    start.replay()
    adv = model(batch, inputs_embeds=tuple(w + d for w, d in zip(words, leaves)))
    grads = torch.autograd.grad(divergence(kind, adv, clean.detach()).sum(), leaves)
    moved = [d + step * g for d, g in zip(noise, smart_module.normalise(grads, "linf", "example"))]
    delta = [d * m for d, m in zip(smart_module.project(moved, "linf", "example", eps), masks)]
    for got, want in zip(state.last_perturbation, delta):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)
    start.replay()
    final = model(batch, inputs_embeds=tuple(w + d for w, d in zip(model.word_embeddings(batch), delta)))
    torch.testing.assert_close(value, divergence(kind, final, clean).mean(), rtol=1e-5, atol=1e-9)
    assert value.item() > 0

    # The stream after the penalty continues from where the noise left it: fresh numbers, not the
    # noise again (the draws of the same shapes would repeat it), nor the training forward's.
    torch.set_rng_state(after_noise)
    assert all(torch.equal(a, torch.randn(shape)) for a, shape in zip(following, shapes))
    assert not any(torch.equal(a, r) for a, r in zip(following, raw))
    start.replay()
    assert not any(torch.equal(a, torch.randn(shape)) for a, shape in zip(following, shapes))


def test_independent_dropout_and_no_smoothness_term_want_no_random_state():
    assert Smart().build().wants_random_state
    assert not Smart(dropout="independent").build().wants_random_state
    assert not Smart(weight=0.0, bregman_weight=1.0).build().wants_random_state


def test_trainer_captures_the_random_state_before_the_training_forward_only_when_wanted(tokenizer):
    """The engine's side of the contract: ``context.random_state`` replays the training forward's masks."""
    model = make_model(dropout=0.3).train()
    batch = make_batch(tokenizer, "sst")

    class Spy:
        def __init__(self, wants: bool):
            self.wants_random_state = wants
            self.contexts: list[PenaltyContext] = []

        def penalty(self, context):
            self.contexts.append(context)
            return None

    for wants in (True, False):
        spy = Spy(wants)
        trainer = MultitaskTrainer.__new__(MultitaskTrainer)
        trainer.run = SimpleNamespace(model=model, regularizers=[(SimpleNamespace(name="spy"), spy)], examples_seen=0,
                                      precision=SimpleNamespace(name="fp32"))
        trainer.streams = {"sst": SimpleNamespace(next_shard=lambda: (batch, 1.0), last_global_size=3)}
        trainer.device = torch.device("cpu")
        trainer.recipe = SimpleNamespace(train=SimpleNamespace(precision="fp32"))
        trainer._task_loss("sst")
        (context,) = spy.contexts
        if not wants:
            assert context.random_state is None
            continue
        later = torch.get_rng_state()
        context.random_state.replay()
        torch.testing.assert_close(model(batch), context.predictions, rtol=0, atol=0)
        torch.set_rng_state(later)


@pytest.mark.parametrize("capture", [True, False])
def test_gradient_flows_through_both_predictions_with_detached_delta(tokenizer, capture):
    """The penalty's parameter gradient equals that of l_s(f(x + delta), f(x)) with delta fixed."""
    model = make_model()
    batch = make_batch(tokenizer, "sts")
    state = smart(model, epsilon=1e-2, step_size=1e-2, weight=3.0)
    ctx = context_for(model, batch, capture)
    state.penalty(ctx).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    embeds = model.word_embeddings(batch)
    adv = model(batch, inputs_embeds=tuple(e + d for e, d in zip(embeds, state.last_perturbation)))
    (3.0 * ((adv.float() - model(batch).float()) ** 2).mean()).backward()
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    assert "encoder.word_embeddings.weight" in got and "heads.sts.linear.weight" in got
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-8)


def test_clean_gradient_false_detaches_f_of_x(tokenizer):
    model = make_model()
    batch = make_batch(tokenizer, "sst")
    for clean_gradient in (True, False):
        ctx = context_for(model, batch)
        ctx.predictions.retain_grad()
        smart(model, epsilon=1e-2, step_size=1e-2, dropout="independent", clean_gradient=clean_gradient).penalty(ctx).backward()
        reached = ctx.predictions.grad is not None and ctx.predictions.grad.abs().sum() > 0
        assert reached == clean_gradient


def test_weight_zero_and_other_tasks_add_nothing(tokenizer):
    model = make_model()
    batch = make_batch(tokenizer, "sst")
    ctx = context_for(model, batch)
    state = torch.get_rng_state()
    assert smart(model, weight=0.0).penalty(ctx) is None
    assert smart(model, tasks=["sts"]).penalty(ctx) is None
    assert torch.equal(state, torch.get_rng_state())  # untouched: training is the plain one
    assert smart(model, tasks=["sst"]).penalty(ctx) is not None


def test_logs_are_the_mean_penalty_since_the_last_call(tokenizer):
    model = make_model()
    state = smart(model, epsilon=1e-2, step_size=1e-2)
    values = [state.penalty(context_for(model, make_batch(tokenizer, t))).item() for t in ("sst", "sts")]
    logs = state.logs()
    assert logs["penalty"] == pytest.approx(sum(values) / 2, rel=1e-6)
    assert logs["smoothness"] == pytest.approx(sum(values) / 2, rel=1e-6)
    assert state.logs() == {}


# --------------------------------------------------------------------------- SMART: positions once
class CountReads(nn.Module):
    """An identity parametrization: counts every read of the parametrized weight."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def forward(self, weight):
        self.reads += 1
        return weight


@pytest.mark.parametrize("task", ["sst", "sts"])
def test_position_embeddings_enter_the_forward_pass_once(tokenizer, task):
    from torch.nn.utils import parametrize

    model = make_model().eval()
    batch = make_batch(tokenizer, task)
    sequences = len(model.sequences(batch))
    assert sequences == (2 if task == "sts" else 1)
    passes = 1  # with gradients every input format makes one encoder call (pairs stacked)
    # replacing the lookup by itself changes nothing: positions are not in word_embeddings()
    torch.testing.assert_close(model(batch), model(batch, inputs_embeds=model.word_embeddings(batch)), rtol=0, atol=0)

    counter = CountReads()
    parametrize.register_parametrization(model.encoder.position_embeddings, "weight", counter)
    counter.reads = 0  # registering reads the weight once
    model.word_embeddings(batch)
    assert counter.reads == 0
    model(batch, inputs_embeds=model.word_embeddings(batch))
    assert counter.reads == passes
    counter.reads = 0
    model.train()
    smart(model, steps=1, dropout="shared").penalty(context_for(model, batch))
    assert counter.reads == passes * (1 + 1 + 1 + 1)  # training forward, f(x), one ascent, final
    counter.reads = 0
    smart(model, steps=1, dropout="shared").penalty(context_for(model, batch, capture=True))
    assert counter.reads == passes * (1 + 1 + 1)  # f(x) is the training forward (its masks replayed)
    counter.reads = 0
    smart(model, steps=2, dropout="independent").penalty(context_for(model, batch))
    assert counter.reads == passes * (1 + 2 + 1)


def test_smart_on_a_concatenated_pair_batch_keeps_segments_and_masks_padding(tokenizer):
    concat = pytest.importorskip("mtbert_plugins.input_concat_pair")
    fmt = concat.ConcatPair()
    model = make_model()
    model.input_formats["para"] = fmt
    model.heads["para"] = LinearHead(dropout=0.0).build(HIDDEN, PARA, fmt)
    examples = [Example(id=e.id, texts=e.texts, label=LABELS["para"][i], line=e.line) for i, e in enumerate(EXAMPLES)]
    batch = fmt.collate(fmt.encode_examples(tokenizer, examples, 64), [0, 1, 2], "para", torch.float)
    (seq,) = model.sequences(batch)
    assert seq["token_type_ids"].max() == 1 and (seq["attention_mask"] == 0).any()
    model.eval()
    torch.testing.assert_close(model(batch), model(batch, inputs_embeds=model.word_embeddings(batch)), rtol=0, atol=0)
    model.train()
    state = smart(model, epsilon=1e-2, step_size=1e-2)
    assert state.penalty(context_for(model, batch)).item() > 0
    (delta,) = state.last_perturbation
    assert torch.count_nonzero(delta[seq["attention_mask"] == 0]) == 0


# --------------------------------------------------------------------------- SMART: Bregman
def test_bregman_moving_average_follows_the_optimizer_steps(tokenizer):
    model = make_model()
    batch = make_batch(tokenizer, "sst")
    state = smart(model, weight=0.0, bregman_weight=1.0, bregman_momentum=0.9, bregman_early_momentum=0.5,
                  bregman_early_updates=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)  # the engine's optimizer
    ctx = context_for(model, batch)
    first = state.penalty(ctx)
    assert first.item() == 0.0  # theta~ = theta before any update (no dropout: same function)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    (ctx.loss + first).backward()
    optimizer.step()
    state.after_step()  # what the trainer does after every optimizer step
    theta1 = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, average in state.ema.items():  # early momentum 0.5 for the first update
        torch.testing.assert_close(average, 0.5 * theta0[name] + 0.5 * theta1[name])
    optimizer.zero_grad()
    ctx = context_for(model, batch)
    second = state.penalty(ctx)
    assert second.item() > 0
    (ctx.loss + second).backward()
    optimizer.step()
    state.after_step()
    for name, average in state.ema.items():  # then 0.9
        want = 0.9 * (0.5 * theta0[name] + 0.5 * theta1[name]) + 0.1 * dict(model.named_parameters())[name].detach()
        torch.testing.assert_close(average, want)
    assert state.updates == 2


def test_bregman_gradient_reaches_the_model_not_the_average(tokenizer):
    model = make_model()
    batch = make_batch(tokenizer, "sts")
    state = smart(model, weight=0.0, bregman_weight=1.0)
    state.penalty(context_for(model, batch))
    with torch.no_grad():
        for p in model.heads["sts"].parameters():
            p.add_(0.5)
    ctx = context_for(model, batch)
    value = state.penalty(ctx)
    teacher = torch.func.functional_call(model.eval(), state.ema, (batch,))
    model.train()
    torch.testing.assert_close(value, ((ctx.predictions - teacher) ** 2).mean())
    value.backward()
    assert model.heads["sts"].linear.weight.grad.abs().sum() > 0
    assert all(not t.requires_grad and t.grad is None for t in state.ema.values())


# --------------------------------------------------------------------------- mixout
@pytest.mark.parametrize("granularity", ["neuron", "element"])
def test_mixout_function_passes_gradcheck_with_a_fixed_mask(granularity):
    torch.manual_seed(0)
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    u = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    mask = draw_mask(w.detach(), 0.4, granularity)
    assert torch.autograd.gradcheck(lambda w, u: mixout(w, u, mask, 0.4), (w, u))


def test_mixout_gradient_carries_the_one_over_one_minus_p_factor():
    torch.manual_seed(0)
    p = 0.3
    w = torch.randn(5, 4, requires_grad=True)
    u = torch.randn(5, 4)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    upstream = torch.randn(5, 4)
    (mixout(w, u, mask, p) * upstream).sum().backward()
    torch.testing.assert_close(w.grad, upstream * mask / (1 - p))  # the authors' code gives upstream * mask


def test_mixout_neuron_mask_mixes_whole_input_columns():
    torch.manual_seed(0)
    p = 0.5
    w, u = torch.randn(6, 8), torch.randn(6, 8)
    mask = draw_mask(w, p, "neuron")
    assert mask.shape == (1, 8) and set(mask.unique().tolist()) <= {0.0, 1.0}
    mixed = mixout(w, u, mask, p)
    for j in range(8):
        want = u[:, j] if mask[0, j] == 0 else u[:, j] + (w[:, j] - u[:, j]) / (1 - p)
        torch.testing.assert_close(mixed[:, j], want)


@pytest.mark.parametrize("granularity", ["neuron", "element"])
def test_mixout_expectation_over_masks_is_the_weight(granularity):
    torch.manual_seed(0)
    p, n = 0.6, 20000
    w, u = torch.randn(4, 5), torch.randn(4, 5)
    total = torch.zeros_like(w)
    for _ in range(n):
        total += mixout(w, u, draw_mask(w, p, granularity), p)
    mean = total / n
    sd = (w - u).abs() * math.sqrt(p / (1 - p) / n)
    assert ((mean - w).abs() <= 5 * sd + 1e-6).all()


def _linear(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(5, 3)


def test_mixout_is_the_identity_at_p_zero_and_in_eval():
    x = torch.randn(7, 5)
    plain = _linear()
    layer = MixoutLinear(_linear(), p=0.0).train()
    assert torch.equal(layer(x), plain(x))
    layer = MixoutLinear(_linear(), p=0.5, mix_bias=True)
    with torch.no_grad():
        layer.weight.add_(1.0)
        layer.bias.add_(1.0)
        plain.weight.add_(1.0)
        plain.bias.add_(1.0)
    layer.eval()
    assert torch.equal(layer(x), layer(x)) and torch.equal(layer(x), plain(x))
    layer.train()
    assert not torch.equal(layer(x), plain(x))


def test_mixout_layer_keeps_parameters_and_targets_follow_to():
    linear = _linear()
    weight, bias = linear.weight, linear.bias
    layer = MixoutLinear(linear, p=0.2, mix_bias=True)
    assert layer.weight is weight and layer.bias is bias
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert set(layer.state_dict()) == {"weight", "bias"}  # targets are not persistent
    layer.to(torch.float64)
    assert layer.target_weight.dtype == torch.float64 and layer.target_bias.dtype == torch.float64
    assert layer(torch.randn(2, 5, dtype=torch.float64)).dtype == torch.float64
    if torch.cuda.is_available():
        layer.cuda()
        assert layer.target_weight.is_cuda and layer.target_bias.is_cuda


def test_mixout_setup_wraps_encoder_linears_only_and_keeps_state_dict_keys():
    model = make_model(vocab=100)
    keys = set(model.state_dict())
    encoder_linears = [n for n, m in model.encoder.named_modules() if isinstance(m, nn.Linear)]
    pretrained = {n: m.weight.detach().clone() for n, m in model.encoder.named_modules() if isinstance(m, nn.Linear)}
    state = Mixout(p=0.1).build()
    state.setup(model)
    assert sorted(state.wrapped) == sorted(encoder_linears) and "pooler" in state.wrapped
    assert all(isinstance(m, MixoutLinear) for n, m in model.encoder.named_modules() if n in encoder_linears)
    assert not any(isinstance(m, MixoutLinear) for m in model.heads.modules())
    assert set(model.state_dict()) == keys
    with torch.no_grad():  # training moves the weights, not the targets
        for p in model.parameters():
            p.add_(0.1)
    for name, module in model.encoder.named_modules():
        if isinstance(module, MixoutLinear):
            assert torch.equal(module.target_weight, pretrained[name])
    model.to(torch.float64)
    assert all(m.target_weight.dtype == torch.float64 for m in model.modules() if isinstance(m, MixoutLinear))
    # a restored run sets up a fresh model, then loads a checkpoint of the wrapped one
    fresh = make_model(vocab=100, seed=1)
    Mixout(p=0.1).build().setup(fresh)
    fresh.load_state_dict(model.float().state_dict(), strict=True)
    Mixout(p=0.1).build().setup(fresh)  # twice: nothing is wrapped again
    assert sum(isinstance(m, MixoutLinear) for m in fresh.modules()) == len(encoder_linears)


def test_mixout_module_patterns_choose_layers_and_bad_patterns_are_one_line():
    model = make_model(vocab=100)
    state = Mixout(modules=["layers.0.*", "*.ffn.down"]).build()
    state.setup(model)
    assert sorted(state.wrapped) == ["layers.0.attn.proj", "layers.0.attn.qkv", "layers.0.ffn.down",
                                     "layers.0.ffn.up", "layers.1.ffn.down"]
    with pytest.raises(RecipeError) as info:
        Mixout(modules=["layers.9.*"]).build().setup(make_model(vocab=100))
    assert "layers.9.*" in str(info.value) and "\n" not in str(info.value)


def test_mixout_model_trains_and_evaluates_deterministically(tokenizer):
    model = make_model()
    state = Mixout(p=0.5, granularity="element").build()
    state.setup(model)
    state.begin_stage(model)
    batch = make_batch(tokenizer, "sts")
    with torch.no_grad():  # while the weights equal their targets, mixout changes nothing
        for p in model.encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    assert torch.equal(model(batch), model(batch))
    model.train()
    out = model(batch)
    assert not torch.equal(out, model(batch))
    model.heads["sts"].loss(out, batch.labels).backward()
    assert model.encoder.layers[0].attn.qkv.weight.grad.abs().sum() > 0


def test_mixout_targets_are_the_weights_when_its_stage_starts_and_survive_resume(tokenizer):
    """After an earlier stage (MLM) changed the weights, mixout pulls toward those, not the checkpoint's."""
    from mtbert.testing import state_round_trip

    model = make_model()
    state = Mixout(p=0.5).build()
    state.setup(model)
    layer = model.encoder.layers[0].ffn.up
    checkpoint = layer.weight.detach().clone()
    batch = make_batch(tokenizer, "sts")
    model.train()
    torch.manual_seed(0)
    first = model(batch)
    torch.manual_seed(1)
    assert torch.equal(first, model(batch))  # before its stage: inactive, no random mixing at all
    with torch.no_grad():  # "the mlm stage" trains the encoder
        for p in model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state.begin_stage(model)
    assert torch.equal(layer.target_weight, layer.weight) and not torch.equal(layer.target_weight, checkpoint)
    saved = state_round_trip(state.state_dict())
    assert saved["moved"] and saved["active"]
    # --resume: set up (targets = the checkpoint's weights), load the weights, then the state
    twin = make_model()
    resumed = Mixout(p=0.5).build()
    resumed.setup(twin)
    twin.load_state_dict(model.state_dict())
    resumed.load_state_dict(saved)
    assert torch.equal(twin.encoder.layers[0].ffn.up.target_weight, layer.target_weight)
    twin.train()
    torch.manual_seed(7)
    a = model(batch)
    torch.manual_seed(7)
    assert torch.equal(a, twin(batch))


# --------------------------------------------------------------------------- norm penalty
class TwoLayerHead(TaskHeadModule):
    def __init__(self, task):
        super().__init__(task)
        self.first = nn.Linear(2, 2)
        self.second = nn.Linear(2, 1)

    def forward(self, features):
        return self.squeeze_output(self.second(self.first(features.pooled[0])))


def _norm_model():
    head = TwoLayerHead(STS)
    with torch.no_grad():
        head.first.weight.copy_(torch.tensor([[1.0, -3.0], [2.0, 0.5]]))
        head.first.bias.copy_(torch.tensor([4.0, -5.0]))
        head.second.weight.copy_(torch.tensor([[0.0, -2.0]]))
        head.second.bias.copy_(torch.tensor([0.25]))
    other = TwoLayerHead(STS)
    return MultitaskModel(nn.Linear(1, 1), {"sts": head, "para": other}, {})


def _penalty(model, task="sts", **options):
    state = NormPenalty(**options).build()
    state.setup(model)
    ctx = PenaltyContext(model=model, task=task, batch=None, predictions=torch.zeros(1), loss=torch.zeros(()))
    return state.penalty(ctx), state


@pytest.mark.parametrize("norm, reduce, bias, want", [
    ("l1", "joint", False, 1 + 3 + 2 + 0.5 + 0 + 2),
    ("l2", "joint", False, math.sqrt(1 + 9 + 4 + 0.25 + 0 + 4)),
    ("linf", "joint", False, 3.0),
    ("l1", "joint", True, 8.5 + 9 + 0.25),
    ("linf", "joint", True, 5.0),
    ("l2", "sum", False, math.sqrt(14.25) + 2.0),
    ("linf", "sum", False, 3.0 + 2.0),
    ("l2", "sum", True, math.sqrt(14.25) + 2.0 + math.sqrt(41) + 0.25),
])
def test_norm_penalty_matches_hand_computed_norms(norm, reduce, bias, want):
    value, _ = _penalty(_norm_model(), norm=norm, reduce=reduce, bias=bias, weight=0.5)
    assert value.item() == pytest.approx(0.5 * want, rel=1e-6)


def test_linf_gradient_reaches_only_the_largest_weight():
    model = _norm_model()
    value, _ = _penalty(model, norm="linf", weight=0.05)
    value.backward()
    head = model.heads["sts"]
    torch.testing.assert_close(head.first.weight.grad, torch.tensor([[0.0, -0.05], [0.0, 0.0]]))
    assert head.second.weight.grad.abs().sum() == 0 and head.first.bias.grad is None


def test_norm_penalty_only_for_chosen_tasks_and_logs_the_mean():
    model = _norm_model()
    value, state = _penalty(model, task="para", tasks=["sts"])
    assert value is None
    ctx = PenaltyContext(model=model, task="sts", batch=None, predictions=torch.zeros(1), loss=torch.zeros(()))
    state.penalty(ctx)
    state.penalty(ctx)
    assert state.logs() == {"penalty/sts": pytest.approx(0.05 * 3.0)}
    assert NormPenalty(tasks=["sst"]).check_tasks(["sts", "para"]).startswith("tasks: 'sst' is not configured")


# --------------------------------------------------------------------------- registration, recipes
def _plugins(monkeypatch):
    from mtbert.plugins import load_plugins

    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    monkeypatch.delenv("MTBERT_DISABLE_PLUGINS", raising=False)
    return load_plugins([("smart", smart_module), ("mixout", mixout_module), ("norm-penalty", norm_module)])


def _table(regularizers):
    return {"name": "t", "model": {"checkpoint": "random:tiny"}, "tasks": {"sst": {}, "sts": {}},
            "regularizers": regularizers}


def test_regularizers_register_and_validate_in_a_recipe(monkeypatch):
    from mtbert.recipe import validate

    plugins = _plugins(monkeypatch)
    for name, factory in [("smart", Smart), ("mixout", Mixout), ("norm-penalty", NormPenalty)]:
        assert plugins.registry.find("regularizer", name).factory is factory
    recipe = validate(_table([
        {"name": "smart", "tasks": ["sst"], "weight": 5, "norm": "l2"},
        {"name": "mixout", "p": 0.7, "modules": ["layers.*"]},
        {"name": "norm-penalty", "tasks": ["sts"], "norm": "linf"},
    ]), plugins)
    assert [r.name for r in recipe.regularizers] == ["smart", "mixout", "norm-penalty"]
    assert recipe.regularizers[0].options.weight == 5.0
    with pytest.raises(RecipeError) as info:
        validate(_table([{"name": "smart", "tasks": ["sst2"]}, {"name": "mixout", "p": 1.0},
                         {"name": "norm-penalty", "norm": "l3"}, {"name": "smart", "epsilon": 0}]), plugins)
    text = "\n".join(info.value.problems)
    assert "regularizers[0]: 'smart': tasks: 'sst2' is not configured under [tasks] — did you mean 'sst'?" in text
    assert "must be below 1" in text
    assert "regularizers[2].norm" in text and "regularizers[3].epsilon" in text


def test_all_three_run_inside_a_short_real_recipe_and_the_run_restores(tmp_path, data_dir, monkeypatch):
    from mtbert.engine.restore import restore_run
    from mtbert.engine.run import run_recipe
    from mtbert.plugins import set_plugins
    from mtbert.recipe import load_recipe

    plugins = _plugins(monkeypatch)
    set_plugins(plugins)
    threads = torch.get_num_threads()  # the recipe's train.threads = 1 sets it for the process
    try:
        recipe_path = tmp_path / "r.toml"
        recipe_path.write_text(
            'name = "regs"\n[model]\ncheckpoint = "random:tiny"\n'
            '[tasks.sst]\ntrain_limit = 48\ndev_limit = 16\ntest_limit = 8\n[tasks.sts]\ntrain_limit = 48\ndev_limit = 16\ntest_limit = 8\n'
            '[[regularizers]]\nname = "mixout"\np = 0.3\n'
            '[[regularizers]]\nname = "smart"\nbregman_weight = 1.0\nepsilon = 1e-3\n'
            '[[regularizers]]\nname = "norm-penalty"\ntasks = ["sts"]\n'
            '[optim]\nepochs = 1\nbatch_size = 16\n[train]\nprogress = false\npredict = false\nthreads = 1\n'
        )
        recipe = load_recipe(recipe_path, [f"data.dir={json.dumps(str(data_dir))}"], plugins)
        folder, summary = run_recipe(recipe, plugins, out=tmp_path / "run", say=lambda m: None, warn=lambda m: None)
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert lines and math.isfinite(lines[-1]["metrics"]["mean"])
        restored = restore_run(folder, [], plugins)  # set-up again, then the checkpoint loads strictly
        assert any(isinstance(m, MixoutLinear) for m in restored.model.encoder.modules())
    finally:
        set_plugins(None)
        torch.set_num_threads(threads)
