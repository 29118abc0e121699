"""The BERT encoder, in one file read top to bottom: activations, attention, layer, encoder.

It computes exactly what transformers' ``BertModel`` computes (post-LayerNorm transformer,
absolute positions, tanh pooler over [CLS]) so that standard checkpoints load unchanged, but
is laid out for speed: query, key and value come from one fused Linear, attention runs
through ``torch.nn.functional.scaled_dot_product_attention``, the padding mask is turned
into an additive bias once per forward instead of once per layer, and on the CPU a padded
batch runs its token-wise layers on the real tokens only (:class:`Packing`). An explicit
softmax(QK^T/sqrt(d) + mask)V path is kept for tests and for methods that need to see it.

Parameter names are ours; :mod:`mtbert.model.weights` maps them to and from HF names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mtbert.model.config import BertConfig

ATTENTION_KINDS = ("sdpa", "math")
UNPAD_KINDS = ("auto", "always", "never")
#: ``unpad = "auto"`` packs a CPU batch when fewer than this share of its positions are real tokens.
UNPAD_BELOW = 0.95


def hidden_activation(name: str) -> nn.Module:
    """HF's activation names; "gelu" is the exact erf GELU, "gelu_new" the tanh approximation."""
    if name == "gelu":
        return nn.GELU()
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unsupported hidden_act {name!r}")


@dataclass
class Packing:
    """Where a padded batch's real tokens lie, to run the token-wise layers on real tokens only.

    Every layer but attention works token by token (Linear, GELU, LayerNorm, dropout), so it can
    run on the ``[N, C]`` stack of the N real tokens instead of ``[B, T, C]``; attention alone
    needs the padded layout back (:meth:`pad`), and its output is packed again (:meth:`unpack`).
    """

    index: Tensor  # flat positions of the real tokens in [B * T]
    batch: int
    length: int

    @classmethod
    def of(cls, attention_mask: Tensor) -> "Packing":
        B, T = attention_mask.shape
        return cls(attention_mask.reshape(-1).nonzero().squeeze(1), B, T)

    def pack(self, x: Tensor) -> Tensor:
        """[B, T, C] -> [N, C]."""
        return x.reshape(self.batch * self.length, x.shape[-1]).index_select(0, self.index)

    def pad(self, x: Tensor) -> Tensor:
        """[N, C] -> [B, T, C], zeros at the padding."""
        out = x.new_zeros(self.batch * self.length, x.shape[-1])
        return out.index_copy(0, self.index, x).view(self.batch, self.length, x.shape[-1])


class TokenCount:
    """Tokens the training-mode forwards saw: real ones, padded positions, and the positions the
    token-wise layers computed (the real ones when packed). ``padding_efficiency`` is real over
    computed; ``batch_fill`` real over positions (what the batching achieves: length buckets, and
    for a stacked pair batch the padding of the shorter side to the longer)."""

    def __init__(self) -> None:
        self.real: Tensor | int = 0  # a tensor on the batch's device: no synchronisation per step
        self.positions = 0
        self.computed = 0

    def add(self, real: Tensor | int, positions: int, computed: int) -> None:
        self.real = self.real + real
        self.positions += positions
        self.computed += computed

    def record(self) -> dict[str, float | int]:
        real = int(self.real)
        return {"real": real, "positions": self.positions, "computed": self.computed,
                "padding_efficiency": real / self.computed if self.computed else 1.0,
                "batch_fill": real / self.positions if self.positions else 1.0}


@dataclass
class EncoderOutput:
    """What the encoder returns: per-token states [B, T, H] and the pooled [CLS] state [B, H]."""

    last_hidden_state: Tensor
    pooler_output: Tensor


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection (one matmul instead of three)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.dropout_p = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor, bias: Tensor | None, kind: str, packing: Packing | None = None) -> Tensor:
        H = x.shape[-1]
        qkv = self.qkv(x)
        if packing is not None:  # [N, 3H] of real tokens -> padded [B, T, 3H] for attention
            qkv = packing.pad(qkv)
        B, T = qkv.shape[0], qkv.shape[1]
        # [B, T, 3H] -> three [B, heads, T, head_dim] views; no copy is made here.
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        p = self.dropout_p if self.training else 0.0
        if kind == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        else:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
            if bias is not None:
                scores = scores + bias
            probs = F.dropout(scores.softmax(dim=-1), p=p, training=self.training)
            y = probs @ v
        y = y.transpose(1, 2).reshape(B, T, H)
        return self.proj(y if packing is None else packing.pack(y))


