"""The encoder against transformers' BertModel, its two attention paths, and HF-format I/O.

Numerical notes. Our SDPA path and transformers' "sdpa" call the same kernel, and our math
path computes what transformers' "eager" computes, so those pairs agree to 1e-5 (in practice
bit for bit) at every position. Across kernels (fused SDPA against explicit softmax) the
outputs agree to 1e-5 at real tokens and in the pooler; at padding positions float32
round-off grows through the layers to a few 1e-5 for *both* kernels alike (measured against
a float64 reference), so there we allow 2e-4. Padding positions are never used downstream.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from mtbert.errors import CheckpointError
from mtbert.model import BertConfig, BertEncoder, BertTokenizer, EncoderOutput, load_hf_folder
from mtbert.model import bert as bert_module
from mtbert.model.tokenizer import pad_batch
from mtbert.model.weights import encoder_state_to_hf, save_hf_folder

TOL = 1e-5
PAD_TOL = 2e-4


# --------------------------------------------------------------------------- fixtures
def _read_tsv(path: Path, limit: int) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = []
        for row in csv.DictReader(f, delimiter="\t"):
            rows.append(row)
            if len(rows) == limit:
                return rows
    return rows


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    backbone = load_hf_folder(minilm_dir)
    backbone.encoder.eval()
    return backbone


@pytest.fixture(scope="module")
def tokenizer(minilm_dir) -> BertTokenizer:
    return BertTokenizer.from_folder(minilm_dir)


@pytest.fixture(scope="module")
def sst_batch(data_dir, tokenizer) -> dict[str, torch.Tensor]:
    rows = _read_tsv(data_dir / "ids-sst-dev.csv", 32)
    batch = tokenizer.pad(tokenizer.encode([r["sentence"] for r in rows]))
    assert batch["attention_mask"].eq(0).any(), "the batch must contain padding"
    return batch


@pytest.fixture(scope="module")
def pair_batch(data_dir, tokenizer) -> dict[str, torch.Tensor]:
    rows = _read_tsv(data_dir / "sts-dev.csv", 16)
    encoded = tokenizer.encode_pairs([r["sentence1"] for r in rows], [r["sentence2"] for r in rows])
    batch = tokenizer.pad([ids for ids, _ in encoded], [types for _, types in encoded])
    assert batch["token_type_ids"].eq(1).any()
    return batch


@pytest.fixture(scope="module")
def hf_models(minilm_dir):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return {
        impl: transformers.BertModel.from_pretrained(minilm_dir, attn_implementation=impl).eval()
        for impl in ("eager", "sdpa")
    }


def _ours(encoder: BertEncoder, batch, kind: str, unpad: str = "never") -> EncoderOutput:
    """Our encoder's outputs; padded by default, the layout transformers computes in."""
    encoder.set_attention(kind)
    saved, encoder.unpad = encoder.unpad, unpad
    try:
        with torch.no_grad():
            return encoder(**batch)
    finally:
        encoder.unpad = saved


def _theirs(model, batch):
    with torch.no_grad():
        return model(**batch)


def _max_diff(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    d = (a - b).abs()
    return (d[where] if where is not None else d).max().item()


def _assert_grads_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float, atol: float) -> None:
    """|a - b| <= atol + rtol * |b| per parameter; cheaper than allclose on the 30k-row embedding."""
    assert a.keys() == b.keys()
    for name, x in a.items():
        y = b[name]
        if not torch.equal(x, y):
            excess = (x - y).abs_().sub_(y.abs().mul_(rtol)).max().item()
            assert excess <= atol, f"{name}: gradients differ by {excess:.3g} beyond rtol"


def _tiny_config(**changes) -> BertConfig:
    base = BertConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )
    return base.evolve(**changes)


# --------------------------------------------------------------------------- (1) parity
@pytest.mark.parametrize("ours, theirs", [("sdpa", "sdpa"), ("math", "eager")])
def test_matches_transformers_at_every_position(minilm, hf_models, sst_batch, ours, theirs):
    out = _ours(minilm.encoder, sst_batch, ours)
    ref = _theirs(hf_models[theirs], sst_batch)
    keep = sst_batch["attention_mask"].bool()
    assert _max_diff(out.last_hidden_state, ref.last_hidden_state, keep) <= TOL
    assert _max_diff(out.last_hidden_state, ref.last_hidden_state) <= TOL
    assert _max_diff(out.pooler_output, ref.pooler_output) <= TOL


