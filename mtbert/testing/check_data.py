"""Contract checks of the components that bring data in: tasks, checkpoints and input formats."""

from __future__ import annotations

import csv
import inspect
import tempfile
from pathlib import Path
from typing import Any

import torch

from mtbert import hookimpl
from mtbert.data.tasks import TaskSpec
from mtbert.engine.batches import label_dtype
from mtbert.engine.components import Batch, EncodedExamples, Features
from mtbert.testing.builders import installed_plugins, tiny_plugins
from mtbert.testing.checker import Checker, component_label, isolated, options_instance
from mtbert.testing.world import TINY_HIDDEN, TINY_MAX_LENGTH, TINY_TASKS, tiny_encoder, tiny_examples, tiny_tokenizer


# --------------------------------------------------------------------------- tasks and checkpoints
@isolated
def check_task(spec: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """A task: a TaskSpec whose files, reading, metrics and prediction files fit together."""
    check = Checker("task", f"'{name or getattr(spec, 'name', spec)}'")
    check.require(isinstance(spec, TaskSpec), f"register a mtbert.data.tasks.TaskSpec, not {type(spec).__name__}")
    check.require({"train", "dev"} <= set(spec.files), f"files needs at least 'train' and 'dev', has {sorted(spec.files)}")
    check.require("{split}" in spec.prediction_file,
                  f"prediction_file {spec.prediction_file!r} lacks '{{split}}': dev and test predictions would overwrite each other")
    n = 6
    if spec.label_kind == "regression":
        low, high = spec.label_range
        labels: list[Any] = [low + (high - low) * i / (n - 1) for i in range(n)]
    else:
        labels = [i % spec.num_classes for i in range(n)]
    metrics = check.call("metrics()", spec.metrics, labels, labels)
    check.require(spec.metric_key in metrics, f"metrics() lacks its metric_key {spec.metric_key!r}: {sorted(metrics)}")
    check.close(metrics[spec.metric_key], 1.0, f"{spec.metric_key} of perfect predictions")
    ids = [f"x{i}" for i in range(n)]
    texts = ["the cat runs .", "a dog sleeps in the park ."]
    with tempfile.TemporaryDirectory(prefix="mtbert-check-task-") as tmp:
        folder = Path(tmp)
        for split in ("dev", "test"):
            path = folder / spec.prediction_filename(split)
            check.call("write_predictions()", spec.write_predictions, path, ids, labels)
            read_ids, values = check.call("read_predictions()", spec.read_predictions, path)
            check.require(read_ids == ids, f"prediction file round trip changed the ids: {read_ids}")
            check.close(values, labels, "prediction file round trip")
        for split in ("train", "test"):
            labelled = split != "test"
            path = folder / f"{split}.csv"
            with path.open("w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
                writer.writerow(["", "id", *spec.text_columns, *([spec.label_column] if labelled else [])])
                for i, label in enumerate(labels):
                    row_texts = texts[: len(spec.text_columns)]
                    writer.writerow([i, ids[i], *row_texts, *([label] if labelled else [])])
            result = check.call(f"read() of a {split} file", spec.read, path, split, warn=lambda message: None)
            check.require(len(result.examples) == n and not result.skipped,
                          f"read() of a {split} file in the task's columns gave {len(result.examples)} of {n} rows "
                          f"({result.warning})")
            got = [e.label for e in result.examples]
            if labelled:
                check.close(got, labels, f"labels read from a {split} file")
            else:
                check.require(all(v is None for v in got), "a test file must be read without labels")


@isolated
def check_checkpoint(spec: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """A checkpoint: it loads through ``load_backbone`` into an encoder and a tokenizer that agree."""
    from mtbert.model.backbone import CheckpointSpec, load_backbone

    check = Checker("checkpoint", f"'{name}'" if name else type(spec).__name__)
    check.require(isinstance(spec, CheckpointSpec), f"register a mtbert.model.backbone.CheckpointSpec, not {type(spec).__name__}")
    check.require(isinstance(spec.description, str) and spec.description.strip(), "description is empty")
    under_test = "checkpoint-under-test"

    class Provider:
        @hookimpl
        def mtbert_register_checkpoints(self, register):
            register(under_test, spec)

    with installed_plugins(tiny_plugins(("checkpoint-under-test", Provider()))):
        backbone = check.call("load_backbone()", load_backbone, under_test, seed=0)
    encoder, tokenizer = backbone.encoder, backbone.tokenizer
    check.require(tokenizer.vocab_size <= encoder.config.vocab_size,
                  f"the vocabulary ({tokenizer.vocab_size}) is larger than the encoder's ({encoder.config.vocab_size})")
    ids = tokenizer.encode(["the cat runs in the park .", "a dog ."], max_length=TINY_MAX_LENGTH)
    check.require(all(seq[0] == tokenizer.cls_id and seq[-1] == tokenizer.sep_id for seq in ids),
                  "sentences are not encoded as [CLS] ... [SEP]")
    inputs = tokenizer.pad(ids)
    encoder.eval()
    with torch.no_grad():
        out = check.call("the encoder's forward", encoder, **inputs)
    hidden = encoder.config.hidden_size
    check.require(tuple(out.last_hidden_state.shape) == (2, inputs["input_ids"].shape[1], hidden),
                  f"last_hidden_state has shape {tuple(out.last_hidden_state.shape)}")
    check.require(tuple(out.pooler_output.shape) == (2, hidden), f"pooler_output has shape {tuple(out.pooler_output.shape)}")
    check.finite(out.last_hidden_state, "last_hidden_state")


# --------------------------------------------------------------------------- input formats
@isolated
def check_input_format(options: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """An input format: encode_examples, collate, sequences and encode agree; padding to the longest only."""
    from mtbert.engine.components import InputFormat

    check = Checker("input_format", component_label("input_format", options, name))
    options = options_instance(check, options)
    for method in ("check", "encode_examples", "collate", "sequences", "encode"):
        check.require(callable(getattr(options, method, None)), f"has no {method}() method (see InputFormat)")
    declared = getattr(options, "num_sequences", None)
    check.require(isinstance(declared, int) and declared >= 1,
                  f"num_sequences must be a positive int (how many feature sets encode() gives), not {declared!r}")
    check.require(isinstance(options, InputFormat), "does not follow the InputFormat protocol")
    accepted = []
    for spec in TINY_TASKS.values():
        reason = check.call("check()", options.check, spec)
        check.require(reason is None or isinstance(reason, str), f"check() must return None or a one-line reason, got {reason!r}")
        if reason is None:
            accepted.append(spec)
    check.require(accepted, "check() refuses every tiny task (single sentences and pairs)")
    for kind in getattr(options, "default_for", ()) or ():
        check.require(any(spec.input_kind == kind for spec in accepted),
                      f"default_for names {kind!r}, but check() refuses every tiny {kind} task")
    tokenizer = tiny_tokenizer()
    encoder = tiny_encoder()
    for spec in accepted:
        task = spec.name
        for split in ("train", "test"):
            examples = tiny_examples(task, split)
            encoded = check.call("encode_examples()", options.encode_examples, tokenizer, examples, TINY_MAX_LENGTH)
            check.require(isinstance(encoded, EncodedExamples), f"encode_examples() must return EncodedExamples, not {type(encoded).__name__}")
            check.require(len(encoded) == len(examples) and list(encoded.ids) == [e.id for e in examples],
                          f"encode_examples() ids {list(encoded.ids)[:3]}... do not match the examples' ids in order")
            check.require(list(encoded.labels) == [e.label for e in examples], "encode_examples() labels do not match the examples'")
            slots = len(encoded.sequences)
            check.require(slots >= 1 and len(encoded.type_ids) == slots,
                          f"{slots} sequence slots but {len(encoded.type_ids)} type_ids entries (one per slot, or None)")
            for k, slot in enumerate(encoded.sequences):
                check.require(len(slot) == len(examples), f"sequence slot {k} holds {len(slot)} entries for {len(examples)} examples")
                longest = max(len(ids) for ids in slot)
                check.require(longest <= TINY_MAX_LENGTH, f"a sequence of {longest} tokens exceeds max_length {TINY_MAX_LENGTH}")
                check.require(all(len(ids) > 0 for ids in slot), f"slot {k} has an empty sequence")
                if encoded.type_ids[k] is not None:
                    check.require([len(t) for t in encoded.type_ids[k]] == [len(s) for s in slot],
                                  f"type_ids of slot {k} do not have the lengths of its sequences")
            indices = [3, 1, 0] if len(examples) > 3 else [1, 0]
            batch = check.call("collate()", options.collate, encoded, indices, task, label_dtype(spec))
            check.require(isinstance(batch, Batch), f"collate() must return a Batch, not {type(batch).__name__}")
            check.require(batch.task == task and list(batch.ids) == [encoded.ids[i] for i in indices],
                          "collate() must keep the task name and the chosen examples' ids in order")
            if split == "test":
                check.require(batch.labels is None, "collate() of unlabelled examples must give labels None")
            else:
                check.require(isinstance(batch.labels, torch.Tensor) and batch.labels.dtype == label_dtype(spec),
                              f"labels must be a {label_dtype(spec)} tensor, got {getattr(batch.labels, 'dtype', batch.labels)}")
                check.close(batch.labels, [encoded.labels[i] for i in indices], "collated labels")
            if "pad_to" in inspect.signature(options.collate).parameters:  # data.padding = "max_length"
                fixed = check.call("collate(pad_to=...)", options.collate, encoded, indices, task, label_dtype(spec),
                                   pad_to=TINY_MAX_LENGTH + 4)
                for k, seq in enumerate(check.call("sequences()", options.sequences, fixed)):
                    check.require(seq["input_ids"].shape[1] == TINY_MAX_LENGTH + 4,
                                  f"collate(pad_to={TINY_MAX_LENGTH + 4}) padded sequence {k} to {seq['input_ids'].shape[1]} tokens")
                    check.require(seq["attention_mask"].sum(dim=1).tolist() == [len(encoded.sequences[k][i]) for i in indices],
                                  f"collate(pad_to=...) changed the attention mask of sequence {k}")
            moved = batch.to("cpu")
            check.require(set(moved.inputs) == set(batch.inputs), "Batch.to() lost inputs")
            sequences = check.call("sequences()", options.sequences, batch)
            check.require(len(sequences) == slots, f"sequences() gives {len(sequences)} sequences for {slots} encoded slots")
            for k, seq in enumerate(sequences):
                check.require({"input_ids", "attention_mask", "token_type_ids"} <= set(seq),
                              f"sequence {k} lacks input_ids/attention_mask/token_type_ids: {sorted(seq)}")
                lengths = [len(encoded.sequences[k][i]) for i in indices]
                width = seq["input_ids"].shape[1]
                check.require(width == max(lengths), f"sequence {k} is padded to {width} tokens, but the longest "
                                                     f"example has {max(lengths)}: pad to the longest in the batch only")
                check.require(seq["attention_mask"].shape == seq["input_ids"].shape == seq["token_type_ids"].shape,
                              f"sequence {k}: input_ids, attention_mask and token_type_ids shapes differ")
                check.require(seq["attention_mask"].sum(dim=1).tolist() == lengths,
                              f"sequence {k}: attention_mask marks {seq['attention_mask'].sum(dim=1).tolist()} tokens, "
                              f"the examples have {lengths}")
                for row, (i, length) in enumerate(zip(indices, lengths)):
                    check.require(seq["input_ids"][row, :length].tolist() == list(encoded.sequences[k][i]),
                                  f"sequence {k}, row {row}: input_ids differ from the encoded tokens")
                    if encoded.type_ids[k] is not None:
                        check.require(seq["token_type_ids"][row, :length].tolist() == list(encoded.type_ids[k][i]),
                                      f"sequence {k}, row {row}: token_type_ids differ from the encoded segment ids")
            encoder.eval()
            with torch.no_grad():
                features = check.call("encode()", options.encode, encoder, batch)
                check.require(isinstance(features, Features), f"encode() must return Features, not {type(features).__name__}")
                check.require(features.num_sequences == slots and len(features.masks) == slots and len(features.pooled) == slots,
                              f"encode() gives {features.num_sequences} hidden, {len(features.masks)} masks and "
                              f"{len(features.pooled)} pooled for {slots} sequences")
                check.require(features.num_sequences == declared,
                              f"encode() gives {features.num_sequences} feature sets, but num_sequences says {declared} "
                              f"(heads size their input by it)")
                for k, seq in enumerate(sequences):
                    b, t = seq["input_ids"].shape
                    check.require(tuple(features.hidden[k].shape) == (b, t, TINY_HIDDEN),
                                  f"hidden[{k}] has shape {tuple(features.hidden[k].shape)}, expected {(b, t, TINY_HIDDEN)}")
                    check.require(tuple(features.pooled[k].shape) == (b, TINY_HIDDEN), f"pooled[{k}] has shape {tuple(features.pooled[k].shape)}")
                    check.require(torch.equal(features.masks[k].long(), seq["attention_mask"].long()),
                                  f"masks[{k}] is not sequence {k}'s attention_mask")
                    check.finite(features.hidden[k], f"hidden[{k}]")
                embeds = tuple(encoder.embed_words(seq["input_ids"]) for seq in sequences)
                again = check.call("encode(inputs_embeds=...)", options.encode, encoder, batch, inputs_embeds=embeds)
                for k in range(slots):
                    check.close(again.hidden[k], features.hidden[k],
                                f"encode() with inputs_embeds = the word embeddings must equal plain encode() (sequence {k})", atol=1e-5)


