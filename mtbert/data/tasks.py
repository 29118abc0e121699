"""What a task is: its files, columns, labels, metrics and prediction format.

A :class:`TaskSpec` is a plain description that plugins register through
``mtbert_register_tasks``; the engine never special-cases a task by name. Prediction files use
the CS224N submission format byte for byte (``id \\t Predicted_Sentiment `` then
``<id> , <prediction> `` per line), so they can be handed in or compared with the course's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import attrs

from mtbert.data.readers import LABEL_KINDS, ReadResult, print_warning, parse_label, read_examples
from mtbert.errors import DataError

SPLITS: tuple[str, ...] = ("train", "dev", "test")


def _validate_kind(instance: Any, attribute: Any, value: str) -> None:
    if value not in LABEL_KINDS:
        raise ValueError(f"task label_kind must be one of {LABEL_KINDS}, got {value!r}")


@attrs.frozen(kw_only=True)
class TaskSpec:
    """A task: where its files are, how to read them, how to score and write predictions.

    ``files`` maps each split ("train", "dev", "test") to its default file name inside
    ``data.dir``. ``metric_key`` names the primary score (``sst_acc``); ``main`` says whether it
    counts toward ``mean``. ``prediction_file`` is formatted with ``split``. ``class_names``
    (optional, one per class id) labels the classes in reviews such as confusion images.
    """

    name: str
    description: str
    text_columns: tuple[str, ...] = attrs.field(converter=tuple)
    label_column: str
    label_kind: str = attrs.field(validator=_validate_kind)
    num_classes: int | None = None
    label_range: tuple[float, float] | None = attrs.field(
        default=None, converter=attrs.converters.optional(tuple))
    files: Mapping[str, str] = attrs.field(converter=dict, hash=False)
    metric_key: str
    main: bool = True
    prediction_header: str
    prediction_file: str
    class_names: tuple[str, ...] | None = attrs.field(default=None, converter=attrs.converters.optional(tuple))
    #: Where this task's default files are, for a plugin that ships its own data (called lazily,
    #: like ``CheckpointSpec.folder``: ``lambda: Path(__file__).parent / "data"``). None: the
    #: recipe's ``data.dir``. ``tasks.<name>.<split>_file`` still overrides a file.
    data_folder: Callable[[], Path] | None = attrs.field(default=None, hash=False, eq=False)

    def default_folder(self, data_dir: Path) -> Path:
        """The folder holding this task's default files: its own ``data_folder`` or ``data_dir``."""
        return Path(self.data_folder()) if self.data_folder is not None else data_dir

    def __attrs_post_init__(self) -> None:
        if len(self.text_columns) not in (1, 2):
            raise ValueError(f"task {self.name}: text_columns must name one or two columns")
        if self.label_kind == "binary" and self.num_classes is None:
            object.__setattr__(self, "num_classes", 2)
        if self.label_kind == "binary" and self.num_classes != 2:
            raise ValueError(f"task {self.name}: a binary task has num_classes 2")
        if self.label_kind == "multiclass" and (self.num_classes is None or self.num_classes < 2):
            raise ValueError(f"task {self.name}: a multiclass task needs num_classes >= 2")
        if self.label_kind == "regression" and self.label_range is None:
            raise ValueError(f"task {self.name}: a regression task needs label_range (low, high)")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"task {self.name}: class_names needs one name per class ({self.num_classes})")
        unknown = set(self.files) - set(SPLITS)
        if unknown:
            raise ValueError(f"task {self.name}: unknown splits in files: {sorted(unknown)}")

    # ------------------------------------------------------------------ description
    @property
    def input_kind(self) -> str:
        """``"single"`` for one text column, ``"pair"`` for two."""
        return "single" if len(self.text_columns) == 1 else "pair"

    @property
    def is_regression(self) -> bool:
        return self.label_kind == "regression"

    def prediction_filename(self, split: str) -> str:
        return self.prediction_file.format(split=split)

    # ------------------------------------------------------------------ data
    def read(self, path: str | Path, split: str, *, strict: bool = False, limit: int | None = None,
             warn: Callable[[str], None] = print_warning, key: str | None = None) -> ReadResult:
        """Read a split's file; the test split is read without labels."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return read_examples(
            path,
            text_columns=self.text_columns,
            label_column=self.label_column,
            label_kind=self.label_kind,
            num_classes=self.num_classes,
            label_range=self.label_range,
            labelled=split != "test",
            strict=strict,
            limit=limit,
            warn=warn,
            key=key,
        )

    # ------------------------------------------------------------------ scores
    def metrics(self, predictions: Sequence[float] | Any, labels: Sequence[float] | Any) -> dict[str, float]:
        """The primary score under ``metric_key`` plus extras named ``<task>_<metric>``.

        Classification: ``<task>_macro_f1``, ``<task>_balanced_acc`` and per-class accuracy
        ``<task>_acc_class<k>`` for each class present in ``labels``. Regression:
        ``<task>_spearman`` and ``<task>_mse``.
        """
        from mtbert import metrics as m  # torch is imported only when scores are computed

        if self.is_regression:
            return {
                self.metric_key: m.pearson(predictions, labels),
                f"{self.name}_spearman": m.spearman(predictions, labels),
                f"{self.name}_mse": m.mse(predictions, labels),
            }
        scores = {
            self.metric_key: m.accuracy(predictions, labels),
            f"{self.name}_macro_f1": m.macro_f1(predictions, labels, self.num_classes),
            f"{self.name}_balanced_acc": m.balanced_accuracy(predictions, labels, self.num_classes),
        }
        for cls, value in m.per_class_accuracy(predictions, labels, self.num_classes).items():
            scores[f"{self.name}_acc_class{cls}"] = value
        return scores

    def primary(self, metrics: Mapping[str, float]) -> float:
        """The task's primary score from a :meth:`metrics` dict."""
        return metrics[self.metric_key]

    # ------------------------------------------------------------------ predictions
    def write_predictions(self, path: str | Path, ids: Sequence[str], predictions: Sequence[Any]) -> Path:
        """Write predictions in the CS224N submission format; classes as ints, scores as floats."""
        ids = list(ids)
        values = [_scalar(p) for p in predictions]
        if len(ids) != len(values):
            raise ValueError(f"{len(ids)} ids but {len(values)} predictions for task {self.name}")
        lines = [f"id \t {self.prediction_header} \n"]
        for example_id, value in zip(ids, values):
            lines.append(f"{example_id} , {self._format(value)} \n")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="\n") as handle:
            handle.writelines(lines)
        return path

    def _format(self, value: float) -> str:
        if self.is_regression:
            return str(float(value))
        if not float(value).is_integer():
            raise ValueError(f"task {self.name} predicts classes, got {value!r}")
        return str(int(value))

    def read_predictions(self, path: str | Path) -> tuple[list[str], list[int | float]]:
        """Read a file written by :meth:`write_predictions` back as ``(ids, predictions)``."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"prediction file not found: {path}")
        with path.open(encoding="utf-8", newline="") as handle:
            lines = handle.read().splitlines()
        header = [cell.strip() for cell in lines[0].split("\t")] if lines else []
        if header != ["id", self.prediction_header]:
            raise DataError(f"{path}:1: expected header 'id \\t {self.prediction_header} ', "
                            f"found {lines[0] if lines else ''!r}")
        ids: list[str] = []
        values: list[int | float] = []
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            example_id, comma, text = line.rpartition(",")
            if not comma or not example_id.strip():
                raise DataError(f"{path}:{number}: expected '<id> , <prediction>', found {line!r}")
            value, problem = parse_label(text.strip(), self.label_kind, "prediction", self.num_classes,
                                         (-math.inf, math.inf) if self.is_regression else None)
            if problem:
                raise DataError(f"{path}:{number}: {problem}")
            ids.append(example_id.strip())
            values.append(value)
        return ids, values


def _scalar(value: Any) -> float:
    return value.item() if hasattr(value, "item") else value
