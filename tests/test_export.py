"""``mtbert export``: the best checkpoint as a Hugging Face folder (and sentence-transformers layout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from mtbert.cli import cli
from mtbert.engine.restore import restore_run
from mtbert.engine.run import run_recipe
from mtbert.recipe import load_recipe

TINY = """\
name = "tiny-export"
seed = 5

[model]
checkpoint = "random:tiny"

[tasks.sst]
train_limit = 48
dev_limit = 32

[tasks.sts]
train_limit = 48
dev_limit = 32

[optim]
lr = 1e-3
epochs = 1
batch_size = 16

[train]
progress = false
threads = 1
predict = false
"""

TEXTS = ["A gripping, funny and moving film.", "the plot is thin", "Two men are playing guitar on a stage."]


def _run(write_recipe, plugins, data_dir, out: Path, overrides=()) -> Path:
    path = write_recipe(TINY, name="tiny-export.toml")
    recipe = load_recipe(path, [f"data.dir={json.dumps(str(data_dir))}", *overrides], plugins)
    folder, _ = run_recipe(recipe, plugins, out=out, say=lambda m: None, warn=lambda m: None)
    return folder


def _export(*args: str):
    return CliRunner().invoke(cli, ["export", *args], catch_exceptions=False)


def _ours(folder: Path, plugins):
    restored = restore_run(folder, [], plugins)
    batch = restored.tokenizer.pad(restored.tokenizer.encode(TEXTS))
    with torch.no_grad():
        hidden = restored.model.encoder(**batch).last_hidden_state
    return restored, batch, hidden


def test_export_is_a_hugging_face_folder_with_the_same_hidden_states(builtin_plugins, write_recipe, data_dir, minilm_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = _run(write_recipe, builtin_plugins, data_dir, tmp_path / "run")
    out = tmp_path / "export"
    result = _export(str(folder), str(out))
    assert result.exit_code == 0, result.output
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "heads.safetensors",
            "heads.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    restored, batch, ours = _ours(folder, builtin_plugins)

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    model = transformers.AutoModel.from_pretrained(str(out)).eval()
    theirs_batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(theirs_batch["input_ids"], batch["input_ids"])
    with torch.no_grad():
        theirs = model(input_ids=theirs_batch["input_ids"], attention_mask=theirs_batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].bool()
    assert (theirs[mask] - ours[mask]).abs().max().item() < 1e-5

    heads = load_file(str(out / "heads.safetensors"))
    state = restored.model.heads.state_dict()
    assert set(heads) == set(state)
    for key, value in state.items():
        assert torch.equal(heads[key], value), key
    info = json.loads((out / "heads.json").read_text())
    assert set(info["tasks"]) == {"sst", "sts"}
    assert info["tasks"]["sst"]["head"]["name"] == "linear" and info["tasks"]["sst"]["num_classes"] == 5
    assert info["checkpoint"]["epoch"] == 1

    again = _export(str(folder), str(out))
    assert again.exit_code == 2 and "not empty" in again.output


def test_export_refuses_a_folder_without_a_best_checkpoint(builtin_plugins, tmp_path):
    (tmp_path / "nothing").mkdir()
    result = _export(str(tmp_path / "nothing"), str(tmp_path / "out"))
    assert result.exit_code == 2 and result.output.startswith("error: ") and "not a run folder" in result.output


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_sentence_transformers_layout_matches_the_recipes_pooling(builtin_plugins, write_recipe, data_dir, minilm_dir,
                                                                   tmp_path, pooling):
    folder = _run(write_recipe, builtin_plugins, data_dir, tmp_path / "run",
                  [f"tasks.sst.head.pooling={pooling}", f"tasks.sts.head.pooling={pooling}"])
    out = tmp_path / "st"
    result = _export(str(folder), str(out), "--format", "sentence-transformers")
    assert result.exit_code == 0, result.output
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"] + (["Dense"] if pooling == "pooler" else [])
    config = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert config["pooling_mode_mean_tokens"] is (pooling == "mean")
    assert config["pooling_mode_cls_token"] is (pooling != "mean")

    sentence_transformers = pytest.importorskip("sentence_transformers")
    restored, batch, hidden = _ours(folder, builtin_plugins)
    if pooling == "mean":
        mask = batch["attention_mask"].unsqueeze(-1).float()
        wanted = (hidden * mask).sum(1) / mask.sum(1)
    elif pooling == "cls":
        wanted = hidden[:, 0]
    else:
        with torch.no_grad():
            wanted = restored.model.encoder(**batch).pooler_output
    model = sentence_transformers.SentenceTransformer(str(out), device="cpu")
    got = model.encode(TEXTS, convert_to_tensor=True)
    assert (got - wanted).abs().max().item() < 1e-5


def test_sentence_transformers_export_needs_one_pooling(builtin_plugins, write_recipe, data_dir, minilm_dir, tmp_path):
    folder = _run(write_recipe, builtin_plugins, data_dir, tmp_path / "run", ["tasks.sst.head.pooling=cls"])
    result = _export(str(folder), str(tmp_path / "st"), "--format", "sentence-transformers")
    assert result.exit_code == 2
    assert result.output.strip() == ("error: --format sentence-transformers: the heads pool differently "
                                     "(sst: cls, sts: mean); choose one with --pooling-from TASK")
    chosen = _export(str(folder), str(tmp_path / "st"), "--format", "sentence-transformers", "--pooling-from", "sts")
    assert chosen.exit_code == 0, chosen.output
    assert json.loads((tmp_path / "st" / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