@pytest.mark.parametrize("ours, theirs", [("sdpa", "sdpa"), ("math", "eager")])
def test_packed_real_tokens_match_transformers_and_padding_is_zero(minilm, hf_models, sst_batch, ours, theirs):
    """``unpad = "always"``: the token-wise layers run on real tokens only; same outputs there."""
    out = _ours(minilm.encoder, sst_batch, ours, unpad="always")
    ref = _theirs(hf_models[theirs], sst_batch)
    keep = sst_batch["attention_mask"].bool()
    assert not keep.all()  # the batch has padding to skip
    assert _max_diff(out.last_hidden_state, ref.last_hidden_state, keep) <= TOL
    assert _max_diff(out.pooler_output, ref.pooler_output) <= TOL
    assert out.last_hidden_state[~keep].abs().max().item() == 0.0


@pytest.mark.parametrize("ours, theirs", [("sdpa", "eager"), ("math", "sdpa")])
def test_matches_transformers_across_kernels(minilm, hf_models, sst_batch, ours, theirs):
    out = _ours(minilm.encoder, sst_batch, ours)
    ref = _theirs(hf_models[theirs], sst_batch)
    keep = sst_batch["attention_mask"].bool()
    assert _max_diff(out.last_hidden_state, ref.last_hidden_state, keep) <= TOL
    assert _max_diff(out.last_hidden_state, ref.last_hidden_state) <= PAD_TOL
    assert _max_diff(out.pooler_output, ref.pooler_output) <= TOL


# --------------------------------------------------------------------------- (2) segments
@pytest.mark.parametrize("ours, theirs", [("sdpa", "sdpa"), ("math", "eager")])
def test_token_type_ids_match_transformers_on_pairs(minilm, hf_models, pair_batch, ours, theirs):
    out = _ours(minilm.encoder, pair_batch, ours)
    ref = _theirs(hf_models[theirs], pair_batch)
    keep = pair_batch["attention_mask"].bool()
    assert _max_diff(out.last_hidden_state, ref.last_hidden_state, keep) <= TOL
    assert _max_diff(out.pooler_output, ref.pooler_output) <= TOL


def test_token_type_ids_change_the_output(minilm, pair_batch):
    with_types = _ours(minilm.encoder, pair_batch, "sdpa")
    no_types = {**pair_batch, "token_type_ids": torch.zeros_like(pair_batch["token_type_ids"])}
    without = _ours(minilm.encoder, no_types, "sdpa")
    keep = pair_batch["attention_mask"].bool()
    assert _max_diff(with_types.last_hidden_state, without.last_hidden_state, keep) > 1e-2
    # Omitting token_type_ids means segment 0 everywhere.
    omitted = _ours(minilm.encoder, {k: v for k, v in no_types.items() if k != "token_type_ids"}, "sdpa")
    assert _max_diff(omitted.last_hidden_state, without.last_hidden_state) <= 1e-6


# --------------------------------------------------------------------------- (3) kernels, padding
def test_sdpa_and_math_agree(minilm, sst_batch):
    keep = sst_batch["attention_mask"].bool()
    fused = _ours(minilm.encoder, sst_batch, "sdpa")
    explicit = _ours(minilm.encoder, sst_batch, "math")
    assert _max_diff(fused.last_hidden_state, explicit.last_hidden_state, keep) <= TOL
    assert _max_diff(fused.last_hidden_state, explicit.last_hidden_state) <= PAD_TOL
    assert _max_diff(fused.pooler_output, explicit.pooler_output) <= TOL


