"""The concat-pair input format and the mlp, cosine and pair-classifier heads.

Each head's output is checked against the same computation written out by hand from its
weights (eval mode), each loss against its formula, and each ``check`` against the task and
input combinations it must refuse. The concat-pair encoding is compared with transformers'
``BertTokenizerFast`` on real STS dev pairs, and its segment ids must change the encoder's
output.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mtbert.engine.components import Features
from mtbert.model.bert import BertEncoder
from mtbert.model.config import BertConfig
from mtbert_plugins import head_cosine, head_mlp, head_pair_classifier, input_concat_pair
from mtbert_plugins.head_cosine import CosineHead, scale_cosine
from mtbert_plugins.head_mlp import MLPHead
from mtbert_plugins.head_pair_classifier import PairClassifierHead
from mtbert_plugins.input_concat_pair import ConcatPair
from mtbert_plugins.inputs import SeparatePair, SingleSentence
from mtbert_plugins.tasks_cs224n import PARA, SST, STS

MINE = [("concat-pair", input_concat_pair), ("head-mlp", head_mlp), ("head-cosine", head_cosine),
        ("head-pair-classifier", head_pair_classifier)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def masks(lengths: list[int], width: int) -> torch.Tensor:
    return torch.tensor([[1] * n + [0] * (width - n) for n in lengths])


def features(batch: int, hidden: int, sequences: int, seed: int = 0, width: int = 6) -> Features:
    """Random features whose padding positions hold huge values (so leaking padding shows)."""
    g = torch.Generator().manual_seed(seed)
    hs, ms, ps = [], [], []
    for s in range(sequences):
        lengths = torch.randint(1, width + 1, (batch,), generator=g).tolist()
        m = masks(lengths, width)
        h = torch.randn(batch, width, hidden, generator=g)
        h = torch.where(m.bool().unsqueeze(-1), h, torch.full_like(h, 1e6))
        hs.append(h)
        ms.append(m)
        ps.append(torch.randn(batch, hidden, generator=g))
    return Features(hidden=tuple(hs), masks=tuple(ms), pooled=tuple(ps))


def mean_by_hand(h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    rows = []
    for b in range(h.shape[0]):
        n = int(m[b].sum())
        rows.append(h[b, :n].sum(0) / n)
    return torch.stack(rows)


# --------------------------------------------------------------------------- hybrid-pair
def test_hybrid_pair_is_separate_pair_plus_concat_pair(sts_dev, minilm_dir):
    """Its three sequences are exactly separate-pair's two and concat-pair's one, in inputs and
    in features (real MiniLM, real STS rows), when training and in evaluation."""
    from mtbert.model.tokenizer import BertTokenizer
    from mtbert.model.weights import load_hf_folder
    from mtbert_plugins.input_hybrid_pair import HybridPair

    tokenizer = BertTokenizer.from_folder(minilm_dir)
    rows = list(range(10))
    hybrid, apart, together = HybridPair(), SeparatePair(), ConcatPair()
    batches = [fmt.collate(fmt.encode_examples(tokenizer, sts_dev[:10], 64), rows, "sts", torch.float32)
               for fmt in (hybrid, apart, together)]
    h, a, c = batches
    assert torch.equal(h.labels, a.labels)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(h.inputs[f"{key}_1"], a.inputs[f"{key}_1"])
        assert torch.equal(h.inputs[f"{key}_2"], a.inputs[f"{key}_2"])
        assert torch.equal(h.inputs[f"{key}_3"], c.inputs[key])
    assert h.inputs["token_type_ids_3"].sum() > 0  # segment ids reach the cross sequence

    encoder = load_hf_folder(minilm_dir).encoder.eval()
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            fh, fa, fc = hybrid.encode(encoder, h), apart.encode(encoder, a), together.encode(encoder, c)
            assert fh.num_sequences == 3
            expected = [(fa.hidden[0], fa.masks[0]), (fa.hidden[1], fa.masks[1]), (fc.hidden[0], fc.masks[0])]
            for got, mask, (want, want_mask) in zip(fh.hidden, fh.masks, expected):
                assert torch.equal(mask, want_mask)
                assert torch.allclose(got[mask.bool()], want[want_mask.bool()], atol=1e-5)
            # SMART's path: one embedding tensor per sequence replaces the word lookup
            embeds = tuple(encoder.embed_words(s["input_ids"]) for s in hybrid.sequences(h))
            again = hybrid.encode(encoder, h, inputs_embeds=embeds)
            for got, want, mask in zip(again.hidden, fh.hidden, fh.masks):
                assert torch.allclose(got[mask.bool()], want[mask.bool()], atol=1e-5)


def test_cross_view_feeds_the_head_and_the_views_are_checked():
    from mtbert.engine.heads import check_pair_views
    from mtbert_plugins.head_linear import LinearHead
    from mtbert_plugins.input_hybrid_pair import HybridPair

    head = LinearHead(pair=["abs-diff", "cross"], dropout=0.0).build(8, PARA, HybridPair()).eval()
    feats = features(3, 8, 3, seed=4)
    u, v, cross = (mean_by_hand(feats.hidden[i], feats.masks[i]) for i in range(3))
    expected = torch.cat([(u - v).abs(), cross], -1) @ head.linear.weight.T + head.linear.bias
    assert torch.allclose(head(feats), expected.squeeze(-1), atol=1e-5)
    assert MLPHead(hidden=[4], pair=["u", "cross"]).build(8, STS, HybridPair()).eval()(feats).shape == (3,)

    assert check_pair_views(["u", "cross"], HybridPair()) is None
    assert "hybrid-pair" in check_pair_views(["u", "cross"], SeparatePair())
    assert "add \"cross\"" in check_pair_views(["u", "v"], HybridPair())
    assert check_pair_views(["u", "cross"], SingleSentence()) is None  # single sentences ignore pair views
    assert check_pair_views([], SeparatePair()).startswith("pair needs at least one")
    for refused in (PairClassifierHead(pair=["u", "cross"]).check(PARA, SeparatePair()),
                    PairClassifierHead().check(PARA, HybridPair()), LinearHead(pair=["u", "v"]).check(STS, HybridPair())):
        assert refused and "\n" not in refused
    with pytest.raises(ValueError, match="hybrid-pair"):
        LinearHead(pair=["cross"]).build(8, PARA, SeparatePair())(features(2, 8, 2))


# --------------------------------------------------------------------------- concat-pair
@pytest.fixture(scope="module")
def sts_dev(data_dir):
    return STS.read(data_dir / "sts-dev.csv", "dev").examples[:64]


# --------------------------------------------------------------------------- separate-pair
@pytest.mark.parametrize("unpad", ["always", "never"])
def test_separate_pair_one_call_equals_two_calls(sts_dev, minilm_dir, unpad):
    """Both sentences go through the encoder in one call; features, SMART's embeddings path and
    gradients equal encoding each side on its own (real MiniLM, real STS rows of unequal lengths)."""
    from mtbert.model.weights import load_hf_folder
    from mtbert.model.tokenizer import BertTokenizer

    fmt = SeparatePair()
    encoded = fmt.encode_examples(BertTokenizer.from_folder(minilm_dir), sts_dev[:12], 64)
    batch = fmt.collate(encoded, list(range(12)), "sts", torch.float32)
    assert batch.inputs["input_ids_1"].shape[1] != batch.inputs["input_ids_2"].shape[1]  # the padding path is used
    encoder = load_hf_folder(minilm_dir).encoder.eval()
    encoder.unpad = unpad

    def separately(embeds=None):
        outs = [encoder(**s) if embeds is None else encoder(attention_mask=s["attention_mask"],
                                                             token_type_ids=s["token_type_ids"], inputs_embeds=e)
                for s, e in zip(fmt.sequences(batch), embeds or (None, None))]
        return [o.last_hidden_state for o in outs], [o.pooler_output for o in outs]

    feats = fmt.encode(encoder, batch)
    hidden, pooled = separately()
    for side in range(2):
        real = feats.masks[side].bool()
        assert feats.hidden[side].shape == hidden[side].shape
        assert torch.allclose(feats.hidden[side][real], hidden[side][real], atol=1e-5)
        assert torch.allclose(feats.pooled[side], pooled[side], atol=1e-5)
        assert feats.masks[side] is batch.inputs[f"attention_mask_{side + 1}"]
    embeds = tuple(encoder.embed_words(s["input_ids"]) for s in fmt.sequences(batch))
    with_embeds = fmt.encode(encoder, batch, inputs_embeds=embeds)
    with torch.inference_mode():  # evaluation encodes each side in its own call
        apart = fmt.encode(encoder, batch)
    for side in range(2):
        real = feats.masks[side].bool()
        assert torch.allclose(with_embeds.hidden[side][real], feats.hidden[side][real], atol=1e-5)
        assert apart.hidden[side].shape == hidden[side].shape
        assert torch.allclose(apart.hidden[side][real], feats.hidden[side][real], atol=1e-5)

    def grads(fn):
        encoder.zero_grad(set_to_none=True)
        h = fn()
        sum((x[m.bool()] ** 2).sum() for x, m in zip(h, feats.masks)).backward()
        return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    joint = grads(lambda: fmt.encode(encoder, batch).hidden)
    apart = grads(lambda: separately()[0])
    assert joint.keys() == apart.keys()
    for name in joint:
        scale = apart[name].abs().max().clamp_min(1.0)
        assert (joint[name] - apart[name]).abs().max() <= 1e-5 * scale, name



@pytest.mark.parametrize("max_length", [512, 24])
def test_concat_pair_matches_transformers_pair_encoding(sts_dev, minilm_dir, max_length):
    from transformers import BertTokenizerFast

    from mtbert.model.tokenizer import BertTokenizer

    ours = ConcatPair().encode_examples(BertTokenizer.from_folder(minilm_dir), sts_dev, max_length)
    hf = BertTokenizerFast.from_pretrained(str(minilm_dir))
    ref = hf([e.texts[0] for e in sts_dev], [e.texts[1] for e in sts_dev], truncation="longest_first",
             max_length=max_length)
    assert ours.sequences[0] == ref["input_ids"]
    assert ours.type_ids[0] == ref["token_type_ids"]
    assert ours.ids == [e.id for e in sts_dev] and ours.labels == [e.label for e in sts_dev]
    if max_length == 24:  # truncation really happened, longest side first
        assert max(len(s) for s in ours.sequences[0]) == 24
    sep = hf.sep_token_id
    for ids, types in zip(ours.sequences[0], ours.type_ids[0]):
        first_sep = ids.index(sep)
        assert ids[0] == hf.cls_token_id and ids[-1] == sep and ids.count(sep) == 2
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)


def test_segment_ids_reach_the_encoder(sts_dev, minilm_dir):
    from mtbert.model.tokenizer import BertTokenizer

    fmt = ConcatPair()
    encoded = fmt.encode_examples(BertTokenizer.from_folder(minilm_dir), sts_dev[:6], 64)
    batch = fmt.collate(encoded, [0, 1, 2, 3, 4, 5], "sts", torch.float32)
    inputs = batch.inputs
    assert batch.labels.dtype == torch.float32
    assert torch.equal(batch.labels, torch.tensor([e.label for e in sts_dev[:6]]))
    # Padding is segment 0 and masked; every real row has segment-1 tokens.
    assert torch.all(inputs["token_type_ids"][inputs["attention_mask"] == 0] == 0)
    assert torch.all(inputs["token_type_ids"].sum(1) > 0)
    for row in range(6):
        n = len(encoded.sequences[0][row])
        assert inputs["input_ids"][row, :n].tolist() == encoded.sequences[0][row]
        assert inputs["token_type_ids"][row, :n].tolist() == encoded.type_ids[0][row]

    torch.manual_seed(0)
    enc = BertEncoder(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32)).eval()
    feats = fmt.encode(enc, batch)
    assert feats.num_sequences == 1 and feats.masks[0] is inputs["attention_mask"]
    direct = enc(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    assert torch.equal(feats.hidden[0], direct.last_hidden_state) and torch.equal(feats.pooled[0], direct.pooler_output)
    zeroed = enc(inputs["input_ids"], inputs["attention_mask"], torch.zeros_like(inputs["token_type_ids"]))
    real = inputs["attention_mask"].bool()
    assert (feats.hidden[0][real] - zeroed.last_hidden_state[real]).abs().max() > 1e-3
    # Segment-0 positions differ too: attention mixes the segment-1 tokens into them.
    first = real & (inputs["token_type_ids"] == 0)
    assert (feats.hidden[0][first] - zeroed.last_hidden_state[first]).abs().max() > 1e-4
    # inputs_embeds (SMART's path) replaces only the word lookup: the same output.
    embeds = (enc.embed_words(inputs["input_ids"]),)
    assert torch.allclose(fmt.encode(enc, batch, inputs_embeds=embeds).hidden[0], feats.hidden[0], atol=1e-6)
    assert fmt.sequences(batch)[0]["token_type_ids"] is inputs["token_type_ids"]


def test_concat_pair_refuses_single_sentences():
    assert "single sentences" in ConcatPair().check(SST)
    assert ConcatPair().check(PARA) is None and ConcatPair().check(STS) is None


def test_unlabelled_split_gives_no_labels(minilm_dir):
    from mtbert.data.readers import Example
    from mtbert.model.tokenizer import BertTokenizer

    examples = [Example(id="a", texts=("one", "two"), label=None, line=2)]
    encoded = ConcatPair().encode_examples(BertTokenizer.from_folder(minilm_dir), examples, 32)
    assert ConcatPair().collate(encoded, [0], "para", torch.float32).labels is None


# --------------------------------------------------------------------------- mlp
def test_mlp_layers_forward_and_loss_by_hand():
    opts = MLPHead(hidden=[6, 4], activation="leaky_relu", negative_slope=0.2, dropout=[0.0, 0.5, 0.25],
                   class_weights=[1.0, 2.0, 3.0, 4.0, 5.0])
    assert opts.check(SST, SingleSentence()) is None
    head = opts.build(8, SST, SingleSentence()).eval()
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(8, 6), (6, 4), (4, 5)]
    assert [m.p for m in head.mlp if isinstance(m, torch.nn.Dropout)] == [0.0, 0.5, 0.25]
    feats = features(5, 8, 1)
    out = head(feats)
    assert out.shape == (5, 5)

    x = mean_by_hand(feats.hidden[0], feats.masks[0])
    for i, lin in enumerate(linears):
        x = x @ lin.weight.T + lin.bias
        if i < 2:
            x = torch.where(x > 0, x, 0.2 * x)
    assert torch.allclose(out, x, atol=1e-5)

    labels = torch.tensor([0, 4, 2, 2, 1])
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])[labels]
    logp = torch.log_softmax(x, -1)[torch.arange(5), labels]
    assert torch.allclose(head.loss(out, labels), -(w * logp).sum() / w.sum(), atol=1e-5)
    assert torch.equal(head.predict(out), x.argmax(-1))


@pytest.mark.parametrize("activation,fn", [("relu", torch.relu), ("gelu", F.gelu), ("tanh", torch.tanh)])
def test_mlp_activations(activation, fn):
    head = MLPHead(hidden=[3], activation=activation, dropout=0.0).build(8, STS, ConcatPair()).eval()
    feats = features(4, 8, 1, seed=1)
    first, last = head.mlp[1], head.mlp[4]
    x = mean_by_hand(feats.hidden[0], feats.masks[0])
    expected = (fn(x @ first.weight.T + first.bias) @ last.weight.T + last.bias).squeeze(-1)
    out = head(feats)
    assert out.shape == (4,) and torch.allclose(out, expected, atol=1e-5)
    labels = torch.tensor([0.0, 1.5, 4.0, 5.0])
    assert torch.allclose(head.loss(out, labels), ((expected - labels) ** 2).mean(), atol=1e-5)
    assert torch.all(head.predict(out + 100) == 5.0)


def test_mlp_pair_features_for_separate_pairs_and_binary_output():
    head = MLPHead(hidden=[5], pair=["u", "abs-diff", "product"], dropout=0.0).build(8, PARA, SeparatePair()).eval()
    assert head.mlp[1].in_features == 24
    feats = features(3, 8, 2, seed=2)
    u, v = mean_by_hand(feats.hidden[0], feats.masks[0]), mean_by_hand(feats.hidden[1], feats.masks[1])
    z = torch.cat([u, (u - v).abs(), u * v], -1)
    expected = (torch.relu(z @ head.mlp[1].weight.T + head.mlp[1].bias) @ head.mlp[4].weight.T + head.mlp[4].bias)
    out = head(feats)
    assert out.shape == (3,) and torch.allclose(out, expected.squeeze(-1), atol=1e-5)
    labels = torch.tensor([1.0, 0.0, 1.0])
    assert torch.allclose(head.loss(out, labels), F.binary_cross_entropy_with_logits(expected.squeeze(-1), labels))


def swapped(feats: Features) -> Features:
    return Features(hidden=feats.hidden[::-1], masks=feats.masks[::-1], pooled=feats.pooled[::-1])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["linear", "mlp", "pair-classifier"]),
       task=st.sampled_from(["para", "sts"]))
def test_order_free_pair_views_make_the_head_symmetric(seed, kind, task):
    """With ``pair = ["sum", "abs-diff", "product"]`` every pair head gives f(a, b) = f(b, a)
    exactly; with Sentence-BERT's default views (u and v in order) it does not."""
    from mtbert_plugins.head_linear import LinearHead

    spec = {"para": PARA, "sts": STS}[task]
    torch.manual_seed(seed)
    make = {"linear": lambda pair: LinearHead(pair=pair), "mlp": lambda pair: MLPHead(hidden=[6], pair=pair),
            "pair-classifier": lambda pair: PairClassifierHead(pair=pair)}[kind]
    feats = features(4, 8, 2, seed=seed)
    free = make(["sum", "abs-diff", "product"]).build(8, spec, SeparatePair()).eval()
    assert torch.equal(free(feats), free(swapped(feats)))
    ordered = make(["u", "v", "abs-diff", "product"]).build(8, spec, SeparatePair()).eval()
    assert not torch.allclose(ordered(feats), ordered(swapped(feats)))


