"""Evaluation: predictions and metrics of every task on a split.

Runs under ``torch.inference_mode`` with length-sorted batches (little padding) and restores
the file order afterwards. ``mean`` is the plain average of the main tasks' primary scores
(SST accuracy, paraphrase accuracy, STS Pearson r: the reports' "overall" score); when a recipe
has no main task it averages the primary scores of the tasks it has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mtbert.engine.batches import TaskData, eval_batches
from mtbert.engine.checkpoint import load_weights
from mtbert.engine.device import autocast
from mtbert.engine.progress import track


def mean_score(metrics: dict[str, float], tasks: dict[str, TaskData]) -> float | None:
    main = [t.spec.metric_key for t in tasks.values() if t.spec.main and t.spec.metric_key in metrics]
    keys = main or [t.spec.metric_key for t in tasks.values() if t.spec.metric_key in metrics]
    if not keys:
        return None
    return sum(metrics[k] for k in keys) / len(keys)


@torch.inference_mode()
def predict_split(
    model: Any, task: TaskData, split: str, *, device: torch.device, precision: str, batch_size: int,
    progress: bool = False,
) -> tuple[list[str], list[float | int], list[Any]]:
    """(ids, predictions, labels) in file order for one task's split (a bar on a terminal with ``progress``)."""
    head = model.heads[task.name]
    encoded = task.splits[split].encoded
    predictions: list[Any] = [None] * len(encoded)
    batches = eval_batches(encoded, batch_size)
    for indices in track(batches, len(batches), f"{split} {task.name}", enabled=progress):
        batch = task.collate(split, indices).to(device)
        with autocast(device, precision):
            raw = model(batch)
        values = head.predict(raw.float()).cpu().tolist()
        for i, value in zip(indices, values):
            predictions[i] = value
    return list(encoded.ids), predictions, list(encoded.labels)


def evaluate(
    model: Any, tasks: dict[str, TaskData], split: str, *, device: torch.device, precision: str, batch_size: int,
    progress: bool = False,
) -> tuple[dict[str, float], dict[str, tuple[list[str], list[Any]]]]:
    """Metrics of every task that has ``split`` loaded, plus ``mean``; and the predictions."""
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    outputs: dict[str, tuple[list[str], list[Any]]] = {}
    try:
        for name, task in tasks.items():
            if split not in task.splits:
                continue
            ids, predictions, labels = predict_split(
                model, task, split, device=device, precision=precision, batch_size=batch_size, progress=progress
            )
            outputs[name] = (ids, predictions)
            if labels and all(label is not None for label in labels):
                metrics.update(task.spec.metrics(predictions, labels))
    finally:
        model.train(was_training)
    mean = mean_score(metrics, tasks)
    if mean is not None:
        metrics["mean"] = mean
    return metrics, outputs


def write_predictions(model: Any, tasks: dict[str, TaskData], weights: Path, out: Path, *, device: torch.device,
                      precision: str, batch_size: int, progress: bool = False,
                      dev_outputs: dict[str, tuple[list[str], list[Any]]] | None = None) -> Path:
    """Dev and test predictions of ``weights`` (the best checkpoint) in the tasks' submission format.

    ``dev_outputs``: the dev predictions the evaluation that saved ``weights`` made (same weights,
    same evaluation code, so the same numbers); given, dev is not predicted a second time (about
    30 s of a 9-minute ablation run on 2 CPU cores).
    """
    state, _ = load_weights(weights)
    model.load_state_dict(state)
    for split in ("dev", "test"):
        if split == "dev" and dev_outputs is not None:
            outputs = dev_outputs
        else:
            _, outputs = evaluate(model, tasks, split, device=device, precision=precision, batch_size=batch_size,
                                  progress=progress)
        for name, (ids, predictions) in outputs.items():
            spec = tasks[name].spec
            spec.write_predictions(out / spec.prediction_filename(split), ids, predictions)
    return out
