"""Read the CS224N task files into :class:`Example` rows, explicitly and never silently.

The files are tab-separated UTF-8 with a header row and standard CSV double-quote quoting. Their
leading index columns differ between files (the SST and CFIMDB ``*-test-student.csv`` files carry
two, the others one), so columns are found by header *name*, never by position.

Real data is dirty: a row with an empty label, a missing sentence, or a wrong number of columns
is skipped and counted, and the file's skipped rows are reported in ONE warning naming the file
and the first lines at fault; under ``strict`` the same line becomes a :class:`DataError`.
Line numbers are physical, 1-based lines of the file (the header is line 1), so a user can open
the file at that line; a record that spans several lines (a quoted field with a line break) is
named by the line it starts on.

Two faults used to pass silently. An unclosed quote swallows the rest of the file into one
field: a record spanning more than :data:`MAX_RECORD_LINES` lines is reported as an unclosed
quote, and the rows it swallowed are counted as lost. Rows sharing an id would appear several
times in the submission files: each file's duplicate ids are counted in one warning (an error
under ``strict``). A byte that is not UTF-8 is reported at its real line.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Callable, Literal, Sequence

import attrs

from mtbert.errors import DataError

LabelKind = Literal["multiclass", "binary", "regression"]
LABEL_KINDS: tuple[str, ...] = ("multiclass", "binary", "regression")

#: How many offending lines a skip warning or strict error names before "and N more".
SHOWN_LINES = 3

#: A quoted field may hold line breaks, but a record running over more lines than this is an
#: unclosed quote that swallowed the rows after it (no CS224N sentence spans even two lines).
MAX_RECORD_LINES = 20


@attrs.frozen
class Example:
    """One usable row: its ``id``, one or two texts, its label (``None`` when unlabelled)."""

    id: str
    texts: tuple[str, ...]
    label: int | float | None
    line: int


@attrs.frozen
class SkippedRow:
    """A row that could not be used, with the physical line it starts on and why.

    ``lost`` counts the further rows it swallowed (an unclosed quote); they count as skipped.
    """

    line: int
    reason: str
    lost: int = 0


@attrs.frozen
class ReadResult:
    """What a file gave: the usable examples, the skipped rows, and how many data rows it had."""

    examples: list[Example]
    skipped: list[SkippedRow]
    total_rows: int
    path: Path

    @property
    def warning(self) -> str | None:
        """The one-line skip warning for this file, or ``None`` when nothing was skipped."""
        if not self.skipped:
            return None
        return f"warning: {self.path}: skipped {_skipped_summary(self.skipped, self.total_rows)}"

    @property
    def duplicates(self) -> list[tuple[str, int, int]]:
        """``(id, first line, repeated line)`` for every row whose id an earlier row already had."""
        first: dict[str, int] = {}
        repeats = []
        for example in self.examples:
            if example.id in first:
                repeats.append((example.id, first[example.id], example.line))
            else:
                first[example.id] = example.line
        return repeats

    @property
    def duplicate_warning(self) -> str | None:
        """One line counting the rows whose id repeats an earlier row's, or None."""
        repeats = self.duplicates
        if not repeats:
            return None
        shown = "; ".join(f"id {rid!r} on lines {a} and {b}" for rid, a, b in repeats[:SHOWN_LINES])
        if len(repeats) > SHOWN_LINES:
            shown += f"; and {len(repeats) - SHOWN_LINES} more"
        return f"{self.path}: {len(repeats)} of {len(self.examples)} rows repeat an earlier row's id ({shown})"


def print_warning(message: str) -> None:
    """The default `warn`: one line on stderr, where warnings belong."""
    print(message, file=sys.stderr)


def _skipped_summary(skipped: Sequence[SkippedRow], total_rows: int) -> str:
    shown = "; ".join(f"line {row.line}: {row.reason}" for row in skipped[:SHOWN_LINES])
    if len(skipped) > SHOWN_LINES:
        shown += f"; and {len(skipped) - SHOWN_LINES} more"
    count = len(skipped) + sum(row.lost for row in skipped)
    return f"{count} of {total_rows} rows ({shown})"


