"""Builtin input formats: how a task's sentences reach the encoder.

``single``
    One sentence per example: ``[CLS] s [SEP]``.
``separate-pair``
    Sentence pairs, each sentence encoded on its own (a siamese encoder, as in
    Sentence-BERT); the head receives two feature sets and combines them.

Both tokenize each split once and pad every batch to its longest sequence (dynamic padding),
or to ``pad_to`` tokens when the engine asks for fixed-length batches (``data.padding =
"max_length"``, kept to measure what dynamic padding saves: benchmarks/test_epoch.py).
The concatenated-pair format (``[CLS] a [SEP] b [SEP]`` with segment ids) is its own plugin.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import torch

from mtbert.api import Batch, EncodedExamples, Features, hookimpl, pad_batch


def _labels(encoded: EncodedExamples, indices: Sequence[int], dtype: torch.dtype) -> torch.Tensor | None:
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


@attrs.define
class SingleSentence:
    """One sentence per example, ``[CLS] s [SEP]``."""

    num_sequences = 1  # encode() gives one feature set
    default_for = ("single",)  # the input format of single-sentence tasks unless a recipe names one

    def check(self, task: Any) -> str | None:
        if task.input_kind != "single":
            return "the task has sentence pairs; use separate-pair or concat-pair"
        return None

    def encode_examples(self, tokenizer: Any, examples: Sequence[Any], max_length: int) -> EncodedExamples:
        ids = tokenizer.encode([e.texts[0] for e in examples], max_length=max_length)
        return EncodedExamples(
            ids=[e.id for e in examples], sequences=[ids], type_ids=[None], labels=[e.label for e in examples]
        )

    def collate(self, encoded: EncodedExamples, indices: Sequence[int], task: str, label_dtype: torch.dtype,
                pad_to: int | None = None) -> Batch:
        inputs = pad_batch([encoded.sequences[0][i] for i in indices], pad_to=pad_to)
        return Batch(task=task, inputs=inputs, labels=_labels(encoded, indices, label_dtype), ids=[encoded.ids[i] for i in indices])

    def sequences(self, batch: Batch) -> list[dict[str, torch.Tensor]]:
        return [sequence_inputs(batch.inputs)]

    def encode(self, encoder: Any, batch: Batch, inputs_embeds: tuple[torch.Tensor, ...] | None = None) -> Features:
        out = run_encoder(encoder, sequence_inputs(batch.inputs), None if inputs_embeds is None else inputs_embeds[0])
        return Features(hidden=(out.last_hidden_state,), masks=(batch.inputs["attention_mask"],), pooled=(out.pooler_output,))


@attrs.define
class SeparatePair:
    """Each sentence of a pair encoded on its own (siamese); the head combines the two."""

    num_sequences = 2  # encode() gives one feature set per sentence
    default_for = ("pair",)  # the input format of sentence-pair tasks unless a recipe names one

    def check(self, task: Any) -> str | None:
        if task.input_kind != "pair":
            return "the task has single sentences; use single"
        return None

    def encode_examples(self, tokenizer: Any, examples: Sequence[Any], max_length: int) -> EncodedExamples:
        first = tokenizer.encode([e.texts[0] for e in examples], max_length=max_length)
        second = tokenizer.encode([e.texts[1] for e in examples], max_length=max_length)
        return EncodedExamples(
            ids=[e.id for e in examples], sequences=[first, second], type_ids=[None, None],
            labels=[e.label for e in examples],
        )

    def collate(self, encoded: EncodedExamples, indices: Sequence[int], task: str, label_dtype: torch.dtype,
                pad_to: int | None = None) -> Batch:
        a = pad_batch([encoded.sequences[0][i] for i in indices], pad_to=pad_to)
        b = pad_batch([encoded.sequences[1][i] for i in indices], pad_to=pad_to)
        inputs = {**{f"{k}_1": v for k, v in a.items()}, **{f"{k}_2": v for k, v in b.items()}}
        return Batch(task=task, inputs=inputs, labels=_labels(encoded, indices, label_dtype), ids=[encoded.ids[i] for i in indices])

    def sequences(self, batch: Batch) -> list[dict[str, torch.Tensor]]:
        return [sequence_inputs(batch.inputs, "_1"), sequence_inputs(batch.inputs, "_2")]

    def encode(self, encoder: Any, batch: Batch, inputs_embeds: tuple[torch.Tensor, ...] | None = None) -> Features:
        """One feature set per sentence (:func:`encode_sentence_pairs`)."""
        return encode_sentence_pairs(encoder, sequence_inputs(batch.inputs, "_1"), sequence_inputs(batch.inputs, "_2"),
                                     inputs_embeds)


def encode_sentence_pairs(encoder: Any, first: dict[str, torch.Tensor], second: dict[str, torch.Tensor],
                          inputs_embeds: tuple[torch.Tensor, ...] | None = None) -> Features:
    """One feature set per sentence of a pair batch. With gradients (training), both sentences go
    through one encoder call and are split back afterwards; without (evaluation), one call each.

    One call of ``2B`` rows instead of two of ``B``: half the kernel launches, larger matmuls
    and one dense word-embedding gradient per step instead of two: a Quora plus an STS training
    step of batch 16 took 0.95x the time of two calls on a 2-core CPU
    (benchmarks/test_pair_encoding.py; figures in benchmarks/README.md). Evaluation batches are
    large and sorted by length already, and stacking pads each side to the longer one: there it
    was 5% slower in an A/B, so evaluation keeps two calls. Each sentence attends only to itself
    either way, so both give the same features up to float rounding (tests/test_heads_inputs.py).
    ``inputs_embeds`` (e.g. SMART's perturbed word embeddings) holds one tensor per sentence.
    """
    if not torch.is_grad_enabled():
        return encode_apart(encoder, first, second, inputs_embeds)
    embeds = None
    if inputs_embeds is not None:
        embeds = _stack_right_padded(inputs_embeds[0], inputs_embeds[1])
    out = run_encoder(encoder, {k: _stack_right_padded(first[k], second[k]) for k in first}, embeds)
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


def _stack_right_padded(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``first`` above ``second`` along the batch, the shorter right-padded with zeros (ids 0,
    mask 0, zero embeddings) to the longer one's length."""
    length = max(first.shape[1], second.shape[1])

    def padded(t: torch.Tensor) -> torch.Tensor:
        if t.shape[1] == length:
            return t
        pad = [0, 0] * (t.dim() - 2) + [0, length - t.shape[1]]
        return torch.nn.functional.pad(t, pad)

    return torch.cat([padded(first), padded(second)], dim=0)


@hookimpl
def mtbert_register_input_formats(register):
    register("single", SingleSentence)
    register("separate-pair", SeparatePair)
