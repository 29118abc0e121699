"""BERT's masked-language-model objective: the masking of token ids, the MLM head, and the distinct sentences it trains on.

Devlin, Chang, Lee & Toutanova 2019, "BERT", section 3.1 and appendix A.1. The ``mlm`` stage
trains the encoder with them (its module docstring says how); they live beside the encoder
because they are BERT's, not the stage's.

Masking (:func:`mask_tokens`): each token is selected with probability ``mask_prob`` (0.15),
never ``[CLS]``, ``[SEP]``, ``[PAD]``, ``[UNK]`` or ``[MASK]``; a selected token becomes
``[MASK]`` with probability ``mask_replace`` (0.8), a token drawn uniformly from the whole
vocabulary with probability ``random_replace`` (0.1, as in BERT's own data script), and
stays itself otherwise (0.1). The loss is the cross-entropy of the selected positions only
(labels are -100 elsewhere), averaged over them; the output layer runs on those positions
only, so the 30,522-way projection costs 15% of what a full-sequence head would.

The MLM head is BERT's: ``Linear(H, H) -> hidden_act (gelu) -> LayerNorm``, then a decoder
whose weight *is* the encoder's word-embedding matrix (tied, one tensor: the embedding also
learns from the output side), plus an output bias. A new head is initialised as BERT
initialises (weights N(0, initializer_range), zero biases, unit LayerNorm). When the checkpoint
carried its pre-training head (``cls.predictions.*`` in HF names, as ``bert-base-uncased``
does; MiniLM does not), that transform and bias are used instead, and the run says so.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtbert.errors import CheckpointError
from mtbert.model.bert import hidden_activation

#: The label of positions that are not predicted (cross-entropy's default ignore_index).
IGNORE_INDEX = -100


# --------------------------------------------------------------------------- masking
def tokenize_unique(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text; texts that tokenize identically kept once; texts with no token dropped."""
    seen: set[tuple[int, ...]] = set()
    out: list[list[int]] = []
    for ids in tokenizer.encode(texts, max_length=max_length):
        key = tuple(ids)
        if len(ids) > 2 and key not in seen:  # more than [CLS] [SEP]
            seen.add(key)
            out.append(ids)
    return out