def test_sum_view_is_u_plus_v():
    from mtbert.engine.heads import input_width, pair_features

    u, v = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(pair_features(u, v, ["sum", "product"]), torch.cat([u + v, u * v], -1))
    assert input_width(4, 2, ["sum", "abs-diff", "product"]) == 12


@pytest.mark.parametrize("pooling", ["cls", "pooler", "mean"])
def test_pooling_options(pooling):
    feats = features(4, 8, 1, seed=3)
    expected_input = {"cls": feats.hidden[0][:, 0], "pooler": feats.pooled[0],
                      "mean": mean_by_hand(feats.hidden[0], feats.masks[0])}[pooling]
    head = MLPHead(hidden=[], pooling=pooling, dropout=0.0).build(8, SST, SingleSentence()).eval()
    lin = head.mlp[1]
    assert torch.allclose(head(feats), expected_input @ lin.weight.T + lin.bias, atol=1e-5)
    pair = PairClassifierHead(pooling=pooling, pair=["u"], dropout=0.0).build(8, SST, SeparatePair()).eval()
    two = features(4, 8, 2, seed=3)
    lin = pair.mlp[1]
    want = {"cls": two.hidden[0][:, 0], "pooler": two.pooled[0], "mean": mean_by_hand(two.hidden[0], two.masks[0])}[pooling]
    assert torch.allclose(pair(two), want @ lin.weight.T + lin.bias, atol=1e-5)