class FeedForward(nn.Module):
    """Position-wise MLP: hidden -> intermediate -> activation -> hidden."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = hidden_activation(config.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))


class TransformerLayer(nn.Module):
    """One post-LayerNorm BERT layer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attn = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, bias: Tensor | None, kind: str, packing: Packing | None = None) -> Tensor:
        x = self.attn_norm(x + self.dropout(self.attn(x, bias, kind, packing)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class BertEncoder(nn.Module):
    """Embeddings, a stack of transformer layers and the [CLS] pooler.

    ``attention`` ("sdpa" or "math") may be changed at any time; ``gradient_checkpointing``
    recomputes each layer in the backward pass (training only) to save activation memory.
    ``unpad`` ("auto", "always", "never") runs the token-wise layers on real tokens only
    (:class:`Packing`): "auto" does so on the CPU when padding fills more than
    ``1 - UNPAD_BELOW`` of a batch. Outputs at real tokens are the same either way; at padding
    positions the packed path returns zeros (the padded path returns values nobody should read).
    """

    def __init__(self, config: BertConfig, attention: str = "sdpa", unpad: str = "auto"):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.attention = attention
        self.unpad = unpad
        self.tokens = TokenCount()
        self.gradient_checkpointing = False
        # padding_idx as in HF: the [PAD] row gets no gradient.
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.embed_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.embed_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.init_weights()

    # ----------------------------------------------------------------- settings
    @property
    def attention(self) -> str:
        return self._attention

    @attention.setter
    def attention(self, kind: str) -> None:
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_KINDS)}, got {kind!r}")
        self._attention = kind

    @property
    def unpad(self) -> str:
        return self._unpad

    @unpad.setter
    def unpad(self, kind: str) -> None:
        if kind not in UNPAD_KINDS:
            raise ValueError(f"unpad must be one of {', '.join(UNPAD_KINDS)}, got {kind!r}")
        self._unpad = kind

    def packing(self, attention_mask: Tensor | None, real: Tensor | None = None) -> Packing | None:
        """The batch's :class:`Packing` when ``unpad`` says to run on real tokens only, else None
        (``real``: the mask's sum when the caller has it already)."""
        if attention_mask is None or self._unpad == "never":
            return None
        if self._unpad == "auto":
            if attention_mask.device.type != "cpu":  # not measured on accelerators: padded there
                return None
            if int(attention_mask.sum() if real is None else real) >= UNPAD_BELOW * attention_mask.numel():
                return None
        return Packing.of(attention_mask)

    def set_attention(self, kind: str) -> "BertEncoder":
        """Switch between the fused SDPA kernel and the explicit math path."""
        self.attention = kind
        return self

    @torch.no_grad()
    def init_weights(self) -> None:
        """BERT's initialisation: N(0, initializer_range) weights, zero biases, unit LayerNorms."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

    # ----------------------------------------------------------------- forward
    def embed_words(self, input_ids: Tensor) -> Tensor:
        """Word-embedding lookup only: what ``inputs_embeds`` expects (SMART perturbs this)."""
        return self.word_embeddings(input_ids)

    def _attention_bias(self, attention_mask: Tensor | None, like: Tensor) -> Tensor | None:
        """[B, T] keep/pad mask -> additive [B, 1, 1, T] bias (0 or the dtype's minimum).

        Built once per forward and shared by all layers. Its dtype is the one attention will
        compute in (the autocast dtype under mixed precision), as SDPA requires; a finite
        minimum rather than -inf keeps a fully padded row finite, as in HF. The row is cut from
        a buffer padded to a multiple of 16 so its strides are aligned: CUDA's memory-efficient
        kernel would otherwise pad a copy of the bias in every layer.
        """
        if attention_mask is None:
            return None
        dtype = like.dtype
        if torch.is_autocast_enabled(like.device.type):
            dtype = torch.get_autocast_dtype(like.device.type)
        B, T = attention_mask.shape
        pad = attention_mask.to(device=like.device) == 0
        bias = torch.zeros(B, 1, 1, -(-T // 16) * 16, dtype=dtype, device=like.device)[..., :T]
        return bias.masked_fill_(pad[:, None, None, :], torch.finfo(dtype).min)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
    ) -> EncoderOutput:
        """Encode a batch. ``attention_mask``: 1 = token, 0 = padding (default: all tokens).

        ``inputs_embeds`` replaces the word-embedding lookup only; position and token-type
        embeddings are still added here, once.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        words = self.embed_words(input_ids) if inputs_embeds is None else inputs_embeds
        T = words.shape[1]
        limit = self.config.max_position_embeddings
        if T > limit:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings {limit}")
        if token_type_ids is None:  # all segment 0: add the row, skip the lookup
            x = words + self.token_type_embeddings.weight[0]
        else:
            x = words + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings.weight[:T]
        bias = self._attention_bias(attention_mask, x)
        positions = x.shape[0] * T
        real = attention_mask.detach().sum() if attention_mask is not None else None  # once, for both uses
        packing = self.packing(attention_mask, real)
        if self.training:
            self.tokens.add(positions if real is None else real, positions,
                            packing.index.numel() if packing is not None else positions)
        if packing is not None:
            x = packing.pack(x)
        x = self.embed_dropout(self.embed_norm(x))

        kind = self._attention
        use_checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if use_checkpoint:
                x = checkpoint(layer, x, bias, kind, packing, use_reentrant=False)
            else:
                x = layer(x, bias, kind, packing)
        if packing is not None:
            x = packing.pad(x)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return EncoderOutput(last_hidden_state=x, pooler_output=pooled)