def mask_tokens(
    ids: torch.Tensor,
    special_mask: torch.Tensor,
    vocab_size: int,
    mask_id: int,
    prob: float,
    generator: torch.Generator | None = None,
    *,
    mask_replace: float = 0.8,
    random_replace: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of a batch of token ids: returns ``(inputs, labels)``.

    Each position whose ``special_mask`` is False is selected with probability ``prob``.
    ``labels`` holds the original id at selected positions and -100 everywhere else.
    ``inputs`` is ``ids`` with each selected position replaced by ``mask_id`` (probability
    ``mask_replace``), by a token drawn uniformly from ``[0, vocab_size)`` (probability
    ``random_replace``) or left unchanged (the rest). Pure: ``ids`` is not modified; all
    draws come from ``generator`` (on its device, then moved to ``ids``'s).
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    if mask_replace < 0 or random_replace < 0 or mask_replace + random_replace > 1.0 + 1e-9:
        raise ValueError("mask_replace and random_replace must be non-negative and sum to at most 1")
    draw_device = generator.device if generator is not None else ids.device
    shape = ids.shape
    select = torch.rand(shape, generator=generator, device=draw_device).to(ids.device)
    how = torch.rand(shape, generator=generator, device=draw_device).to(ids.device)
    random_ids = torch.randint(vocab_size, shape, generator=generator, device=draw_device).to(ids.device, ids.dtype)
    selected = (select < prob) & ~special_mask.to(device=ids.device, dtype=torch.bool)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    to_mask = selected & (how < mask_replace)
    to_random = selected & (how >= mask_replace) & (how < mask_replace + random_replace)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


# --------------------------------------------------------------------------- the MLM head
#: Our MLM head's tensors -> the checkpoint's names (``cls.`` stripped), in order of preference.
PRETRAINED_NAMES: dict[str, tuple[str, ...]] = {
    "dense.weight": ("predictions.transform.dense.weight",),
    "dense.bias": ("predictions.transform.dense.bias",),
    "norm.weight": ("predictions.transform.LayerNorm.weight",),
    "norm.bias": ("predictions.transform.LayerNorm.bias",),
    "bias": ("predictions.bias", "predictions.decoder.bias"),
}


class MaskedLMHead(nn.Module):
    """BERT's masked-LM head; the decoder weight is the encoder's word-embedding parameter."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        config = encoder.config
        embeddings = encoder.word_embeddings.weight
        hidden, vocab = embeddings.shape[1], embeddings.shape[0]
        self.dense = nn.Linear(hidden, hidden, device=embeddings.device)
        self.act = hidden_activation(config.hidden_act)  # BERT's MLM transform uses the encoder's activation
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps, device=embeddings.device)
        self.decoder = nn.Linear(hidden, vocab, bias=False, device="meta")
        self.decoder.weight = embeddings  # tied: the same Parameter, not a copy
        self.bias = nn.Parameter(torch.zeros(vocab, device=embeddings.device))
        self.reset_parameters(config.initializer_range)

    @torch.no_grad()
    def reset_parameters(self, std: float) -> None:
        """BERT's initialisation of the new layers (the tied decoder is left alone)."""
        self.dense.weight.normal_(0.0, std)
        self.dense.bias.zero_()
        self.norm.weight.fill_(1.0)
        self.norm.bias.zero_()
        self.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., H]`` hidden states -> ``[..., V]`` vocabulary logits."""
        return self.decoder(self.norm(self.act(self.dense(hidden)))) + self.bias

    def own_parameters(self) -> list[nn.Parameter]:
        """The head's parameters that are not the encoder's (the tied decoder excluded)."""
        return [self.dense.weight, self.dense.bias, self.norm.weight, self.norm.bias, self.bias]

    def own_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k != "decoder.weight"}

    def load_own_state(self, state: dict[str, torch.Tensor]) -> None:
        own = self.own_state()
        if set(state) != set(own):
            raise CheckpointError(f"mlm stage: saved MLM head has tensors {sorted(state)}, expected {sorted(own)}")
        with torch.no_grad():
            for key, value in state.items():
                own[key].copy_(value)

    @torch.no_grad()
    def load_pretrained(self, extra_state: dict[str, torch.Tensor]) -> str | None:
        """Use a checkpoint's pre-training MLM head if it has a complete one.

        Returns a line for the run to say when it was used or had to be refused, None when
        the checkpoint carries no MLM head at all.
        """
        found: dict[str, torch.Tensor] = {}
        for ours, names in PRETRAINED_NAMES.items():
            for name in names:
                if name in extra_state:
                    found[ours] = extra_state[name]
                    break
        if not found:
            return None
        own = self.own_state()
        missing = [k for k in own if k not in found]
        wrong = [k for k in found if tuple(found[k].shape) != tuple(own[k].shape)]
        if missing or wrong:
            problems = [f"missing {PRETRAINED_NAMES[k][0]}" for k in missing]
            problems += [f"{PRETRAINED_NAMES[k][0]} has shape {tuple(found[k].shape)}, expected {tuple(own[k].shape)}"
                         for k in wrong]
            return f"mlm: the checkpoint's MLM head is incomplete ({'; '.join(problems)}); using a new one"
        for key, value in found.items():
            own[key].copy_(value.to(own[key].dtype))
        note = ""
        decoder = extra_state.get("predictions.decoder.weight")
        if decoder is not None and (decoder.shape != self.decoder.weight.shape or not torch.equal(
                decoder.to(self.decoder.weight), self.decoder.weight)):
            note = " (its separate decoder weight is ignored: the decoder stays tied to the word embeddings)"
        return f"mlm: using the checkpoint's pretrained MLM head (transform and output bias){note}"