def test_mlp_check_refusals():
    assert "dropout has 2 numbers" in MLPHead(hidden=[4, 4], dropout=[0.1, 0.2]).check(SST, SingleSentence())
    assert "class_weights needs 5" in MLPHead(class_weights=[1.0, 1.0]).check(SST, SingleSentence())
    assert "classification" in MLPHead(class_weights=[1.0, 1.0]).check(STS, SeparatePair())
    assert "pair needs" in MLPHead(pair=[]).check(PARA, SeparatePair())
    assert MLPHead(hidden=[4, 4], dropout=[0.1, 0.2, 0.3]).check(SST, SingleSentence()) is None


# --------------------------------------------------------------------------- cosine
@pytest.mark.parametrize("scale", ["affine", "positive"])
def test_cosine_head_is_the_scaled_cosine_with_mse(scale):
    head = CosineHead(scale=scale).build(8, STS, SeparatePair()).eval()
    assert not list(head.parameters())  # Sentence-BERT's head has no weights by default
    feats = features(6, 8, 2, seed=4)
    u, v = mean_by_hand(feats.hidden[0], feats.masks[0]), mean_by_hand(feats.hidden[1], feats.masks[1])
    cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
    expected = 2.5 * (cos + 1) if scale == "affine" else 5.0 * cos
    out = head(feats)
    assert out.shape == (6,) and torch.allclose(out, expected, atol=1e-5)
    labels = torch.tensor([0.0, 1.0, 2.5, 3.2, 4.8, 5.0])
    assert torch.allclose(head.loss(out, labels), ((expected - labels) ** 2).mean(), atol=1e-5)
    assert torch.allclose(head.predict(out), expected.clamp(0, 5), atol=1e-5)


