"""Reading and writing HF-format BERT folders (config.json, weights, vocab.txt).

One table maps each of our parameters to the HF tensor(s) it comes from; loading reads it
one way (concatenating query, key and value into the fused QKV projection) and export the
other (splitting it again), so the two directions cannot drift apart. Weights are read from
``model.safetensors`` or, failing that, ``pytorch_model.bin`` through
``torch.load(weights_only=True)``: never an unrestricted pickle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import attrs
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from mtbert.errors import CheckpointError
from mtbert.files import atomic_path
from mtbert.model.bert import BertEncoder
from mtbert.model.config import BertConfig
from mtbert.model.tokenizer import BertTokenizer

SAFETENSORS_NAME = "model.safetensors"
PYTORCH_NAME = "pytorch_model.bin"

#: Buffers some transformers versions save next to the weights; they carry no information.
_IGNORED_KEYS = frozenset({"embeddings.position_ids", "embeddings.token_type_ids"})


@attrs.define(eq=False)
class LoadedBackbone:
    """An encoder loaded from a folder, plus what the folder held beyond the encoder.

    ``extra_state``: tensors under ``cls.`` (the pre-training heads), prefix stripped, for a
    later MLM stage. ``warnings``: one line per thing worth telling the user (a missing
    pooler left randomly initialised, weights that were ignored).
    """

    encoder: BertEncoder
    config: BertConfig
    extra_state: dict[str, Tensor] = attrs.field(factory=dict)
    warnings: list[str] = attrs.field(factory=list)


# --------------------------------------------------------------------- the name table
def _name_table(config: BertConfig) -> list[tuple[str, tuple[str, ...]]]:
    """(our parameter name, the HF names concatenated along dim 0 to make it)."""

    def pair(ours: str, hf: str) -> list[tuple[str, tuple[str, ...]]]:
        return [(f"{ours}.{p}", (f"{hf}.{p}",)) for p in ("weight", "bias")]

    table = [
        ("word_embeddings.weight", ("embeddings.word_embeddings.weight",)),
        ("position_embeddings.weight", ("embeddings.position_embeddings.weight",)),
        ("token_type_embeddings.weight", ("embeddings.token_type_embeddings.weight",)),
        *pair("embed_norm", "embeddings.LayerNorm"),
    ]
    for i in range(config.num_hidden_layers):
        ours, hf = f"layers.{i}", f"encoder.layer.{i}"
        for p in ("weight", "bias"):
            qkv = tuple(f"{hf}.attention.self.{n}.{p}" for n in ("query", "key", "value"))
            table.append((f"{ours}.attn.qkv.{p}", qkv))
        table += pair(f"{ours}.attn.proj", f"{hf}.attention.output.dense")
        table += pair(f"{ours}.attn_norm", f"{hf}.attention.output.LayerNorm")
        table += pair(f"{ours}.ffn.up", f"{hf}.intermediate.dense")
        table += pair(f"{ours}.ffn.down", f"{hf}.output.dense")
        table += pair(f"{ours}.ffn_norm", f"{hf}.output.LayerNorm")
    table += pair("pooler", "pooler.dense")
    return table


def _normalise_key(key: str) -> str:
    """HF key as BertModel names it: no ``bert.`` prefix, LayerNorm weight/bias not gamma/beta."""
    if key.startswith("bert."):
        key = key[len("bert.") :]
    if key.endswith("LayerNorm.gamma"):
        key = key[: -len("gamma")] + "weight"
    elif key.endswith("LayerNorm.beta"):
        key = key[: -len("beta")] + "bias"
    return key


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _list_keys(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


# --------------------------------------------------------------------- loading
def read_hf_weights(folder: str | Path) -> dict[str, Tensor]:
    """The raw tensors of a folder: model.safetensors first, else pytorch_model.bin."""
    folder = Path(folder)
    safetensors_path, pytorch_path = folder / SAFETENSORS_NAME, folder / PYTORCH_NAME
    if safetensors_path.is_file():
        try:
            return load_file(safetensors_path, device="cpu")
        except Exception as exc:  # a corrupt file: say which, in one line
            raise CheckpointError(f"cannot read {safetensors_path}: {_first_line(exc)}") from None
    if pytorch_path.is_file():
        try:
            state = torch.load(pytorch_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot read {pytorch_path}: {_first_line(exc)}") from None
        if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
        ):
            raise CheckpointError(f"{pytorch_path}: expected a flat mapping of names to tensors")
        return dict(state)
    if (folder / f"{SAFETENSORS_NAME}.index.json").is_file():
        raise CheckpointError(f"{folder}: sharded checkpoints are not supported; merge into {SAFETENSORS_NAME}")
    raise CheckpointError(f"weights not found: {safetensors_path} (nor {PYTORCH_NAME})")


def load_hf_state(
    encoder: BertEncoder, hf_state: Mapping[str, Tensor], *, source: str | Path = "checkpoint"
) -> tuple[dict[str, Tensor], list[str]]:
    """Copy HF-named tensors into ``encoder``; return (``cls.`` extra state, warnings).

    Every encoder weight must be present and of the right shape, except the pooler, which
    stays randomly initialised (with a warning) when absent.
    """
    state: dict[str, Tensor] = {}
    extra: dict[str, Tensor] = {}
    for raw_key, tensor in hf_state.items():
        key = _normalise_key(raw_key)
        if key.startswith("cls."):
            extra[key[len("cls.") :]] = tensor
            continue
        if key in state:
            raise CheckpointError(f"{source}: weight {key} appears twice (with and without the 'bert.' prefix)")
        state[key] = tensor

    table = _name_table(encoder.config)
    missing = [hf for _, names in table for hf in names if hf not in state and not hf.startswith("pooler.")]
    if missing:
        raise CheckpointError(f"{source}: missing encoder weights: {_list_keys(missing)}")

    warnings: list[str] = []
    own = encoder.state_dict()
    mapped: dict[str, Tensor] = {}
    used: set[str] = set()
    for ours, names in table:
        if not all(n in state for n in names):  # only the pooler can get here
            continue
        parts = [state[n] for n in names]
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        if tensor.shape != own[ours].shape:
            found = " + ".join(str(tuple(p.shape)) for p in parts)
            raise CheckpointError(
                f"{source}: weight {', '.join(names)} has shape {found}; "
                f"config.json implies {tuple(own[ours].shape)}"
            )
        mapped[ours] = tensor
        used.update(names)
    if "pooler.weight" not in mapped or "pooler.bias" not in mapped:
        warnings.append(f"{source}: no pooler weights; the pooler is randomly initialised")
    encoder.load_state_dict(mapped, strict=False)

    unexpected = sorted(k for k in state if k not in used and k not in _IGNORED_KEYS)
    if unexpected:
        warnings.append(
            f"{source}: ignored {len(unexpected)} weight(s) that are not part of a BERT encoder: "
            f"{_list_keys(unexpected)}"
        )
    return extra, warnings


def load_hf_folder(
    folder: str | Path,
    *,
    hidden_dropout: float | None = None,
    attention_dropout: float | None = None,
    attention: str = "sdpa",
) -> LoadedBackbone:
    """Build a :class:`BertEncoder` from an HF-format BERT folder (config.json + weights).

    ``hidden_dropout`` / ``attention_dropout`` override the folder's dropout probabilities.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    config = BertConfig.from_json_file(folder / "config.json")
    changes: dict[str, Any] = {}
    if hidden_dropout is not None:
        changes["hidden_dropout_prob"] = hidden_dropout
    if attention_dropout is not None:
        changes["attention_probs_dropout_prob"] = attention_dropout
    if changes:
        config = config.evolve(**changes)
    hf_state = read_hf_weights(folder)
    encoder = BertEncoder(config, attention=attention)
    extra, warnings = load_hf_state(encoder, hf_state, source=folder)
    return LoadedBackbone(encoder=encoder, config=config, extra_state=extra, warnings=warnings)


