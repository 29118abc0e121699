"""TensorBoard review: confusion-matrix images and the HParams dashboard, from event hooks.

The engine already writes, into every run's ``tb/`` folder (``mtbert/engine/run.py`` and
``mtbert/engine/trainer.py``):

* ``train/loss/<task>`` and ``train/loss/total`` (mean over the last ``train.log_every`` steps),
  ``train/lr``, ``train/weight/<task>`` (the loss combiner's weights),
  ``train/<transform>/<key>`` (``train/pcgrad/conflict_rate``, ``train/pcgrad/mean_cosine``,
  ...), ``train/<regularizer>/<task>`` (``train/smart/sst``: SMART's penalty per task);
* ``dev/<metric>`` after every evaluation (``dev/sst_acc``, ``dev/para_acc``,
  ``dev/sts_pearson``, ``dev/mean`` and the extra per-task metrics);
* the text summaries ``recipe`` (the resolved TOML) and ``plugins`` (what made the run).

This plugin adds, through the ``mtbert_on_run_start``, ``mtbert_on_evaluate`` and
``mtbert_on_run_end`` event hooks only (the engine knows nothing about it):

``confusion/<task>`` (images, one per evaluation, step = the optimizer step)
    For every classification task (``label_kind`` binary or multiclass; regression tasks such
    as ``sts`` get none) the dev confusion matrix: rows are the true classes, columns the
    predicted ones (class ids in the margins), each cell showing its count; a cell's colour
    goes from white to dark blue with the fraction of its row (the class's recall), so the
    diagonal of a good model is dark. Drawn as a uint8 image with a built-in digit font:
    no matplotlib.
HParams dashboard
    Every value of the resolved recipe is an hparam, keyed by its path (``optim.lr``,
    ``tasks.sts.head.name``, ``gradient_transforms[0].name``; lists of numbers become strings
    such as ``"[0.9, 0.999]"``; booleans become ``"true"``/``"false"``; unset values are
    left out). The session-start record is written into the run's own ``tb/`` folder when the
    run starts (so an unfinished run still shows its hparams) and the session-end record when
    it finishes. The metrics are scalars ``hparam/<metric>``: the best dev evaluation's
    metrics (``hparam/mean``, ``hparam/sst_acc``, ...), written when the run ends; the
    dashboard also offers every other scalar of the run (``dev/mean`` is the last evaluation).

Why not ``SummaryWriter.add_hparams``: it writes into a sub-folder named after the time, so
the hparams and the run's own curves land in two different TensorBoard runs; and it writes an
"experiment" record, of which TensorBoard uses one arbitrary run's, so keys that only some
compared recipes have (a gradient transform, a regularizer) would be hidden. Writing only the
session records lets TensorBoard build the experiment from every run's keys, so
``tensorboard --logdir runs`` compares all runs side by side.

No recipe options: the plugin is on when installed; ``MTBERT_DISABLE_PLUGINS=review-tensorboard``
turns it off. A failure to draw or write is reported as a warning and never stops training.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from mtbert.api import confusion_matrix, flatten_recipe, hookimpl

CLASSIFICATION_KINDS = ("binary", "multiclass")

# 3x5 glyphs of the digits (rows top to bottom, "1" = ink).
_DIGITS = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
}
_GLYPH = {d: torch.tensor([[c == "1" for c in row] for row in rows]) for d, rows in _DIGITS.items()}

WHITE = torch.tensor([255.0, 255.0, 255.0])
DARK_BLUE = torch.tensor([8.0, 48.0, 107.0])
MARGIN_COLOUR = torch.tensor([235, 235, 235], dtype=torch.uint8)


def text_mask(text: str, scale: int) -> torch.Tensor:
    """A boolean ``[5*scale, (4*len-1)*scale]`` mask of ``text`` (digits only), one blank column apart."""
    columns = []
    for i, char in enumerate(text):
        if i:
            columns.append(torch.zeros(5, 1, dtype=torch.bool))
        columns.append(_GLYPH[char])
    mask = torch.cat(columns, dim=1)
    return mask.repeat_interleave(scale, dim=0).repeat_interleave(scale, dim=1)


def _stamp(image: torch.Tensor, text: str, top: int, left: int, height: int, width: int, colour: torch.Tensor,
           scale: int) -> None:
    """Draw ``text`` centred in the box ``(top, left, height, width)`` of an HWC uint8 image."""
    mask = text_mask(text, scale)
    h, w = mask.shape
    y = top + (height - h) // 2
    x = left + (width - w) // 2
    region = image[y:y + h, x:x + w]
    region[mask] = colour


def cell_colour(fraction: float) -> torch.Tensor:
    """White (0) to dark blue (1), as uint8 RGB."""
    f = min(max(float(fraction), 0.0), 1.0)
    return (WHITE + (DARK_BLUE - WHITE) * f).round().to(torch.uint8)


def confusion_image(matrix: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """An HWC uint8 heat map of a ``[true, predicted]`` count matrix, counts written in the cells.

    Cell ``(i, j)`` occupies rows ``margin + i*cell ..`` and columns ``margin + j*cell ..``; its
    colour is :func:`cell_colour` of ``matrix[i, j] / matrix[i].sum()`` (0 for an empty row).
    The top margin holds the predicted class ids, the left margin the true ones.
    """
    matrix = torch.as_tensor(matrix).long().cpu()
    classes = matrix.shape[0]
    longest = max(len(str(int(matrix.max()))) if matrix.numel() else 1, len(str(classes - 1)))
    cell = max(36, (4 * longest - 1) * scale + 8)
    margin = cell // 2 + 4
    size = margin + classes * cell
    image = torch.empty(size, size, 3, dtype=torch.uint8)
    image[:] = MARGIN_COLOUR
    rows = matrix.sum(dim=1)
    black = torch.tensor([0, 0, 0], dtype=torch.uint8)
    white = torch.tensor([255, 255, 255], dtype=torch.uint8)
    for i in range(classes):
        _stamp(image, str(i), margin + i * cell, 0, cell, margin, black, scale)  # true class, left
        _stamp(image, str(i), 0, margin + i * cell, margin, cell, black, scale)  # predicted class, top
        for j in range(classes):
            fraction = float(matrix[i, j]) / float(rows[i]) if rows[i] > 0 else 0.0
            top, left = margin + i * cell, margin + j * cell
            image[top:top + cell, left:left + cell] = cell_colour(fraction)
            image[top:top + cell, left] = MARGIN_COLOUR  # thin grid lines
            image[top, left:left + cell] = MARGIN_COLOUR
            _stamp(image, str(int(matrix[i, j])), top, left, cell, cell, white if fraction > 0.5 else black, scale)
    return image


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
        writer._get_file_writer().add_summary(_session_start(recipe_hparams(run.recipe.to_dict())))
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
            writer.add_image(f"confusion/{name}", confusion_image(matrix), step, dataformats="HWC")
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