def test_cosine_positive_scale_keeps_gradient_of_negative_cosines_and_predict_clamps():
    head = CosineHead(scale="positive").build(4, STS, SeparatePair())
    u = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    v = torch.tensor([[-1.0, 0.2, 0.0, 0.0]], requires_grad=True)
    m = torch.ones(1, 1, dtype=torch.long)
    feats = Features(hidden=(u[:, None], v[:, None]), masks=(m, m), pooled=(u, v))
    out = head(feats)
    assert out.item() < 0  # cosine < 0 is not clamped in the loss (Sentence-BERT's MSE on cos vs label/5)
    head.loss(out, torch.tensor([3.0])).backward()
    assert v.grad.abs().sum() > 0
    assert head.predict(out).item() == 0.0


def test_cosine_projection_layer_like_seed_000():
    head = CosineHead(projection=[5], activation="tanh").build(8, STS, SeparatePair()).eval()
    lin = head.projection[0]
    feats = features(4, 8, 2, seed=5)
    u = torch.tanh(mean_by_hand(feats.hidden[0], feats.masks[0]) @ lin.weight.T + lin.bias)
    v = torch.tanh(mean_by_hand(feats.hidden[1], feats.masks[1]) @ lin.weight.T + lin.bias)
    expected = 2.5 * (F.cosine_similarity(u, v, dim=-1) + 1)
    assert torch.allclose(head(feats), expected, atol=1e-5)
    linear_only = CosineHead(projection=[5, 3], activation="none").build(8, STS, SeparatePair())
    assert [type(m).__name__ for m in linear_only.projection] == ["Linear", "Linear"]