def test_sdpa_and_math_agree_in_training_without_dropout(minilm, sst_batch):
    config = minilm.config.evolve(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    encoder = BertEncoder(config)
    encoder.load_state_dict(minilm.encoder.state_dict())
    encoder.train()
    batch = {k: v[:4] for k, v in sst_batch.items()}
    keep = batch["attention_mask"].bool()
    results = {}
    for kind in ("sdpa", "math"):
        encoder.zero_grad()
        out = encoder.set_attention(kind)(**batch)
        (out.last_hidden_state[keep].square().mean() + out.pooler_output.sum()).backward()
        grads = {n: p.grad.clone() for n, p in encoder.named_parameters()}
        results[kind] = (out, grads)
    (a, grads_a), (b, grads_b) = results["sdpa"], results["math"]
    assert _max_diff(a.last_hidden_state, b.last_hidden_state, keep) <= TOL
    assert _max_diff(a.pooler_output, b.pooler_output) <= TOL
    _assert_grads_close(grads_a, grads_b, rtol=1e-3, atol=1e-5)
    # Dropout off: training mode computes what eval mode computes.
    evaluated = _ours(minilm.encoder, batch, "math")
    assert _max_diff(b.last_hidden_state, evaluated.last_hidden_state, keep) <= 1e-6


@pytest.mark.parametrize("kind", ["sdpa", "math"])
def test_extra_padding_changes_nothing(minilm, tokenizer, data_dir, kind):
    rows = _read_tsv(data_dir / "ids-sst-dev.csv", 12)
    ids = tokenizer.encode([r["sentence"] for r in rows])
    tight = pad_batch(ids)
    loose = pad_batch(ids, pad_to=tight["input_ids"].shape[1] + 9)
    a = _ours(minilm.encoder, tight, kind)
    b = _ours(minilm.encoder, loose, kind)
    keep = tight["attention_mask"].bool()
    T = keep.shape[1]
    assert _max_diff(a.last_hidden_state, b.last_hidden_state[:, :T], keep) <= TOL
    assert _max_diff(a.pooler_output, b.pooler_output) <= TOL


_TINY = BertEncoder(_tiny_config(hidden_act="relu")).eval()


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 20), min_size=1, max_size=5),
    extra=st.integers(0, 6),
    seed=st.integers(0, 2**16),
)
def test_kernels_and_padding_on_random_batches(lengths, extra, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = [torch.randint(1, 97, (n,), generator=gen).tolist() for n in lengths]
    types = [[int(i >= n // 2) for i in range(n)] for n in lengths]
    tight = pad_batch(ids, types)
    loose = pad_batch(ids, types, pad_to=max(lengths) + extra)
    keep = tight["attention_mask"].bool()
    T = keep.shape[1]
    with torch.no_grad():
        reference = _TINY.set_attention("math")(**tight)
        for kind in ("sdpa", "math"):
            out = _TINY.set_attention(kind)(**loose)
            assert _max_diff(out.last_hidden_state[:, :T], reference.last_hidden_state, keep) <= TOL
            assert _max_diff(out.pooler_output, reference.pooler_output) <= TOL


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 20), min_size=1, max_size=5),
    extra=st.integers(0, 6),
    seed=st.integers(0, 2**16),
    checkpointing=st.booleans(),
)
def test_packed_and_padded_give_the_same_outputs_and_gradients(lengths, extra, seed, checkpointing):
    """Running the token-wise layers on real tokens only changes no output at a real token, nor a gradient."""
    gen = torch.Generator().manual_seed(seed)
    ids = [torch.randint(1, 97, (n,), generator=gen).tolist() for n in lengths]
    batch = pad_batch(ids, pad_to=max(lengths) + extra)
    keep = batch["attention_mask"].bool()
    encoder = BertEncoder(_tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).train()
    encoder.gradient_checkpointing = checkpointing
    results = []
    for unpad in ("never", "always"):
        encoder.unpad = unpad
        encoder.zero_grad()
        out = encoder(**batch)
        (out.last_hidden_state[keep].square().mean() + out.pooler_output.sum()).backward()
        results.append((out, {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}))
    (padded, padded_grads), (packed, packed_grads) = results
    assert _max_diff(packed.last_hidden_state, padded.last_hidden_state, keep) <= TOL
    assert _max_diff(packed.pooler_output, padded.pooler_output) <= TOL
    assert packed_grads.keys() == padded_grads.keys()
    _assert_grads_close(packed_grads, padded_grads, rtol=1e-4, atol=1e-6)


def test_unpad_auto_packs_cpu_batches_with_enough_padding():
    encoder = BertEncoder(_tiny_config())
    full = torch.ones(4, 20, dtype=torch.long)
    little = full.clone()
    little[0, 19] = 0  # 79 of 80 real: above the threshold
    much = full.clone()
    much[:, 10:] = 0  # half padding
    assert encoder.unpad == "auto"
    assert encoder.packing(full) is None and encoder.packing(little) is None and encoder.packing(None) is None
    packing = encoder.packing(much)
    assert packing is not None and packing.index.tolist() == [r * 20 + c for r in range(4) for c in range(10)]
    encoder.unpad = "always"
    assert encoder.packing(full) is not None
    encoder.unpad = "never"
    assert encoder.packing(much) is None
    with pytest.raises(ValueError, match="unpad must be one of auto, always, never"):
        encoder.unpad = "sometimes"
    with pytest.raises(ValueError, match="unpad must be"):
        BertEncoder(_tiny_config(), unpad="yes")


def test_attention_dropout_only_in_training():
    encoder = BertEncoder(_tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5))
    ids = torch.randint(1, 97, (2, 9))
    for kind in ("sdpa", "math"):
        encoder.set_attention(kind)
        encoder.train()
        with torch.no_grad():
            assert not torch.equal(encoder(ids).last_hidden_state, encoder(ids).last_hidden_state)
        encoder.eval()
        with torch.no_grad():
            assert torch.equal(encoder(ids).last_hidden_state, encoder(ids).last_hidden_state)


