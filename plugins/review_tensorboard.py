"""TensorBoard review: confusion-matrix images and the HParams dashboard, from event hooks.

The engine already writes, into every run folder's own event files (``mtbert/engine/run.py``
and ``mtbert/engine/trainer.py``; TensorBoard names the run after the folder):

* ``train/loss/<task>`` and ``train/loss/total`` (mean over the last ``train.log_every`` steps),
  ``train/lr``, ``train/weight/<task>`` (the loss combiner's weights),
  ``train/<transform>/<key>`` (``train/pcgrad/conflict_rate``, ``train/pcgrad/mean_cosine``,
  ...), ``train/<regularizer>/<task>`` (``train/smart/sst``: SMART's penalty per task);
* ``dev/<metric>`` after every evaluation (``dev/sst_acc``, ``dev/para_acc``,
  ``dev/sts_pearson``, ``dev/mean`` and the extra per-task metrics), step = optimizer step, and
  the same values as ``dev_by_examples/<metric>``, step = training examples seen, which means
  the same amount of data whether a step trains one task or all of them;
* the text summaries ``recipe`` (the resolved TOML) and ``plugins`` (what made the run).

This plugin adds, through the ``mtbert_on_run_start``, ``mtbert_on_evaluate`` and
``mtbert_on_run_end`` event hooks only (the engine knows nothing about it):

``confusion/<task>`` (images, one per evaluation, step = the optimizer step)
    For every classification task (``label_kind`` binary or multiclass; regression tasks such
    as ``sts`` get none) the dev confusion matrix: rows are the true classes, columns the
    predicted ones, each cell showing its count and shaded by the fraction of its row (the
    class's recall), so the diagonal of a good model is dark. With matplotlib the axes are
    titled and the ticks carry the task's class names; without it a plain heat map with class
    ids (:mod:`mtbert.review_images`, exported by :mod:`mtbert.api`).
HParams dashboard
    The recipe values that can change a run's results are hparams, keyed by their path
    (``optim.lr``, ``tasks.sts.head.name``, ``gradient_transforms[0].name``; lists of numbers
    become strings such as ``"[0.9, 0.999]"``; booleans ``"true"``/``"false"``; unset values
    are left out; ``gradient_transforms``, ``regularizers``, ``stages`` and ``tasks`` also
    hold the names they list, ``"none"`` when empty, so adding a component shows as one
    differing column). Keys that change nothing (the name, threads, device, progress bars,
    logging and prediction switches, the data cache and folder, the evaluation batch size,
    the ``[sweep]`` table: :data:`NOT_RESULT_KEYS`) are left out, so the columns that differ
    between runs are few and TensorBoard lists them first. The session-start record is
    written into the run's own event files when the run starts (so an unfinished run still
    shows its hparams) and the session-end record when it finishes. The metrics are scalars
    ``hparam/<metric>``: the best dev evaluation's metrics (``hparam/mean``,
    ``hparam/sst_acc``, ...), written when the run ends.

Why not ``SummaryWriter.add_hparams``: it writes into a sub-folder named after the time, so
the hparams and the run's own curves land in two different TensorBoard runs; and it writes an
"experiment" record, of which TensorBoard uses one arbitrary run's, so keys that only some
compared recipes have (a gradient transform, a regularizer) would be hidden. Writing only the
session records lets TensorBoard build the experiment from every run's keys, so
``tensorboard --logdir runs`` compares all runs side by side. The price: TensorBoard then
offers every scalar of the runs as a metric column too (``hparam/*`` are the ones to tick).

No recipe options: the plugin is on when installed; ``MTBERT_DISABLE_PLUGINS=review-tensorboard``
turns it off. A failure to draw or write is reported as a warning and never stops training.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any

from mtbert.api import confusion_matrix, confusion_picture, flatten_recipe, hookimpl

CLASSIFICATION_KINDS = ("binary", "multiclass")

#: Recipe keys (``fnmatch`` patterns) that do not change what a run computes or scores on dev.
NOT_RESULT_KEYS = (
    "name", "description", "requires", "train.threads", "train.progress", "train.device", "train.log_every",
    "train.predict", "train.checkpoint_every", "train.keep_last", "data.cache", "data.dir", "data.eval_batch_size",
    "tasks.*.test_file", "tasks.*.test_limit", "sweep.*",
)


def changes_results(key: str) -> bool:
    """Whether a flattened recipe key can change a run's results (see :data:`NOT_RESULT_KEYS`)."""
    return not any(fnmatch.fnmatchcase(key, pattern) for pattern in NOT_RESULT_KEYS)