def test_cosine_check_refusals_are_one_line():
    opts = CosineHead()
    for task, fmt, words in [(SST, SingleSentence(), "multiclass"), (PARA, SeparatePair(), "binary"),
                             (STS, ConcatPair(), "separate-pair")]:
        reason = opts.check(task, fmt)
        assert reason and words in reason and "\n" not in reason
    assert opts.check(STS, SeparatePair()) is None and opts.check(STS, None) is None


@settings(max_examples=40, deadline=None)
@given(cos=st.floats(-1, 1), low=st.floats(-5, 5), span=st.floats(0.5, 10))
def test_affine_scale_maps_the_cosine_range_onto_the_label_range(cos, low, span):
    high = low + span
    c = torch.tensor([-1.0, cos, 1.0], dtype=torch.float64)
    s = scale_cosine(c, low, high, "affine")
    assert math.isclose(s[0].item(), low, abs_tol=1e-9) and math.isclose(s[2].item(), high, abs_tol=1e-9)
    assert low - 1e-9 <= s[1].item() <= high + 1e-9
    p = scale_cosine(torch.tensor([0.0, 1.0], dtype=torch.float64), low, high, "positive")
    assert math.isclose(p[0].item(), low, abs_tol=1e-9) and math.isclose(p[1].item(), high, abs_tol=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), factor=st.floats(0.1, 10), pad_value=st.floats(-1e4, 1e4))