def test_attention_switch_validates():
    encoder = BertEncoder(_tiny_config())
    assert encoder.attention == "sdpa"
    encoder.attention = "math"
    assert encoder.set_attention("sdpa") is encoder and encoder.attention == "sdpa"
    with pytest.raises(ValueError, match="sdpa, math"):
        encoder.set_attention("flash")
    with pytest.raises(ValueError, match="attention must be"):
        BertEncoder(_tiny_config(), attention="eager")


# --------------------------------------------------------------------------- (4) inputs_embeds
@pytest.mark.parametrize("kind", ["sdpa", "math"])
def test_inputs_embeds_equal_input_ids(minilm, pair_batch, kind):
    from_ids = _ours(minilm.encoder, pair_batch, kind, unpad=minilm.encoder.unpad)
    embeds = minilm.encoder.embed_words(pair_batch["input_ids"])
    rest = {k: v for k, v in pair_batch.items() if k != "input_ids"}
    with torch.no_grad():
        from_embeds = minilm.encoder(inputs_embeds=embeds, **rest)
    assert torch.equal(from_ids.last_hidden_state, from_embeds.last_hidden_state)
    assert torch.equal(from_ids.pooler_output, from_embeds.pooler_output)


def test_forward_argument_errors():
    encoder = BertEncoder(_tiny_config())
    ids = torch.randint(1, 97, (1, 5))
    with pytest.raises(ValueError, match="exactly one"):
        encoder()
    with pytest.raises(ValueError, match="exactly one"):
        encoder(ids, inputs_embeds=encoder.embed_words(ids))
    with pytest.raises(ValueError, match="max_position_embeddings 64"):
        encoder(torch.randint(1, 97, (1, 65)))


def test_embed_words_feeds_gradients_to_the_word_embeddings():
    encoder = BertEncoder(_tiny_config())
    ids = torch.randint(1, 97, (2, 6))
    embeds = encoder.embed_words(ids)
    encoder(inputs_embeds=embeds).pooler_output.sum().backward()
    assert encoder.word_embeddings.weight.grad is not None
    assert encoder.word_embeddings.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- (5) loading