def _bad_byte_line(path: Path) -> tuple[int, int]:
    """The 1-based line and the byte offset of the first byte that is not UTF-8."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return raw.count(b"\n", 0, error.start) + 1, error.start
    return 0, 0


def read_examples(
    path: str | Path,
    *,
    text_columns: Sequence[str],
    label_column: str | None = None,
    label_kind: LabelKind | None = None,
    num_classes: int | None = None,
    label_range: tuple[float, float] | None = None,
    labelled: bool = True,
    strict: bool = False,
    limit: int | None = None,
    warn: Callable[[str], None] = print_warning,
    key: str | None = None,
    id_column: str = "id",
) -> ReadResult:
    """Read one task file.

    ``text_columns`` names the one or two sentence columns; ``label_column``/``label_kind``
    (with ``num_classes`` for multiclass, ``label_range`` for regression) say how to read the
    label, and are ignored when ``labelled`` is false (test files carry no labels). ``limit``
    keeps the first N usable rows and stops reading there. ``key`` is the recipe key that named
    this file, used in the missing-file message. Unusable rows are skipped with one ``warn``
    call for the file, or raise :class:`DataError` when ``strict``.
    """
    path = Path(path)
    text_columns = tuple(text_columns)
    _check_arguments(text_columns, label_column, label_kind, num_classes, label_range, labelled, limit)
    if not path.is_file():
        where = f"data file for {key}" if key else "data file"
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise DataError(f"{where} {what}: {path}")

    examples: list[Example] = []
    skipped: list[SkippedRow] = []
    total_rows = 0
    end = 0  # the last physical line read so far
    try:
        # utf-8-sig: a byte-order mark written by a spreadsheet must not rename the first column.
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t")
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: the file is empty (expected a header row)")
            columns = _locate_columns(path, header, id_column, text_columns, label_column if labelled else None)
            end = reader.line_num
            for row in reader:
                start, end = end + 1, reader.line_num
                if not row:  # a blank line holds no data: there is nothing to skip or report
                    continue
                total_rows += 1
                if end - start + 1 > MAX_RECORD_LINES:
                    # An unclosed quote: the record swallowed every line up to the next quote.
                    lost = end - start
                    total_rows += lost
                    skipped.append(SkippedRow(start, f"a quote opened on this line is not closed: the field runs "
                                                     f"to line {end} and swallowed {lost} rows", lost=lost))
                    continue
                example, reason = _parse_row(row, start, end, len(header), columns, label_kind if labelled else None,
                                             num_classes, label_range)
                if reason is not None:
                    skipped.append(SkippedRow(start, reason))
                    continue
                examples.append(example)
                if limit is not None and len(examples) >= limit:
                    break
    except UnicodeDecodeError as error:
        line, offset = _bad_byte_line(path)
        raise DataError(f"{path}: not valid UTF-8 at line {line} (byte offset {offset}: {error.reason}); "
                        "save the file as UTF-8") from None
    except csv.Error as error:
        raise DataError(f"{path}: unreadable CSV after line {end} ({error})") from None
    except OSError as error:
        raise DataError(f"cannot read data file {path}: {error.strerror or error}") from None

    result = ReadResult(examples, skipped, total_rows, path)
    if skipped:
        if strict:
            raise DataError(f"{path}: {_skipped_summary(skipped, total_rows)} cannot be used; "
                            "set data.strict = false to skip them")
        warn(result.warning)
    duplicates = result.duplicate_warning
    if duplicates:
        if strict:
            raise DataError(f"{duplicates}; give every row its own id, or set data.strict = false to keep them")
        warn(f"warning: {duplicates}; their predictions will repeat in the submission files")
    return result


def _check_arguments(text_columns, label_column, label_kind, num_classes, label_range, labelled, limit) -> None:
    """Programming mistakes by the caller (not by the user's data) are ValueErrors."""
    if len(text_columns) not in (1, 2):
        raise ValueError(f"text_columns must name one or two columns, got {text_columns!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of rows or None, got {limit!r}")
    if not labelled:
        return
    if label_column is None or label_kind not in LABEL_KINDS:
        raise ValueError(f"a labelled read needs label_column and label_kind in {LABEL_KINDS}, "
                         f"got {label_column!r}, {label_kind!r}")
    if label_kind == "multiclass" and (num_classes is None or num_classes < 2):
        raise ValueError(f"multiclass labels need num_classes >= 2, got {num_classes!r}")
    if label_kind == "regression" and (label_range is None or not label_range[0] <= label_range[1]):
        raise ValueError(f"regression labels need label_range (low, high), got {label_range!r}")


@attrs.frozen
class _Columns:
    id: int
    texts: tuple[int, ...]
    label: int | None
    names: tuple[str, ...]  # text column names, then the label column's, for messages


def _locate_columns(path: Path, header: list[str], id_column: str, text_columns: tuple[str, ...],
                    label_column: str | None) -> _Columns:
    found = ", ".join(repr(name) for name in header)
    wanted = [id_column, *text_columns, *([label_column] if label_column else [])]
    index: dict[str, int] = {}
    for name in wanted:
        count = header.count(name)
        if count == 0:
            raise DataError(f"{path}: no column {name!r} in the header (found: {found})")
        if count > 1:
            raise DataError(f"{path}: column {name!r} appears {count} times in the header (found: {found})")
        index[name] = header.index(name)
    return _Columns(
        id=index[id_column],
        texts=tuple(index[name] for name in text_columns),
        label=index[label_column] if label_column else None,
        names=(*text_columns, *([label_column] if label_column else [])),
    )


def _parse_row(row: list[str], start: int, end: int, width: int, columns: _Columns, label_kind: str | None,
               num_classes: int | None, label_range: tuple[float, float] | None) -> tuple[Example | None, str | None]:
    """Return ``(example, None)`` for a usable row, or ``(None, reason)``."""
    if end > start and any("\t" in field and ("\n" in field or "\r" in field) for field in row):
        # One field holding both a line break and a tab has swallowed the rows after it.
        return None, f"a quote opened on this line is not closed (the field runs to line {end})"
    if len(row) != width:
        spans = f"; the record runs to line {end}" if end > start else ""
        return None, f"wrong column count (expected {width}, found {len(row)}{spans})"
    problems = []
    row_id = row[columns.id]
    if not row_id.strip():
        problems.append("empty id")
    texts = tuple(row[i] for i in columns.texts)
    for name, text in zip(columns.names, texts):
        if not text.strip():
            problems.append(f"empty {name}")
    label: int | float | None = None
    if label_kind is not None:
        label, problem = parse_label(row[columns.label], label_kind, columns.names[-1], num_classes, label_range)
        if problem:
            problems.append(problem)
    if problems:
        return None, ", ".join(problems)
    return Example(id=row_id, texts=texts, label=label, line=start), None


def parse_label(text: str, kind: str, column: str, num_classes: int | None = None,
                label_range: tuple[float, float] | None = None) -> tuple[int | float | None, str | None]:
    """Parse one label cell: ``(value, None)`` or ``(None, reason naming the column)``.

    Binary labels accept "0"/"1" and the Quora spelling "0.0"/"1.0"; multiclass labels accept
    integral spellings ("3" or "3.0"); regression labels must be finite and inside the range.
    """
    stripped = text.strip()
    if not stripped:
        return None, f"empty {column}"
    try:
        value = float(stripped)
    except ValueError:
        value = math.nan
    if kind == "regression":
        low, high = label_range
        if not math.isfinite(value):
            return None, f"bad {column} {text!r} (not a number)"
        if not low <= value <= high:
            return None, f"{column} {text!r} out of range {low:g}..{high:g}"
        return value, None
    high = 1 if kind == "binary" else num_classes - 1
    if not math.isfinite(value) or not value.is_integer():
        return None, f"bad {column} {text!r} (expected an integer 0..{high})"
    if not 0 <= value <= high:
        return None, f"{column} {text!r} out of range 0..{high}"
    return int(value), None