def test_cosine_ignores_padding_and_scale_of_the_embeddings(seed, factor, pad_value):
    head = CosineHead().build(8, STS, SeparatePair()).eval()
    feats = features(3, 8, 2, seed=seed)
    base = head(feats)
    changed = Features(
        hidden=tuple(torch.where(m.bool().unsqueeze(-1), h * factor, torch.full_like(h, pad_value))
                     for h, m in zip(feats.hidden, feats.masks)),
        masks=feats.masks, pooled=feats.pooled)
    assert torch.allclose(head(changed), base, atol=1e-4)


# --------------------------------------------------------------------------- pair classifier
def test_pair_classifier_features_hidden_layer_and_weighted_binary_loss():
    opts = PairClassifierHead(hidden=[7], activation="gelu", dropout=0.0, class_weights=[1.0, 3.0])
    assert opts.check(PARA, SeparatePair()) is None
    head = opts.build(8, PARA, SeparatePair()).eval()
    feats = features(5, 8, 2, seed=6)
    u, v = mean_by_hand(feats.hidden[0], feats.masks[0]), mean_by_hand(feats.hidden[1], feats.masks[1])
    z = torch.cat([u, v, (u - v).abs(), u * v], -1)
    first, last = head.mlp[1], head.mlp[4]
    assert first.in_features == 32
    logit = (F.gelu(z @ first.weight.T + first.bias) @ last.weight.T + last.bias).squeeze(-1)
    out = head(feats)
    assert out.shape == (5,) and torch.allclose(out, logit, atol=1e-5)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    w = torch.where(y == 1, 3.0, 1.0)
    bce = -(y * F.logsigmoid(logit) + (1 - y) * F.logsigmoid(-logit))
    assert torch.allclose(head.loss(out, y), (w * bce).sum() / w.sum(), atol=1e-5)
    assert torch.equal(head.predict(out), (logit > 0).long())