def _hf_state(minilm_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(minilm_dir / "model.safetensors")


def _folder_with(tmp_path: Path, minilm_dir: Path, state: dict[str, torch.Tensor], *, bin_file: bool = False) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copyfile(minilm_dir / "config.json", folder / "config.json")
    if bin_file:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_pytorch_bin_with_old_names_loads_the_same(tmp_path, minilm_dir, minilm, sst_batch):
    old_style = {}
    for key, tensor in _hf_state(minilm_dir).items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        old_style[f"bert.{key}"] = tensor.clone()
    old_style["cls.predictions.bias"] = torch.zeros(minilm.config.vocab_size)
    old_style["cls.predictions.transform.LayerNorm.gamma"] = torch.ones(minilm.config.hidden_size)
    folder = _folder_with(tmp_path, minilm_dir, old_style, bin_file=True)

    loaded = load_hf_folder(folder)
    assert loaded.warnings == []
    assert set(loaded.extra_state) == {"predictions.bias", "predictions.transform.LayerNorm.weight"}
    loaded.encoder.eval()
    expected = _ours(minilm.encoder, sst_batch, "sdpa")
    actual = _ours(loaded.encoder, sst_batch, "sdpa")
    assert torch.equal(expected.last_hidden_state, actual.last_hidden_state)
    assert torch.equal(expected.pooler_output, actual.pooler_output)


def test_dropout_and_attention_options(minilm_dir):
    loaded = load_hf_folder(minilm_dir, hidden_dropout=0.3, attention_dropout=0.0, attention="math")
    assert loaded.config.hidden_dropout_prob == 0.3
    assert loaded.config.attention_probs_dropout_prob == 0.0
    assert loaded.encoder.attention == "math"
    assert loaded.encoder.layers[-1].dropout.p == 0.3
    assert loaded.encoder.layers[0].attn.dropout_p == 0.0


def test_missing_weight_is_named(tmp_path, minilm_dir):
    state = _hf_state(minilm_dir)
    del state["encoder.layer.3.attention.self.key.weight"]
    folder = _folder_with(tmp_path, minilm_dir, state)
    with pytest.raises(CheckpointError) as info:
        load_hf_folder(folder)
    message = str(info.value)
    assert "encoder.layer.3.attention.self.key.weight" in message
    assert str(folder) in message and "\n" not in message


def test_missing_pooler_is_a_warning(tmp_path, minilm_dir):
    state = {k: v for k, v in _hf_state(minilm_dir).items() if not k.startswith("pooler.")}
    state["classifier.weight"] = torch.zeros(2, 384)
    loaded = load_hf_folder(_folder_with(tmp_path, minilm_dir, state))
    assert len(loaded.warnings) == 2
    assert "pooler is randomly initialised" in loaded.warnings[0]
    assert "classifier.weight" in loaded.warnings[1]


def test_wrong_shape_is_named(tmp_path, minilm_dir):
    state = _hf_state(minilm_dir)
    state["encoder.layer.0.output.dense.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.0\.output\.dense\.bias has shape \(7,\)"):
        load_hf_folder(_folder_with(tmp_path, minilm_dir, state))


def test_missing_and_broken_files(tmp_path, minilm_dir):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_hf_folder(tmp_path / "nowhere")
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(CheckpointError, match=f"config file not found: {folder / 'config.json'}"):
        load_hf_folder(folder)
    shutil.copyfile(minilm_dir / "config.json", folder / "config.json")
    with pytest.raises(CheckpointError, match=f"weights not found: {folder / 'model.safetensors'}"):
        load_hf_folder(folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError) as info:
        load_hf_folder(folder)
    assert str(folder / "model.safetensors") in str(info.value) and "\n" not in str(info.value)
    (folder / "config.json").write_text('{"hidden_size": 384, "num_attention_heads": 5}')
    with pytest.raises(CheckpointError, match="config.json: invalid BERT config: hidden_size 384 is not a multiple"):
        load_hf_folder(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: cannot read config"):
        load_hf_folder(folder)


# --------------------------------------------------------------------------- (6) export
def test_save_hf_folder_round_trip(tmp_path, minilm, minilm_dir, hf_models, sst_batch, tokenizer):
    import transformers

    encoder = copy.deepcopy(minilm.encoder)
    torch.manual_seed(0)
    with torch.no_grad():  # move away from the original weights so the test proves the export
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    out = save_hf_folder(encoder, minilm_dir, tmp_path / "export")
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert (out / "vocab.txt").read_bytes() == (minilm_dir / "vocab.txt").read_bytes()
    hf_keys = {k for k in hf_models["eager"].state_dict() if not k.endswith("position_ids")}
    assert set(encoder_state_to_hf(encoder)) == hf_keys

    theirs, info = transformers.BertModel.from_pretrained(out, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ref = _theirs(theirs.eval(), sst_batch)
    ours = _ours(encoder, sst_batch, "math")
    assert _max_diff(ours.last_hidden_state, ref.last_hidden_state) <= TOL
    assert _max_diff(ours.pooler_output, ref.pooler_output) <= TOL

    again = load_hf_folder(out)
    assert again.config == minilm.config and again.warnings == []
    reloaded = _ours(again.encoder.eval(), sst_batch, "math")
    assert torch.equal(reloaded.last_hidden_state, ours.last_hidden_state)
    assert BertTokenizer.from_folder(out).encode(["a fine film ."]) == tokenizer.encode(["a fine film ."])


def test_save_hf_folder_from_a_tokenizer(tmp_path, tokenizer):
    encoder = BertEncoder(_tiny_config(vocab_size=tokenizer.vocab_size))
    out = save_hf_folder(encoder, tokenizer, tmp_path / "tiny")
    assert BertTokenizer.from_folder(out).vocab == tokenizer.vocab
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 32
    assert load_hf_folder(out).config == encoder.config


# --------------------------------------------------------------------------- (7) checkpointing
@pytest.mark.parametrize("kind", ["sdpa", "math"])
def test_gradient_checkpointing_gives_the_same_gradients(kind, monkeypatch):
    calls = []
    real_checkpoint = bert_module.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(bert_module, "checkpoint", counting_checkpoint)
    torch.manual_seed(0)
    config = _tiny_config(num_hidden_layers=3, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    encoder = BertEncoder(config, attention=kind).train()  # dropout on: its masks must be replayed
    ids = [torch.randint(1, 97, (n,)).tolist() for n in (12, 7, 3, 12)]
    batch = pad_batch(ids, [[0] * 6 + [1] * (n - 6) if n > 6 else [0] * n for n in (12, 7, 3, 12)])
    grads = []
    for enabled in (False, True):
        encoder.gradient_checkpointing = enabled
        encoder.zero_grad()
        torch.manual_seed(1234)
        out = encoder(**batch)
        (out.last_hidden_state.square().mean() + out.pooler_output.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in encoder.named_parameters()})
    assert calls == [False] * config.num_hidden_layers
    assert any(g.abs().sum() > 0 for g in grads[0].values())
    _assert_grads_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)

    encoder.eval()  # never used outside training
    with torch.no_grad():
        encoder(**batch)
    assert len(calls) == config.num_hidden_layers


# --------------------------------------------------------------------------- config and init
def test_config_from_dict_ignores_unknown_keys_and_round_trips(minilm_dir):
    data = json.loads((minilm_dir / "config.json").read_text())
    config = BertConfig.from_dict(data)
    assert config.hidden_size == 384 and config.num_hidden_layers == 6 and config.head_dim == 32
    assert BertConfig.from_dict(config.to_dict()) == config
    assert BertConfig.from_json_file(minilm_dir / "config.json") == config
    assert BertConfig.from_dict({}) == BertConfig()  # HF's defaults, as its config.json omits them
    assert config.evolve(hidden_dropout_prob=0).hidden_dropout_prob == 0.0


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"hidden_act": "swish"}, "hidden_act 'swish' is not supported"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob must be in"),
        ({"hidden_dropout_prob": "0.1"}, "hidden_dropout_prob must be in"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
        ({"vocab_size": 10, "pad_token_id": 10}, "pad_token_id 10 is outside"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ],
)
def test_config_rejects_bad_values(changes, match):
    with pytest.raises(ValueError, match=match):
        BertConfig.from_dict(changes)


def test_gelu_is_exact_erf():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    exact = 0.5 * x * (1 + torch.erf(x / 2**0.5))
    act = bert_module.hidden_activation("gelu")
    assert torch.allclose(act(x), exact, rtol=0, atol=1e-12)
    tanh = bert_module.hidden_activation("gelu_new")
    assert not torch.allclose(tanh(x), exact, rtol=0, atol=1e-6)


def test_init_weights_like_bert():
    torch.manual_seed(0)
    encoder = BertEncoder(_tiny_config(vocab_size=4000, initializer_range=0.05))
    assert abs(encoder.word_embeddings.weight[1:].std().item() - 0.05) < 0.003
    assert encoder.word_embeddings.weight[0].abs().sum() == 0  # [PAD] row
    assert abs(encoder.layers[0].ffn.up.weight.std().item() - 0.05) < 0.005
    for name, p in encoder.named_parameters():
        if name.endswith("bias"):
            assert p.abs().sum() == 0, name
    assert torch.equal(encoder.layers[1].ffn_norm.weight, torch.ones(32))
    assert encoder.hidden_size == 32 and len(encoder.layers) == 2