# --------------------------------------------------------------------- export
def encoder_state_to_hf(encoder: BertEncoder) -> dict[str, Tensor]:
    """Our parameters under BertModel's names (no ``bert.`` prefix), QKV split apart.

    Every tensor is a contiguous CPU copy owning its memory, as safetensors requires.
    """
    own = encoder.state_dict()
    out: dict[str, Tensor] = {}
    for ours, names in _name_table(encoder.config):
        tensor = own[ours].detach().cpu()
        for name, part in zip(names, tensor.chunk(len(names), dim=0)):
            out[name] = part.clone(memory_format=torch.contiguous_format)
    return out


def _tokenizer_config(lowercase: bool, strip_accents: bool | None, max_length: int) -> dict[str, Any]:
    return {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lowercase,
        "strip_accents": strip_accents,
        "tokenize_chinese_chars": True,
        "model_max_length": max_length,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }


def _vocab_lines(vocab: Mapping[str, int]) -> str:
    """vocab.txt text: line i holds the token of id i (gaps, if any, get unique fillers)."""
    by_id = {index: token for token, index in vocab.items()}
    size = max(by_id) + 1 if by_id else 0
    return "".join(f"{by_id.get(i, f'[mtbert-unused-{i}]')}\n" for i in range(size))


def _copy(src: Path, dst: Path) -> None:
    if not (dst.exists() and src.samefile(dst)):
        shutil.copyfile(src, dst)


def _write_tokenizer(source: Any, out: Path, max_length: int) -> None:
    if isinstance(source, BertTokenizer):
        (out / "vocab.txt").write_text(_vocab_lines(source.vocab), encoding="utf-8")
        config = _tokenizer_config(source.lowercase, None, max_length)
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return
    if isinstance(source, Mapping):
        (out / "vocab.txt").write_text(_vocab_lines(source), encoding="utf-8")
        config = _tokenizer_config(True, None, max_length)
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return
    path = Path(source)
    if path.is_dir():
        vocab = path / "vocab.txt"
        if not vocab.is_file():
            raise CheckpointError(f"vocabulary not found: {vocab}")
        _copy(vocab, out / "vocab.txt")
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (path / name).is_file():
                _copy(path / name, out / name)
        if not (path / "tokenizer_config.json").is_file():
            config = _tokenizer_config(True, None, max_length)
            (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return
    if path.is_file():
        _copy(path, out / "vocab.txt")
        config = _tokenizer_config(True, None, max_length)
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return
    raise CheckpointError(f"vocabulary not found: {path}")


def save_hf_folder(encoder: BertEncoder, tokenizer_folder_or_vocab: Any, out_dir: str | Path) -> Path:
    """Write an HF-format folder that transformers' ``BertModel`` and we both load.

    ``tokenizer_folder_or_vocab``: an HF folder (its vocab.txt and tokenizer config are
    copied), a vocab.txt path, a :class:`BertTokenizer`, or a token -> id mapping.
    Writes config.json, model.safetensors, vocab.txt and tokenizer_config.json.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["BertModel"], "model_type": "bert", **encoder.config.to_dict()}
    config["position_embedding_type"] = "absolute"
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    with atomic_path(out / SAFETENSORS_NAME) as tmp:
        save_file(encoder_state_to_hf(encoder), str(tmp), metadata={"format": "pt"})
    _write_tokenizer(tokenizer_folder_or_vocab, out, encoder.config.max_position_embeddings)
    return out
