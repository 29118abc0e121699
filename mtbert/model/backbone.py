"""Named checkpoints and :func:`load_backbone`, the public entry point to the encoder.

A recipe's ``model.checkpoint`` is either a name registered through
``mtbert_register_checkpoints`` (``minilm-l6``, ``random:tiny``) or a local HF-format BERT
folder (config.json, model.safetensors or pytorch_model.bin, vocab.txt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import attrs
import torch

from mtbert.errors import CheckpointError
from mtbert.model.tokenizer import BertTokenizer


@attrs.frozen
class CheckpointSpec:
    """How a checkpoint name becomes an encoder.

    ``folder`` resolves lazily (it may import an optional package) to an HF-format folder.
    With ``random_config`` set the encoder is built with random weights from that config and
    only the tokenizer comes from ``folder``.
    """

    description: str
    folder: Callable[[], Path]
    random_config: dict[str, Any] | None = None


@attrs.define
class Backbone:
    encoder: Any  # mtbert.model.bert.BertEncoder
    tokenizer: BertTokenizer
    source: str
    folder: Path
    extra_state: dict[str, torch.Tensor] = attrs.field(factory=dict)


def resolve_checkpoint(checkpoint: str) -> tuple[CheckpointSpec | None, Path | None]:
    """A registered spec, or a folder path; CheckpointError when it is neither."""
    from mtbert.plugins import get_plugins

    component = get_plugins().registry.find("checkpoint", checkpoint)
    if component is not None:
        return component.factory, None
    folder = Path(checkpoint).expanduser()
    if folder.is_dir():
        return None, folder
    names = ", ".join(get_plugins().registry.names("checkpoint")) or "none"
    raise CheckpointError(f"checkpoint '{checkpoint}' is neither a registered name ({names}) nor a folder")


def load_backbone(
    checkpoint: str,
    *,
    hidden_dropout: float | None = None,
    attention_dropout: float | None = None,
    attention: str = "sdpa",
    seed: int | None = None,
) -> Backbone:
    """Encoder and tokenizer for a checkpoint name or folder (see module docstring)."""
    from mtbert.model.bert import BertEncoder
    from mtbert.model.config import BertConfig
    from mtbert.model.weights import load_hf_folder

    spec, folder = resolve_checkpoint(checkpoint)
    if spec is not None:
        try:
            folder = Path(spec.folder())
        except ImportError as exc:
            raise CheckpointError(f"checkpoint '{checkpoint}' is unavailable: {exc}") from None
    assert folder is not None
    tokenizer = BertTokenizer.from_folder(folder)
    if spec is not None and spec.random_config is not None:
        config = BertConfig.from_dict({"vocab_size": tokenizer.vocab_size, **spec.random_config})
        changes = {}
        if hidden_dropout is not None:
            changes["hidden_dropout_prob"] = hidden_dropout
        if attention_dropout is not None:
            changes["attention_probs_dropout_prob"] = attention_dropout
        if changes:
            config = config.evolve(**changes)
        if seed is not None:
            torch.manual_seed(seed)
        encoder = BertEncoder(config, attention=attention)
        encoder.init_weights()
        return Backbone(encoder=encoder, tokenizer=tokenizer, source=checkpoint, folder=folder)
    loaded = load_hf_folder(folder, hidden_dropout=hidden_dropout, attention_dropout=attention_dropout, attention=attention)
    return Backbone(
        encoder=loaded.encoder, tokenizer=tokenizer, source=checkpoint, folder=folder, extra_state=loaded.extra_state
    )