def test_pair_classifier_outputs_per_label_kind():
    feats = features(4, 8, 2, seed=7)
    assert PairClassifierHead().build(8, STS, SeparatePair())(feats).shape == (4,)
    assert PairClassifierHead(pair=["u", "v", "abs-diff"]).build(8, PARA, SeparatePair()).mlp[1].in_features == 24
    # a multiclass pair task
    import attrs

    nli = attrs.evolve(STS, name="nli", label_kind="multiclass", num_classes=3, label_range=None)
    assert PairClassifierHead().build(8, nli, SeparatePair())(feats).shape == (4, 3)


def test_pair_classifier_refuses_single_sentences_and_concatenated_pairs():
    opts = PairClassifierHead()
    assert "single sentences" in opts.check(SST, SingleSentence())
    assert "separate-pair" in opts.check(PARA, ConcatPair())
    assert "dropout" in PairClassifierHead(hidden=[4], dropout=[0.1]).check(PARA, SeparatePair())
    one = features(2, 8, 1)
    with pytest.raises(ValueError, match="two separately encoded"):
        opts.build(8, PARA, SeparatePair())(one)


# --------------------------------------------------------------------------- registration and recipes
@pytest.fixture
def my_plugins(monkeypatch):
    from mtbert.plugins import load_plugins, set_plugins

    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    monkeypatch.delenv("MTBERT_DISABLE_PLUGINS", raising=False)
    plugins = load_plugins(MINE)
    set_plugins(plugins)
    yield plugins
    set_plugins(None)


