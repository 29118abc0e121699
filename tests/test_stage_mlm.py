"""The ``mlm`` stage: BERT's masking, the tied MLM head, training, logging and resume."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from mtbert import hookimpl
from mtbert.model.bert import BertEncoder
from mtbert.model.config import BertConfig
from mtbert_plugins import head_pair_classifier, stage_mlm
from mtbert_plugins.stage_mlm import (
    IGNORE_INDEX, MaskedLM, MaskedLMHead, MaskedLMTrainer, mask_tokens, plan_epoch, tokenize_unique, training_texts,
)

MINE = [("stage-mlm", stage_mlm), ("head-pair-classifier", head_pair_classifier)]


@pytest.fixture(autouse=True)
def one_thread():
    """The CPU is shared: one intra-op thread is several times faster here than two fighting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- masking
def batch_of_ids(rows: int = 1000, width: int = 100, vocab: int = 1000, seed: int = 0):
    """Token ids with [CLS] (1) first, [SEP] (2) last and padding (0) after, ~100k tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, width), generator=g)
    lengths = torch.randint(10, width + 1, (rows,), generator=g)
    positions = torch.arange(width).expand(rows, width)
    ids[:, 0] = 1
    ids[positions == (lengths - 1).unsqueeze(1)] = 2
    ids[positions >= lengths.unsqueeze(1)] = 0
    special = (ids == 0) | (ids == 1) | (ids == 2)
    return ids, special


def test_masking_proportions_on_100k_tokens():
    vocab, mask_id = 1000, 3
    ids, special = batch_of_ids(vocab=vocab)
    eligible = int((~special).sum())
    assert eligible > 50_000 and ids.numel() == 100_000
    original = ids.clone()
    inputs, labels = mask_tokens(ids, special, vocab, mask_id, 0.15, torch.Generator().manual_seed(1))
    assert torch.equal(ids, original)  # pure

    selected = labels != IGNORE_INDEX
    n = int(selected.sum())
    # 15% of eligible tokens; the binomial sd is ~0.0015 here, tolerance ~4 sd.
    assert abs(n / eligible - 0.15) < 0.006
    masked = selected & (inputs == mask_id)
    kept = selected & (inputs == ids)
    randomised = selected & (inputs != ids) & (inputs != mask_id)
    assert int(masked.sum() + kept.sum() + randomised.sum()) == n
    # 80 / 10 / 10; a random draw equals the original token with probability 1/vocab.
    assert abs(int(masked.sum()) / n - 0.8) < 0.015
    assert abs(int(randomised.sum()) / n - 0.1 * (1 - 1 / vocab)) < 0.012
    assert abs(int(kept.sum()) / n - (0.1 + 0.1 / vocab)) < 0.012
    # random replacements are spread over the whole vocabulary
    drawn = inputs[randomised].float()
    assert drawn.min() < 50 and drawn.max() > vocab - 50 and abs(drawn.mean().item() - (vocab - 1) / 2) < 40


def test_special_and_padding_tokens_are_never_selected_and_labels_are_minus_100_elsewhere():
    ids, special = batch_of_ids(rows=200, seed=3)
    inputs, labels = mask_tokens(ids, special, 1000, 3, 0.5, torch.Generator().manual_seed(2))
    selected = labels != IGNORE_INDEX
    assert not (selected & special).any()
    assert torch.equal(labels[selected], ids[selected])
    assert torch.all(labels[~selected] == IGNORE_INDEX)
    assert torch.equal(inputs[~selected], ids[~selected])  # nothing else is touched
    everything = mask_tokens(ids, special, 1000, 3, 1.0, torch.Generator().manual_seed(2))[1] != IGNORE_INDEX
    assert torch.equal(everything, ~special)


def test_masking_is_reproducible_from_the_generator():
    ids, special = batch_of_ids(rows=50)
    a = mask_tokens(ids, special, 1000, 3, 0.15, torch.Generator().manual_seed(9))
    b = mask_tokens(ids, special, 1000, 3, 0.15, torch.Generator().manual_seed(9))
    c = mask_tokens(ids, special, 1000, 3, 0.15, torch.Generator().manual_seed(10))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 8), width=st.integers(1, 30), prob=st.floats(0, 1), mask_share=st.floats(0, 1),
       seed=st.integers(0, 2**31))
def test_masking_invariants(rows, width, prob, mask_share, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (rows, width), generator=g)
    special = torch.rand(rows, width, generator=g) < 0.3
    random_share = (1 - mask_share) / 2
    inputs, labels = mask_tokens(ids, special, 50, 49, prob, g, mask_replace=mask_share, random_replace=random_share)
    selected = labels != IGNORE_INDEX
    assert not (selected & special).any()
    assert torch.equal(inputs[~selected], ids[~selected]) and torch.equal(labels[selected], ids[selected])
    assert inputs.dtype == ids.dtype and int(inputs.min()) >= 0 and int(inputs.max()) < 50
    if prob == 0:
        assert not selected.any()


def test_masking_rejects_bad_shares():
    ids, special = batch_of_ids(rows=2)
    with pytest.raises(ValueError):
        mask_tokens(ids, special, 1000, 3, 0.15, None, mask_replace=0.9, random_replace=0.2)
    with pytest.raises(ValueError):
        mask_tokens(ids, special, 1000, 3, 1.5, None)


# --------------------------------------------------------------------------- the head
def tiny_encoder(vocab: int = 100) -> BertEncoder:
    torch.manual_seed(0)
    enc = BertEncoder(BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=32))
    enc.init_weights()
    return enc


def test_decoder_is_the_word_embedding_tensor_and_gradients_reach_it():
    enc = tiny_encoder()
    torch.manual_seed(1)
    head = MaskedLMHead(enc)
    assert head.decoder.weight is enc.word_embeddings.weight
    assert head.decoder.weight.data_ptr() == enc.word_embeddings.weight.data_ptr()
    assert "decoder.weight" not in head.own_state() and len(head.own_parameters()) == 5
    # BERT's initialisation of the new transform
    assert abs(head.dense.weight.std().item() - 0.02) < 0.004
    assert torch.all(head.dense.bias == 0) and torch.all(head.norm.weight == 1) and torch.all(head.bias == 0)

    hidden = torch.randn(7, 16)
    with torch.no_grad():
        head.bias.normal_()
    logits = head(hidden)
    t = F.layer_norm(F.gelu(hidden @ head.dense.weight.T + head.dense.bias), (16,), head.norm.weight,
                     head.norm.bias, eps=1e-12)
    assert torch.allclose(logits, t @ enc.word_embeddings.weight.T + head.bias, atol=1e-5)

    F.cross_entropy(logits, torch.randint(0, 100, (7,))).backward()
    grad = enc.word_embeddings.weight.grad
    assert grad is not None and torch.count_nonzero(grad.abs().sum(1)) == 100  # every row: the output side
    with torch.no_grad():  # the same storage: changing the embedding changes the decoder
        enc.word_embeddings.weight[5].add_(torch.linspace(-1, 1, 16))  # (a constant shift would vanish: LN output has zero mean)
    assert not torch.allclose(head(hidden), logits)


def test_pretrained_head_from_the_checkpoint_is_used():
    enc = tiny_encoder()
    head = MaskedLMHead(enc)
    extra = {
        "predictions.transform.dense.weight": torch.full((16, 16), 0.5),
        "predictions.transform.dense.bias": torch.full((16,), 0.25),
        "predictions.transform.LayerNorm.weight": torch.full((16,), 2.0),
        "predictions.transform.LayerNorm.bias": torch.full((16,), -1.0),
        "predictions.bias": torch.arange(100, dtype=torch.float32),
        "predictions.decoder.weight": enc.word_embeddings.weight.detach().clone(),
        "seq_relationship.weight": torch.zeros(2, 16),
    }
    message = head.load_pretrained(extra)
    assert message.startswith("mlm: using the checkpoint's pretrained MLM head") and "ignored" not in message
    assert torch.all(head.dense.weight == 0.5) and torch.all(head.norm.bias == -1.0)
    assert torch.equal(head.bias.detach(), torch.arange(100, dtype=torch.float32))
    assert head.decoder.weight is enc.word_embeddings.weight

    fresh = MaskedLMHead(enc)
    incomplete = {k: v for k, v in extra.items() if k != "predictions.bias"}
    assert "incomplete" in fresh.load_pretrained(incomplete) and torch.all(fresh.bias == 0)
    assert fresh.load_pretrained({"seq_relationship.weight": torch.zeros(2, 16)}) is None


# --------------------------------------------------------------------------- data
def test_training_texts_take_both_sentences_once():
    def example(*texts):
        return SimpleNamespace(texts=texts)

    run = SimpleNamespace(tasks={
        "sst": SimpleNamespace(splits={"train": SimpleNamespace(examples=[example("a b"), example("c"), example("a b")])}),
        "sts": SimpleNamespace(splits={"train": SimpleNamespace(examples=[example("c", "d e"), example("f", "a b")]),
                                       "dev": SimpleNamespace(examples=[example("x", "y")])}),
    })
    assert training_texts(run, ["sst", "sts"]) == ["a b", "c", "d e", "f"]
    assert training_texts(run, ["sts"], split="dev") == ["x", "y"]

    class Tok:
        def encode(self, texts, max_length):
            return [[101, *(ord(ch) for ch in t.replace(" ", "").lower()), 102] for t in texts]

    assert tokenize_unique(Tok(), ["Ab", "ab", "", "c"], 8) == [[101, 97, 98, 102], [101, 99, 102]]


def test_epoch_plan_covers_every_sentence_once():
    lengths = [int(x) for x in torch.randint(3, 40, (103,))]
    for bucket in (False, True):
        batches = plan_epoch(lengths, 8, torch.Generator().manual_seed(0), bucket)
        assert sorted(i for b in batches for i in b) == list(range(103)) and len(batches) == 13


# --------------------------------------------------------------------------- in a run
@pytest.fixture
def plugins_with(monkeypatch):
    from mtbert.plugins import load_plugins, set_plugins

    def make(*extra):
        monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
        monkeypatch.delenv("MTBERT_DISABLE_PLUGINS", raising=False)
        plugins = load_plugins([*MINE, *extra])
        set_plugins(plugins)
        return plugins

    yield make
    set_plugins(None)


def sst_table(data_dir: Path, **mlm) -> dict:
    return {
        "name": "mlm-test", "seed": 5, "model": {"checkpoint": "random:tiny"}, "data": {"dir": str(data_dir)},
        "tasks": {"sst": {"train_limit": 256, "dev_limit": 64, "test_limit": 8}},
        "stages": [{"name": "mlm", **mlm}, {"name": "multitask"}],
        "optim": {"epochs": 1, "batch_size": 16},
        "train": {"progress": False, "log_every": 2},
    }


class Recorder:
    def __init__(self):
        self.calls: list[tuple[str, dict, int]] = []

    def scalars(self, prefix, values, step):
        self.calls.append((prefix, dict(values), step))


def built_run(tmp_path, plugins, table):
    from mtbert.engine.run import RunContext
    from mtbert.recipe import validate

    lines: list[str] = []
    run = RunContext(validate(table, plugins), plugins, tmp_path / "run", say=lines.append, warn=lines.append)
    run.build()
    run.log = Recorder()
    run.save_last = lambda trainer: trainer.state_dict()  # exercised, not written (the e2e test writes)
    return run, lines


def test_stage_lowers_the_mlm_loss_on_real_sst_sentences(tmp_path, data_dir, minilm_dir, plugins_with):
    plugins = plugins_with()
    table = sst_table(data_dir, epochs=3, lr=5e-3, batch_size=16, warmup=0.1, dev_sentences=64)
    run, lines = built_run(tmp_path, plugins, table)
    options = run.recipe.stages[0].options
    encoder = run.model.encoder
    before_weights = {k: v.clone() for k, v in encoder.state_dict().items()}

    trainer = MaskedLMTrainer(options, run, 0, "mlm")
    assert trainer.head.decoder.weight is encoder.word_embeddings.weight
    assert len(trainer.sequences) == len({tuple(s) for s in trainer.sequences}) > 200
    before = trainer.evaluate_dev()
    summary = trainer.train()

    assert before["dev_loss"] > 9.0  # ~ln(30522) = 10.3 for a random model
    assert summary["mlm_dev_loss"] < before["dev_loss"] - 2.0
    assert summary["mlm_loss"] < before["dev_loss"] - 2.0 and summary["mlm_accuracy"] > before["dev_accuracy"]
    assert run.global_step == trainer.step == 3 * 16 == trainer.total_steps
    assert trainer.head is None and trainer.done  # the MLM head is discarded
    changed = [k for k, v in encoder.state_dict().items() if not torch.equal(v, before_weights[k])]
    assert "word_embeddings.weight" in changed and any(k.startswith("layers.") for k in changed)
    # TensorBoard: loss, accuracy and lr every log_every steps, dev scores after each epoch
    train_logs = [c for c in run.log.calls if "loss" in c[1]]
    assert train_logs and {"loss", "accuracy", "lr"} <= set(train_logs[0][1]) and train_logs[0][0] == "mlm"
    assert [c[2] for c in train_logs][:3] == [2, 4, 6]
    dev_logs = [c for c in run.log.calls if "dev_loss" in c[1]]
    assert [c[2] for c in dev_logs] == [16, 32, 48]
    epoch_lines = [line for line in lines if line.startswith("[mlm")]
    assert len(epoch_lines) == 3 and "masked acc" in epoch_lines[0] and "dev loss" in epoch_lines[0]
    assert any("a new MLM head" in line for line in lines)


def test_stage_uses_a_pretrained_head_and_honours_max_steps(tmp_path, data_dir, minilm_dir, plugins_with):
    plugins = plugins_with()
    run, lines = built_run(tmp_path, plugins, sst_table(data_dir, max_steps=3, dev_sentences=0))
    hidden, vocab = 32, run.model.encoder.word_embeddings.num_embeddings
    run.backbone.extra_state = {
        "predictions.transform.dense.weight": torch.eye(hidden), "predictions.transform.dense.bias": torch.zeros(hidden),
        "predictions.transform.LayerNorm.weight": torch.ones(hidden),
        "predictions.transform.LayerNorm.bias": torch.zeros(hidden), "predictions.bias": torch.full((vocab,), 0.5),
    }
    trainer = MaskedLMTrainer(run.recipe.stages[0].options, run, 0, "mlm")
    assert torch.equal(trainer.head.dense.weight.detach(), torch.eye(hidden))
    assert any("pretrained MLM head" in line for line in lines)
    summary = trainer.train()
    assert trainer.step == 3 and run.global_step == 3 and "mlm_dev_loss" not in summary
    assert any("stopped at max_steps" in line for line in lines)


def test_recipe_options_are_validated(data_dir, plugins_with):
    from mtbert.errors import RecipeError
    from mtbert.recipe import validate

    plugins = plugins_with()
    recipe = validate(sst_table(data_dir), plugins)
    options = recipe.stages[0].options
    assert isinstance(options, MaskedLM) and options.mask_prob == 0.15 and options.tasks is None
    for bad, words in [({"tasks": ["sts"]}, "stages[0].tasks"), ({"mask_replace": 0.95}, "at most 1"),
                       ({"mask_prob": 0}, "greater than 0"), ({"epochs": 0}, "at least 1")]:
        with pytest.raises(RecipeError, match=words.replace("[", r"\[").replace("]", r"\]")):
            validate(sst_table(data_dir, **bad), plugins)


def test_frozen_encoder_is_refused(tmp_path, data_dir, minilm_dir, plugins_with):
    from mtbert.errors import MtbertError

    table = sst_table(data_dir)
    table["model"]["mode"] = "pretrain"
    run, _ = built_run(tmp_path, plugins_with(), table)
    with pytest.raises(MtbertError, match="frozen"):
        MaskedLMTrainer(run.recipe.stages[0].options, run, 0, "mlm")


def test_a_finished_stage_is_not_run_again_on_resume():
    said: list[str] = []
    run = SimpleNamespace(recipe=SimpleNamespace(stages=[1, 2]), say=said.append)
    resume = {"stage_index": 0, "stage": "mlm", "done": True, "summary": {"mlm_loss": 3.5}}
    assert MaskedLM().run(run, 0, "mlm", resume) == {"mlm_loss": 3.5}  # no model, no data: nothing was built
    assert "finished before the interruption" in said[0]


class StopAt:
    def __init__(self, step):
        self.step = step

    @hookimpl
    def mtbert_on_step_end(self, run, step, logs):
        if step == self.step:
            run.request_stop("test interruption")


def e2e_table(data_dir):
    return {
        "name": "mlm-e2e", "seed": 7, "model": {"checkpoint": "random:tiny"}, "data": {"dir": str(data_dir)},
        "tasks": {
            "sst": {"train_limit": 64, "dev_limit": 32, "test_limit": 8},
            "para": {"head": {"name": "pair-classifier", "hidden": [16]}, "train_limit": 32, "dev_limit": 32},
            "sts": {"train_limit": 32, "dev_limit": 32, "test_limit": 8},
        },
        "stages": [{"name": "mlm", "tasks": ["sst", "sts"], "epochs": 2, "batch_size": 16, "lr": 1e-3,
                    "dev_sentences": 32},
                   {"name": "multitask"}],
        "optim": {"epochs": 1, "batch_size": 16},
        "train": {"progress": False},
    }


def test_short_real_recipe_and_resume_in_the_middle_of_the_mlm_stage(tmp_path, data_dir, minilm_dir, plugins_with):
    from mtbert.engine.run import run_recipe
    from mtbert.engine.trainer import RunInterrupted
    from mtbert.recipe import validate

    def quiet(_):
        pass

    plugins = plugins_with()
    whole, whole_summary = run_recipe(validate(e2e_table(data_dir), plugins), plugins, out=tmp_path / "whole",
                                      say=quiet, warn=quiet)
    # 2 MLM epochs of ~128 sentences in batches of 16 come before the first multitask evaluation
    assert json.loads((whole / "metrics.jsonl").read_text().splitlines()[0])["step"] > 16
    plugins = plugins_with(("stopper", StopAt(5)))  # inside the first MLM epoch
    with pytest.raises(RunInterrupted, match="stopped at step 5"):
        run_recipe(validate(e2e_table(data_dir), plugins), plugins, out=tmp_path / "split", say=quiet, warn=quiet)
    plugins = plugins_with()
    split, split_summary = run_recipe(validate(e2e_table(data_dir), plugins), plugins, out=tmp_path / "split",
                                      resume=True, say=quiet, warn=quiet)
    assert split_summary == whole_summary
    a = load_file(str(whole / "checkpoints" / "best.safetensors"))
    b = load_file(str(split / "checkpoints" / "best.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
