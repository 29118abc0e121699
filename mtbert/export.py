"""``mtbert export RUN_DIR OUT_DIR``: take the fine-tuned model out of its run folder.

OUT_DIR becomes a complete Hugging Face BERT folder of the best checkpoint's encoder
(``config.json`` with ``model_type = "bert"``, ``model.safetensors``, ``vocab.txt``,
``tokenizer_config.json``) that ``transformers.AutoModel``/``AutoTokenizer`` load, giving the
same hidden states as mtbert's encoder (the weight names come from the one table in
:mod:`mtbert.model.weights` that loading uses too). The task heads go beside it:
``heads.safetensors`` (each head's parameters under ``<task>.``) and ``heads.json`` (per task:
head and input format with their options, label kind, classes, metric), enough to rebuild them
with mtbert's plugins.

``fmt = "sentence-transformers"`` adds that library's layout: ``modules.json`` (Transformer ->
Pooling [-> Dense]), ``sentence_bert_config.json`` and ``1_Pooling/config.json`` with the
pooling the recipe's heads use (``mean`` -> mean of real tokens, ``cls`` -> [CLS] state,
``pooler`` -> [CLS] state then a ``2_Dense`` tanh layer holding BERT's pooler weights).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from mtbert.errors import MtbertError
from mtbert.plugins import Plugins
from mtbert.schema import unstructure


def _pooling(recipe: Any, task: str | None) -> str:
    pools = {name: getattr(t.head.options, "pooling", None) for name, t in recipe.tasks.items()}
    if task is not None:
        if task not in pools:
            raise MtbertError(f"--pooling-from: '{task}' is not a task of this run; its tasks: {', '.join(pools)}")
        chosen = pools[task]
        if chosen is None:
            raise MtbertError(f"--pooling-from: head '{recipe.tasks[task].head.name}' of task {task} has no pooling option")
        return chosen
    known = {p for p in pools.values() if p is not None}
    if len(known) == 1:
        return known.pop()
    if not known:
        raise MtbertError("--format sentence-transformers: no head of this run has a pooling option; "
                          "the sentence embedding is undefined")
    listed = ", ".join(f"{n}: {p}" for n, p in pools.items() if p is not None)
    raise MtbertError(f"--format sentence-transformers: the heads pool differently ({listed}); "
                      "choose one with --pooling-from TASK")


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def write_sentence_transformers(out: Path, encoder: Any, pooling: str, max_length: int) -> None:
    """modules.json, sentence_bert_config.json, 1_Pooling/ (and 2_Dense/ for BERT's pooler)."""
    hidden = encoder.config.hidden_size
    modes = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "pooler": "pooling_mode_cls_token"}
    pooling_config = {"word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
                      "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
                      "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
                      "pooling_mode_lasttoken": False, "include_prompt": True}
    pooling_config[modes[pooling]] = True
    _write_json(out / "1_Pooling" / "config.json", pooling_config)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if pooling == "pooler":  # BERT's pooler: dense + tanh on the [CLS] state
        _write_json(out / "2_Dense" / "config.json", {
            "in_features": hidden, "out_features": hidden, "bias": True,
            "activation_function": "torch.nn.modules.activation.Tanh",
        })
        pooler = {"linear.weight": encoder.pooler.weight.detach().cpu().contiguous().clone(),
                  "linear.bias": encoder.pooler.bias.detach().cpu().contiguous().clone()}
        save_file(pooler, str(out / "2_Dense" / "model.safetensors"))
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    _write_json(out / "modules.json", modules)
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})


def export_run(run_dir: str | Path, out_dir: str | Path, plugins: Plugins, *, fmt: str = "hf",
               pooling_task: str | None = None, force: bool = False) -> dict[str, Any]:
    """Write the export; returns ``{"checkpoint": <the best evaluation>, "files": [...]}``."""
    from mtbert.engine.restore import encoder_files_folder, restore_run
    from mtbert.model.weights import save_hf_folder

    out = Path(out_dir)
    members = Path(run_dir) / "members"
    if members.is_dir():  # an ensemble (train.ensemble): its model is several encoders
        count = sum(1 for p in members.iterdir() if p.name.isdigit())
        raise MtbertError(f"export: {run_dir} is an ensemble of {count} members, not one encoder; export one member: "
                          f"mtbert export {members / '1'} {out_dir}")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise MtbertError(f"export: {out} already exists and is not empty; choose another OUT_DIR or add --force")
    restored = restore_run(run_dir, [], plugins)
    recipe = restored.recipe
    pooling = _pooling(recipe, pooling_task) if fmt == "sentence-transformers" else None
    encoder = restored.model.encoder.to("cpu")
    save_hf_folder(encoder, encoder_files_folder(Path(run_dir)), out)
    heads_state = {f"{name}.{key}": value for name, head in restored.model.heads.items()
                   for key, value in head.state_dict().items()}
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in heads_state.items()}, str(out / "heads.safetensors"))
    best = restored.best or {}
    _write_json(out / "heads.json", {
        "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run": str(Path(run_dir).resolve()), "recipe": recipe.name,
        "checkpoint": {k: best.get(k) for k in ("stage", "epoch", "step", "dev") if k in best},
        "encoder_hidden_size": encoder.config.hidden_size,
        "tasks": {
            name: {"head": t.head.to_toml(), "input": t.input.to_toml(), "label_kind": t.spec.label_kind,
                   "num_classes": t.spec.num_classes, "label_range": t.spec.label_range, "metric": t.spec.metric_key,
                   "parameters": sorted(k for k in heads_state if k.startswith(f"{name}."))}
            for name, t in recipe.tasks.items()
        },
        "max_length": recipe.data.max_length,
        "options": unstructure(recipe.model),
    })
    if pooling is not None:
        write_sentence_transformers(out, encoder, pooling, recipe.data.max_length)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    where = f"epoch {best.get('epoch')}" if best.get("epoch") is not None else "best checkpoint"
    return {"checkpoint": where, "files": files}
