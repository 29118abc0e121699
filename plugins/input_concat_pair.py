"""The ``concat-pair`` input format: both sentences of a pair in one sequence (a cross-encoder).

Each example becomes ``[CLS] a [SEP] b [SEP]`` with segment (token type) ids 0 for ``[CLS] a
[SEP]`` and 1 for ``b [SEP]``, the input BERT was pre-trained on for next-sentence prediction
(Devlin, Chang, Lee & Toutanova 2019, "BERT: Pre-training of Deep Bidirectional Transformers
for Language Understanding", section 3 and figure 2). Every token of one sentence attends to
every token of the other, which is why cross-encoders beat siamese (``separate-pair``)
encoders on pair tasks (Reimers & Gurevych 2019, "Sentence-BERT", table 1 against BERT), at
the price of one encoder pass per pair instead of per sentence.

The segment ids reach the encoder as ``token_type_ids``: the CS224N skeleton forced them to 0,
which is why report 003's change to token-level concatenation mattered. Pairs longer than
``data.max_length`` are truncated longest-first (tokens are removed from the longer sentence
until the pair fits), as transformers' ``BertTokenizerFast`` does by default.

The head sees one feature set (one sequence); it has no options.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import torch

from mtbert.api import Batch, EncodedExamples, Features, batch_labels, hookimpl, pad_batch


def _inputs(batch: Batch) -> dict[str, torch.Tensor]:
    return {
        "input_ids": batch.inputs["input_ids"],
        "attention_mask": batch.inputs["attention_mask"],
        "token_type_ids": batch.inputs["token_type_ids"],
    }


@attrs.define
class ConcatPair:
    """Both sentences in one sequence, ``[CLS] a [SEP] b [SEP]``, segment ids 0 then 1."""

    num_sequences = 1  # one feature set for the whole pair

    def check(self, task: Any) -> str | None:
        if task.input_kind != "pair":
            return "the task has single sentences; concat-pair needs sentence pairs (use single)"
        return None

    def encode_examples(self, tokenizer: Any, examples: Sequence[Any], max_length: int) -> EncodedExamples:
        pairs = tokenizer.encode_pairs([e.texts[0] for e in examples], [e.texts[1] for e in examples],
                                       max_length=max_length)
        return EncodedExamples(
            ids=[e.id for e in examples],
            sequences=[[ids for ids, _ in pairs]],
            type_ids=[[types for _, types in pairs]],
            labels=[e.label for e in examples],
        )

    def collate(self, encoded: EncodedExamples, indices: Sequence[int], task: str, label_dtype: torch.dtype,
                pad_to: int | None = None) -> Batch:
        type_ids = encoded.type_ids[0]
        inputs = pad_batch(
            [encoded.sequences[0][i] for i in indices],
            None if type_ids is None else [type_ids[i] for i in indices],
            pad_to=pad_to,  # data.padding = "max_length"; None pads to the longest pair
        )
        return Batch(task=task, inputs=inputs, labels=batch_labels(encoded, indices, label_dtype),
                     ids=[encoded.ids[i] for i in indices])

    def sequences(self, batch: Batch) -> list[dict[str, torch.Tensor]]:
        return [_inputs(batch)]

    def encode(self, encoder: Any, batch: Batch, inputs_embeds: tuple[torch.Tensor, ...] | None = None) -> Features:
        inputs = _inputs(batch)
        if inputs_embeds is not None:  # e.g. SMART's perturbed word embeddings replace the lookup
            inputs = {**inputs, "input_ids": None}
        out = encoder(**inputs, inputs_embeds=None if inputs_embeds is None else inputs_embeds[0])
        return Features(hidden=(out.last_hidden_state,), masks=(batch.inputs["attention_mask"],),
                        pooled=(out.pooler_output,))


@hookimpl
def mtbert_register_input_formats(register):
    register("concat-pair", ConcatPair)
