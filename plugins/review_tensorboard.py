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
    ids (:func:`confusion_picture`).
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
from typing import Any, Sequence

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


def class_labels(classes: int, names: Sequence[str] | None) -> list[str]:
    """Tick labels: ``"0 very negative"`` with names, the bare id without."""
    if names is None or len(names) != classes:
        return [str(i) for i in range(classes)]
    return [f"{i} {name}" for i, name in enumerate(names)]


def confusion_figure(matrix: torch.Tensor, names: Sequence[str] | None = None, title: str = "") -> "object":
    """A matplotlib Figure of a ``[true, predicted]`` count matrix (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = torch.as_tensor(matrix).long().cpu()
    classes = matrix.shape[0]
    rows = matrix.sum(dim=1, keepdim=True).clamp(min=1)
    fractions = (matrix.double() / rows.double()).numpy()
    labels = class_labels(classes, names)
    side = 3.2 + 0.6 * classes
    fig = Figure(figsize=(side + 1.2, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    for i in range(classes):
        for j in range(classes):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                    color="white" if fractions[i, j] > 0.5 else "black", fontsize=10)
    ax.set_xticks(range(classes), labels, rotation=30, ha="right")
    ax.set_yticks(range(classes), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def figure_pixels(fig: "object") -> torch.Tensor:
    """An HWC uint8 RGB tensor of a Figure drawn on its Agg canvas."""
    import numpy as np

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy())


def confusion_picture(matrix: torch.Tensor, names: Sequence[str] | None = None, title: str = "") -> torch.Tensor:
    """The labelled figure when matplotlib is installed, else :func:`confusion_image`; HWC uint8."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return confusion_image(matrix)
    return figure_pixels(confusion_figure(matrix, names, title))

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