def recipe_hparams(table: Any) -> dict[str, Any]:
    """Recipe values by dotted key (:func:`mtbert.api.flatten_recipe`), converted to what the
    HParams dashboard accepts: lists become their JSON text, booleans ``"true"``/``"false"``,
    and ``None`` is left out."""
    out: dict[str, Any] = {}
    for key, value in flatten_recipe(table).items():
        if isinstance(value, list):
            out[key] = json.dumps(value)
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, (int, float, str)):
            out[key] = value
        elif value is not None:
            out[key] = str(value)
    return out


def result_hparams(recipe: dict[str, Any]) -> dict[str, Any]:
    """The HParams dashboard's values of a resolved recipe: :func:`recipe_hparams` less neutral keys.

    Plus one summary value per list of components and for the tasks (``gradient_transforms =
    "pcgrad"``, ``regularizers = "none"``, ``tasks = "para, sst, sts"``): TensorBoard marks a
    column as differing only from the values the runs have, so a key that only some runs have
    (``gradient_transforms[0].name``) never "differs"; these summaries exist in every run.
    """
    values = {k: v for k, v in recipe_hparams(recipe).items() if changes_results(k)}
    for key in ("gradient_transforms", "regularizers", "stages"):
        items = recipe.get(key)
        if isinstance(items, list):
            values.pop(key, None)  # recipe_hparams' "[]" of an empty list
            values[key] = ", ".join(str(item.get("name")) for item in items if isinstance(item, dict)) or "none"
    if isinstance(recipe.get("tasks"), dict):
        values["tasks"] = ", ".join(sorted(recipe["tasks"]))
    return values


def _session_start(hparams: dict[str, Any]) -> Any:
    """The SessionStartInfo summary of ``torch.utils.tensorboard.summary.hparams`` (no experiment)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    _, start, _ = hparams_summaries(hparams, {})
    return start


def _session_end() -> Any:
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    _, _, end = hparams_summaries({}, {})
    return end


def _writer(run: Any) -> Any:
    log = getattr(run, "log", None)
    return getattr(log, "writer", None)


def _warn(run: Any, what: str, exc: BaseException) -> None:
    warn = getattr(run, "warn", None)
    if warn is not None:
        warn(f"review-tensorboard: {what} not written: {type(exc).__name__}: {exc}")


@hookimpl
def mtbert_on_run_start(run: Any) -> None:
    writer = _writer(run)
    if writer is None or getattr(run, "resume_state", None) is not None:
        return  # a resumed run wrote its session start the first time
    try:
        writer._get_file_writer().add_summary(_session_start(result_hparams(run.recipe.to_dict())))
    except Exception as exc:  # review must never stop training
        _warn(run, "hparams", exc)


@hookimpl
def mtbert_on_evaluate(run: Any, stage: str, epoch: int, step: int, metrics: dict[str, float],
                       predictions: dict[str, dict[str, list]]) -> None:
    writer = _writer(run)
    if writer is None:
        return
    for name, output in predictions.items():
        task = run.tasks.get(name)
        spec = getattr(task, "spec", None)
        if spec is None or spec.label_kind not in CLASSIFICATION_KINDS:
            continue
        try:
            matrix = confusion_matrix(output["predictions"], output["labels"], spec.num_classes)
            picture = confusion_picture(matrix, getattr(spec, "class_names", None),
                                        f"{name} dev, {stage} epoch {epoch} (step {step})")
            writer.add_image(f"confusion/{name}", picture, step, dataformats="HWC")
        except Exception as exc:
            _warn(run, f"confusion/{name}", exc)


@hookimpl
def mtbert_on_run_end(run: Any, summary: dict[str, Any]) -> None:
    writer = _writer(run)
    if writer is None:
        return
    try:
        chosen = summary.get("best") or summary.get("last")
        step = getattr(run, "global_step", 0)
        for key, value in ((chosen or {}).get("dev") or {}).items():
            writer.add_scalar(f"hparam/{key}", float(value), step)
        writer._get_file_writer().add_summary(_session_end())
        writer.flush()
    except Exception as exc:
        _warn(run, "hparams", exc)
