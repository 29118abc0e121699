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

from mtbert.api import (
    Batch, EncodedExamples, Features, batch_labels, encode_sentence_pairs, hookimpl, pad_batch, run_encoder,
    sequence_inputs,
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
        return Batch(task=task, inputs=inputs, labels=batch_labels(encoded, indices, label_dtype), ids=[encoded.ids[i] for i in indices])

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
        return Batch(task=task, inputs=inputs, labels=batch_labels(encoded, indices, label_dtype), ids=[encoded.ids[i] for i in indices])

    def sequences(self, batch: Batch) -> list[dict[str, torch.Tensor]]:
        return [sequence_inputs(batch.inputs, "_1"), sequence_inputs(batch.inputs, "_2")]

    def encode(self, encoder: Any, batch: Batch, inputs_embeds: tuple[torch.Tensor, ...] | None = None) -> Features:
        """One feature set per sentence (:func:`encode_sentence_pairs`)."""
        return encode_sentence_pairs(encoder, sequence_inputs(batch.inputs, "_1"), sequence_inputs(batch.inputs, "_2"),
                                     inputs_embeds)


@hookimpl
def mtbert_register_input_formats(register):
    register("single", SingleSentence)
    register("separate-pair", SeparatePair)
