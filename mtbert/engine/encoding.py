"""How input formats call the encoder: one sequence, or the two sentences of a pair apart.

Shared by the builtin input formats (``separate-pair``, ``hybrid-pair``) and open to third-party
ones through :mod:`mtbert.api`: a batch's inputs for sequence ``k`` are the keys
``input_ids_k``, ``attention_mask_k`` and ``token_type_ids_k`` (no suffix for a single sequence).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from mtbert.engine.components import Features


def batch_labels(encoded: Any, indices: Sequence[int], dtype: torch.dtype) -> torch.Tensor | None:
    """The labels of ``indices`` as one tensor, or None for an unlabelled (test) split."""
    values = [encoded.labels[i] for i in indices]
    if any(v is None for v in values):
        return None
    return torch.tensor(values, dtype=dtype)


def sequence_inputs(inputs: dict[str, torch.Tensor], suffix: str = "") -> dict[str, torch.Tensor]:
    return {
        "input_ids": inputs[f"input_ids{suffix}"],
        "attention_mask": inputs[f"attention_mask{suffix}"],
        "token_type_ids": inputs[f"token_type_ids{suffix}"],
    }


def run_encoder(encoder: Any, inputs: dict[str, torch.Tensor], inputs_embeds: torch.Tensor | None = None):
    """The encoder on one sequence's inputs; ``inputs_embeds`` replaces the word-embedding lookup."""
    if inputs_embeds is None:
        return encoder(**inputs)
    return encoder(
        attention_mask=inputs["attention_mask"], token_type_ids=inputs["token_type_ids"], inputs_embeds=inputs_embeds
    )


def encode_sentence_pairs(encoder: Any, first: dict[str, torch.Tensor], second: dict[str, torch.Tensor],
                          inputs_embeds: tuple[torch.Tensor, ...] | None = None) -> Features:
    """One feature set per sentence of a pair batch. With gradients (training), both sentences go
    through one encoder call and are split back afterwards; without (evaluation), one call each.

    One call of ``2B`` rows instead of two of ``B``: half the kernel launches, larger matmuls
    and one dense word-embedding gradient per step instead of two: a Quora plus an STS training
    step of batch 16 took 0.95x the time of two calls on a 2-core CPU
    (benchmarks/test_pair_encoding.py; figures in benchmarks/README.md). Evaluation batches are
    large and sorted by length already, and stacking pads each side to the longer one: with
    stacking in evaluation too, the evaluation benchmark measured 1.11x the old path, no better
    than 1.12-1.14x without (benchmarks/README.md, runs 1, 2 and 4), so evaluation keeps two
    calls. Each sentence attends only to itself either way, so both give the same features up
    to float rounding (tests/test_heads_inputs.py).
    ``inputs_embeds`` (e.g. SMART's perturbed word embeddings) holds one tensor per sentence.
    """
    if not torch.is_grad_enabled():
        return encode_apart(encoder, first, second, inputs_embeds)
    embeds = None
    if inputs_embeds is not None:
        embeds = stack_right_padded(inputs_embeds[0], inputs_embeds[1])
    out = run_encoder(encoder, {k: stack_right_padded(first[k], second[k]) for k in first}, embeds)
    rows, len_1, len_2 = first["input_ids"].shape[0], first["input_ids"].shape[1], second["input_ids"].shape[1]
    hidden, pooled = out.last_hidden_state, out.pooler_output
    return Features(
        hidden=(hidden[:rows, :len_1], hidden[rows:, :len_2]),
        masks=(first["attention_mask"], second["attention_mask"]),
        pooled=(pooled[:rows], pooled[rows:]),
    )


def encode_apart(encoder: Any, first: dict[str, torch.Tensor], second: dict[str, torch.Tensor],
                 inputs_embeds: tuple[torch.Tensor, ...] | None = None) -> Features:
    """Each sentence of a pair batch in its own encoder call (what evaluation does)."""
    embeds = inputs_embeds or (None, None)
    one, two = run_encoder(encoder, first, embeds[0]), run_encoder(encoder, second, embeds[1])
    return Features(
        hidden=(one.last_hidden_state, two.last_hidden_state),
        masks=(first["attention_mask"], second["attention_mask"]),
        pooled=(one.pooler_output, two.pooler_output),
    )


def stack_right_padded(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``first`` above ``second`` along the batch, the shorter right-padded with zeros (ids 0,
    mask 0, zero embeddings) to the longer one's length."""
    length = max(first.shape[1], second.shape[1])

    def padded(t: torch.Tensor) -> torch.Tensor:
        if t.shape[1] == length:
            return t
        pad = [0, 0] * (t.dim() - 2) + [0, length - t.shape[1]]
        return torch.nn.functional.pad(t, pad)

    return torch.cat([padded(first), padded(second)], dim=0)