def test_components_register_under_their_names():
    from mtbert.plugins import load_plugins

    plugins = load_plugins(MINE, entry_points=False)
    assert plugins.registry.find("input_format", "concat-pair").factory is ConcatPair
    assert plugins.registry.find("head", "mlp").factory is MLPHead
    assert plugins.registry.find("head", "cosine").factory is CosineHead
    assert plugins.registry.find("head", "pair-classifier").factory is PairClassifierHead
    assert not plugins.registry.failures


def _table(data_dir: Path | None = None) -> dict:
    table = {
        "name": "heads", "seed": 3, "model": {"checkpoint": "random:tiny"},
        "tasks": {
            "sst": {"head": {"name": "mlp", "hidden": [16], "activation": "gelu", "dropout": [0.1, 0.2]},
                    "train_limit": 48, "dev_limit": 32, "test_limit": 8},
            "para": {"input": "concat-pair", "head": {"name": "mlp", "hidden": [8], "class_weights": [1.0, 1.5]},
                     "train_limit": 48, "dev_limit": 32},
            "sts": {"head": {"name": "cosine", "projection": [16]}, "train_limit": 48, "dev_limit": 32,
                    "test_limit": 8},
        },
        "optim": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
        "train": {"progress": False},
    }
    if data_dir is not None:
        table["data"] = {"dir": str(data_dir)}
    return table


def test_recipes_using_the_components_validate_and_refuse(my_plugins):
    from mtbert.errors import RecipeError
    from mtbert.recipe import validate

    recipe = validate(_table(), my_plugins)
    assert recipe.tasks["para"].input.name == "concat-pair" and recipe.tasks["sts"].head.name == "cosine"
    assert recipe.tasks["sst"].head.options.dropout == [0.1, 0.2]
    bad = _table()
    bad["tasks"]["sts"]["input"] = "concat-pair"
    bad["tasks"]["sst"]["input"] = "concat-pair"
    bad["tasks"]["para"]["head"] = {"name": "cosine", "scale": "cosine"}
    with pytest.raises(RecipeError) as info:
        validate(bad, my_plugins)
    text = str(info.value)
    assert "tasks.sts.head: 'cosine' cannot serve task sts" in text
    assert "tasks.sst.input: 'concat-pair' cannot serve task sst" in text
    assert "tasks.para.head.scale" in text


def test_short_real_run_with_the_components(tmp_path, data_dir, minilm_dir, my_plugins):
    from mtbert.engine.run import run_recipe
    from mtbert.recipe import validate

    recipe = validate(_table(data_dir), my_plugins)
    folder, summary = run_recipe(recipe, my_plugins, out=tmp_path / "run", say=lambda m: None, warn=lambda m: None)
    metrics = summary["last"]["dev"]
    assert {"sst_acc", "para_acc", "sts_pearson", "mean"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    sts = (folder / "predictions" / "sts-dev-output.csv").read_text().splitlines()[1:]
    scores = [float(line.split(",")[1]) for line in sts]
    assert len(scores) == 32 and all(0.0 <= s <= 5.0 for s in scores)
    info = json.loads((folder / "run.json").read_text())
    para = info["components"]["tasks"]["para"]
    assert para["input"] == "concat-pair" and para["head"] == "mlp" and "head-mlp" in para["head_provider"]
