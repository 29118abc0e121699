"""The ``hybrid-pair`` input format: a sentence pair encoded apart *and* together.

Three sequences per example: sentence a, sentence b (as ``separate-pair`` encodes them) and the
concatenated pair ``[CLS] a [SEP] b [SEP]`` with segment ids (as ``concat-pair`` does). The head
sees three feature sets: its ``pair`` views ``u``, ``v``, ``sum``, ``abs-diff``, ``product`` come
from the two sentences and the view ``cross`` from the concatenated pair, e.g.
``pair = ["u", "v", "abs-diff", "product", "cross"]`` for the ``linear`` or ``mlp`` head.

Why: a siamese (bi-)encoder compares two sentence embeddings, which is what all-MiniLM-L6-v2 was
trained for; a cross-encoder lets every token of one sentence attend to the other, which
paraphrase detection gains from (Reimers & Gurevych 2019, Sentence-BERT, table 1 against BERT).
On MiniLM the cross-encoder alone (``concat-pair``) scored below the bi-encoder in RESULTS.md's
ablations; the hybrid keeps the bi-encoder features and lets the head add the cross view. The
price is one more encoder pass per pair, over both sentences (about twice the pair tokens).

Training stacks the two sentences into one encoder call (see :func:`encode_sentence_pairs`) and
encodes the concatenated pair in a second call; SMART's ``inputs_embeds`` hold three tensors,
one per sequence.
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
class HybridPair:
    """A pair encoded apart (u, v) and concatenated (the ``cross`` view), three feature sets."""

    num_sequences = 3  # sentence a, sentence b, the concatenated pair

    def check(self, task: Any) -> str | None:
        if task.input_kind != "pair":
            return "the task has single sentences; hybrid-pair needs sentence pairs (use single)"
        return None

    def encode_examples(self, tokenizer: Any, examples: Sequence[Any], max_length: int) -> EncodedExamples:
        """Sentence a, sentence b, and ``[CLS] a [SEP] b [SEP]`` with its segment ids (the pair
        truncated longest-first to ``max_length``, as ``concat-pair`` does)."""
        firsts, seconds = [e.texts[0] for e in examples], [e.texts[1] for e in examples]
        pairs = tokenizer.encode_pairs(firsts, seconds, max_length=max_length)
        return EncodedExamples(
            ids=[e.id for e in examples],
            sequences=[tokenizer.encode(firsts, max_length=max_length), tokenizer.encode(seconds, max_length=max_length),
                       [ids for ids, _ in pairs]],
            type_ids=[None, None, [types for _, types in pairs]],
            labels=[e.label for e in examples],
        )

    def collate(self, encoded: EncodedExamples, indices: Sequence[int], task: str, label_dtype: torch.dtype,
                pad_to: int | None = None) -> Batch:
        inputs: dict[str, torch.Tensor] = {}
        for slot in range(3):
            type_ids = encoded.type_ids[slot]
            padded = pad_batch([encoded.sequences[slot][i] for i in indices],
                               None if type_ids is None else [type_ids[i] for i in indices], pad_to=pad_to)
            inputs.update({f"{key}_{slot + 1}": value for key, value in padded.items()})
        return Batch(task=task, inputs=inputs, labels=batch_labels(encoded, indices, label_dtype),
                     ids=[encoded.ids[i] for i in indices])

    def sequences(self, batch: Batch) -> list[dict[str, torch.Tensor]]:
        return [sequence_inputs(batch.inputs, f"_{slot}") for slot in (1, 2, 3)]

    def encode(self, encoder: Any, batch: Batch, inputs_embeds: tuple[torch.Tensor, ...] | None = None) -> Features:
        first, second, pair = self.sequences(batch)
        apart = encode_sentence_pairs(encoder, first, second, None if inputs_embeds is None else inputs_embeds[:2])
        together = run_encoder(encoder, pair, None if inputs_embeds is None else inputs_embeds[2])
        return Features(
            hidden=(*apart.hidden, together.last_hidden_state),
            masks=(*apart.masks, pair["attention_mask"]),
            pooled=(*apart.pooled, together.pooler_output),
        )


@hookimpl
def mtbert_register_input_formats(register):
    register("hybrid-pair", HybridPair)
