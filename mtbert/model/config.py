"""Shape and regularisation settings of a BERT encoder, spelled as in HF ``config.json``.

Field names and defaults are those of transformers' ``BertConfig`` (bert-base-uncased):
transformers omits values equal to its defaults when it saves a config, so a folder's
``config.json`` only makes sense read against the same defaults.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import attrs

from mtbert.errors import CheckpointError

#: Activations we implement, by their HF names ("gelu" is the exact erf form).
HIDDEN_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


def _positive_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer, got {value!r}")


def _non_negative_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be a non-negative integer, got {value!r}")


def _probability(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not isinstance(value, float) or not 0.0 <= value < 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value!r}")


def _positive_float(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not isinstance(value, float) or not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def _to_float(value: Any) -> Any:
    # JSON may spell 0 for 0.0; anything else (a string, a bool) is left for the validator to
    # reject with the field's name, since float("0.1") would hide a malformed config.json.
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _float_field(default: float, validator) -> Any:
    return attrs.field(default=default, converter=_to_float, validator=validator)


@attrs.frozen
class BertConfig:
    """Hyper-parameters of a BERT encoder; immutable, change with :meth:`evolve`."""

    vocab_size: int = attrs.field(default=30522, validator=_positive_int)
    hidden_size: int = attrs.field(default=768, validator=_positive_int)
    num_hidden_layers: int = attrs.field(default=12, validator=_positive_int)
    num_attention_heads: int = attrs.field(default=12, validator=_positive_int)
    intermediate_size: int = attrs.field(default=3072, validator=_positive_int)
    hidden_act: str = attrs.field(default="gelu")
    hidden_dropout_prob: float = _float_field(0.1, _probability)
    attention_probs_dropout_prob: float = _float_field(0.1, _probability)
    max_position_embeddings: int = attrs.field(default=512, validator=_positive_int)
    type_vocab_size: int = attrs.field(default=2, validator=_positive_int)
    layer_norm_eps: float = _float_field(1e-12, _positive_float)
    pad_token_id: int = attrs.field(default=0, validator=_non_negative_int)
    initializer_range: float = _float_field(0.02, _positive_float)

    @hidden_act.validator
    def _check_act(self, attribute: attrs.Attribute, value: str) -> None:
        if value not in HIDDEN_ACTIVATIONS:
            raise ValueError(f"hidden_act {value!r} is not supported; use one of {', '.join(HIDDEN_ACTIVATIONS)}")

    def __attrs_post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.pad_token_id >= self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} is outside the vocabulary of {self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ----------------------------------------------------------------- conversion
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BertConfig":
        """Build from an HF config mapping; keys we do not model are ignored.

        Raises ``ValueError`` for a value we cannot honour, including a
        ``position_embedding_type`` other than "absolute" (the numbers would silently differ).
        """
        kind = data.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"position_embedding_type {kind!r} is not supported (only 'absolute')")
        names = {f.name for f in attrs.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:  # attrs reports a wrong type this way for some fields
            raise ValueError(str(exc)) from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> "BertConfig":
        """Read an HF ``config.json``; every problem is a one-line CheckpointError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: cannot read config: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise CheckpointError(f"{path}: invalid BERT config: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready mapping with HF key names."""
        return attrs.asdict(self)

    def evolve(self, **changes: Any) -> "BertConfig":
        """A copy with some fields changed (validated again)."""
        return attrs.evolve(self, **changes)
