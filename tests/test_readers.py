"""The readers against the real CS224N files, synthetic dirty files, and the prediction format."""

from __future__ import annotations

import csv
from pathlib import Path

import pluggy
import pytest

from mtbert import hookspecs
from mtbert.data import Example, TaskSpec, read_examples
from mtbert.errors import DataError
from mtbert_plugins import tasks_cs224n
from mtbert_plugins.tasks_cs224n import CFIMDB, PARA, SST, STS

# README row counts, and the rows we expect to skip (line: reason).
EXPECTED = {
    "ids-sst-train.csv": (SST, "train", 8544, {}),
    "ids-sst-dev.csv": (SST, "dev", 1101, {}),
    "ids-sst-test-student.csv": (SST, "test", 2210, {}),
    "sts-train.csv": (STS, "train", 6040, {}),
    "sts-dev.csv": (STS, "dev", 863, {}),
    "sts-test-student.csv": (STS, "test", 1725, {}),
    "quora-train.csv": (PARA, "train", 15214, {1947: "empty is_duplicate"}),
    "quora-dev.csv": (PARA, "dev", 3000, {2079: "empty sentence2, empty is_duplicate"}),
    "ids-cfimdb-train.csv": (CFIMDB, "train", 1707, {}),
    "ids-cfimdb-dev.csv": (CFIMDB, "dev", 245, {}),
    "ids-cfimdb-test-student.csv": (CFIMDB, "test", 488, {}),
}


def test_every_data_file_is_covered(data_dir: Path) -> None:
    assert {p.name for p in data_dir.glob("*.csv")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_file_reads_with_readme_counts(data_dir: Path, name: str) -> None:
    task, split, rows, dirty = EXPECTED[name]
    warnings: list[str] = []
    result = task.read(data_dir / name, split, warn=warnings.append)

    assert result.total_rows == rows
    assert {s.line: s.reason for s in result.skipped} == dirty
    assert len(result.examples) == rows - len(dirty)
    if dirty:
        (line,) = dirty
        assert warnings == [f"warning: {data_dir / name}: skipped 1 of {rows} rows (line {line}: {dirty[line]})"]
    else:
        assert warnings == []

    lines = [e.line for e in result.examples]
    assert lines == sorted(lines) and len(set(lines)) == len(lines) and lines[0] == 2
    ids = [e.id for e in result.examples]
    assert len(set(ids)) == len(ids)
    for example in result.examples[:50]:
        assert len(example.texts) == len(task.text_columns)
        assert all(text.strip() for text in example.texts)
    labels = [e.label for e in result.examples]
    if split == "test":
        assert set(labels) == {None}
    elif task.is_regression:
        assert all(isinstance(x, float) and 0.0 <= x <= 5.0 for x in labels)
    else:
        assert all(type(x) is int for x in labels)
        assert set(labels) == set(range(task.num_classes))


def test_lines_match_physical_lines(data_dir: Path) -> None:
    """Example.line is the line a user sees in an editor (the header is line 1)."""
    path = data_dir / "quora-train.csv"
    physical = path.read_text(encoding="utf-8").split("\n")
    result = PARA.read(path, "train", warn=lambda _: None)
    for example in result.examples[1900:2000]:
        assert physical[example.line - 1].split("\t")[1] == example.id
    assert physical[1946].endswith("\t")  # line 1947: the empty is_duplicate


def test_sst_text_kept_as_is(data_dir: Path) -> None:
    first = SST.read(data_dir / "ids-sst-dev.csv", "dev").examples[0]
    assert first == Example(
        id="a7d575c9ed86ea9633660c67e",
        texts=(" It 's a lovely film with lovely performances by Buy and Accorsi .",),
        label=3,
        line=2,
    )


@pytest.mark.parametrize("name", ["ids-sst-test-student.csv", "ids-cfimdb-test-student.csv", "sts-test-student.csv"])
def test_test_student_files_read_by_header_name(data_dir: Path, name: str) -> None:
    task = EXPECTED[name][0]
    with (data_dir / name).open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    result = task.read(data_dir / name, "test")
    assert [e.id for e in result.examples] == [row["id"] for row in rows]
    assert [e.texts for e in result.examples] == [tuple(row[c] for c in task.text_columns) for row in rows]
    if name.startswith("ids-sst"):
        assert result.examples[0].id == "b7573736a6ddf7be102b7fee0"  # not the index "1" nor "0.0"


def test_strict_mode_names_file_and_line(data_dir: Path) -> None:
    with pytest.raises(DataError) as caught:
        PARA.read(data_dir / "quora-dev.csv", "dev", strict=True)
    message = str(caught.value)
    assert "\n" not in message
    assert message == (f"{data_dir / 'quora-dev.csv'}: 1 of 3000 rows (line 2079: empty sentence2, empty is_duplicate) "
                       "cannot be used; set data.strict = false to skip them")


def test_strict_mode_passes_clean_file(data_dir: Path) -> None:
    assert len(SST.read(data_dir / "ids-sst-dev.csv", "dev", strict=True).examples) == 1101


def test_missing_file_message(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=r"^data file for tasks\.sst\.train_file not found: .*nope\.csv$"):
        SST.read(missing, "train", key="tasks.sst.train_file")
    with pytest.raises(DataError, match=r"^data file not found: .*nope\.csv$"):
        SST.read(missing, "train")
    with pytest.raises(DataError, match="is a directory"):
        SST.read(tmp_path, "train")


def test_missing_column_message(data_dir: Path) -> None:
    path = data_dir / "ids-sst-dev.csv"
    with pytest.raises(DataError) as caught:
        STS.read(path, "dev")
    assert str(caught.value) == (
        f"{path}: no column 'sentence1' in the header (found: '', 'id', 'sentence', 'sentiment')")


def test_test_split_does_not_need_label_column(data_dir: Path) -> None:
    with pytest.raises(DataError, match="no column 'sentiment'"):
        SST.read(data_dir / "ids-sst-test-student.csv", "dev")


def test_limit_keeps_first_valid_rows(data_dir: Path) -> None:
    full = PARA.read(data_dir / "quora-dev.csv", "dev", warn=lambda _: None).examples
    warnings: list[str] = []
    limited = PARA.read(data_dir / "quora-dev.csv", "dev", limit=2500, warn=warnings.append)
    assert limited.examples == full[:2500]
    assert len(limited.skipped) == 1  # the dirty line 2079 comes before the 2500th valid row
    assert PARA.read(data_dir / "quora-dev.csv", "dev", limit=5).total_rows == 5
    with pytest.raises(ValueError):
        PARA.read(data_dir / "quora-dev.csv", "dev", limit=0)


# ----------------------------------------------------------------------------- synthetic files
HEADER = "\tid\tsentence1\tsentence2\tsimilarity\n"


def _write(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(header + body, encoding="utf-8")
    return path


def _read_sts(path: Path, **options):
    warnings: list[str] = []
    result = STS.read(path, "dev", warn=warnings.append, **options)
    return result, warnings


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("0\ta\tx\ty\n", "wrong column count (expected 5, found 4)"),
        ("0\ta\tx\ty\t1.0\textra\n", "wrong column count (expected 5, found 6)"),
        ("0\ta\tx\ty\t5.5\n", "similarity '5.5' out of range 0..5"),
        ("0\ta\tx\ty\t-0.1\n", "similarity '-0.1' out of range 0..5"),
        ("0\ta\tx\ty\tfour\n", "bad similarity 'four' (not a number)"),
        ("0\ta\tx\ty\tnan\n", "bad similarity 'nan' (not a number)"),
        ("0\ta\tx\ty\t\n", "empty similarity"),
        ("0\t\tx\ty\t1.0\n", "empty id"),
        ("0\ta\t  \ty\t1.0\n", "empty sentence1"),
        ('0\ta\t"x\t"\t""\t\n', "empty sentence2, empty similarity"),
    ],
)
def test_dirty_row_is_skipped_with_reason(tmp_path: Path, row: str, reason: str) -> None:
    path = _write(tmp_path, "0\tgood1\tx\ty\t1.0\n" + row + "1\tgood2\tx\ty\t2.5\n")
    result, warnings = _read_sts(path)
    assert [e.id for e in result.examples] == ["good1", "good2"]
    assert [e.line for e in result.examples] == [2, 4]
    assert [(s.line, s.reason) for s in result.skipped] == [(3, reason)]
    assert warnings == [f"warning: {path}: skipped 1 of 3 rows (line 3: {reason})"]
    strict_message = rf"^{path}: 1 of 3 rows \(line 3: .*\) cannot be used; set data\.strict = false"
    with pytest.raises(DataError, match=strict_message):
        _read_sts(path, strict=True)


def test_embedded_quotes_tabs_and_newlines(tmp_path: Path) -> None:
    body = (
        '0\ta\t"He said ""hi"" to me"\tplain "stray quote\t4.0\n'
        '1\tb\t"tab\tinside"\t"two\nlines"\t3\n'
        '2\tc\tx\ty\t0\n'
    )
    result, warnings = _read_sts(_write(tmp_path, body))
    assert warnings == []
    assert [(e.id, e.texts, e.label, e.line) for e in result.examples] == [
        ("a", ('He said "hi" to me', 'plain "stray quote'), 4.0, 2),
        ("b", ("tab\tinside", "two\nlines"), 3.0, 3),
        ("c", ("x", "y"), 0.0, 5),  # the record above spans lines 3-4
    ]


def test_unclosed_quote_is_reported_not_swallowed(tmp_path: Path) -> None:
    body = '0\ta\tx\t"never closed\t1.0\n1\tb\tx\ty\t2.0\n2\tc\tx\ty\t3.0\n'
    result, warnings = _read_sts(_write(tmp_path, body))
    assert result.examples == []
    assert [(s.line, s.reason) for s in result.skipped] == [
        (2, "a quote opened on this line is not closed (the field runs to line 4)")]
    assert len(warnings) == 1


def test_warning_lists_first_three_lines(tmp_path: Path) -> None:
    body = "".join(f"{i}\tid{i}\tx\ty\t{'9' if i % 2 else '1'}\n" for i in range(10))
    path = _write(tmp_path, body)
    result, warnings = _read_sts(path)
    assert len(result.examples) == 5 and len(result.skipped) == 5
    assert warnings == [f"warning: {path}: skipped 5 of 10 rows (line 3: similarity '9' out of range 0..5; "
                        "line 5: similarity '9' out of range 0..5; line 7: similarity '9' out of range 0..5; "
                        "and 2 more)"]


@pytest.mark.parametrize(
    ("cell", "label", "reason"),
    [("0", 0, None), ("1", 1, None), ("0.0", 0, None), ("1.0", 1, None), (" 1 ", 1, None),
     ("2", None, "is_duplicate '2' out of range 0..1"),
     ("0.5", None, "bad is_duplicate '0.5' (expected an integer 0..1)"),
     ("yes", None, "bad is_duplicate 'yes' (expected an integer 0..1)")],
)
def test_binary_labels(tmp_path: Path, cell: str, label: int | None, reason: str | None) -> None:
    path = _write(tmp_path, f"0\ta\tx\ty\t{cell}\n", header="\tid\tsentence1\tsentence2\tis_duplicate\n")
    result = PARA.read(path, "train", warn=lambda _: None)
    assert [e.label for e in result.examples] == ([label] if reason is None else [])
    assert [s.reason for s in result.skipped] == ([] if reason is None else [reason])


@pytest.mark.parametrize(
    ("cell", "label", "reason"),
    [("4", 4, None), ("3.0", 3, None), ("5", None, "sentiment '5' out of range 0..4"),
     ("-1", None, "sentiment '-1' out of range 0..4"), ("2.5", None, "bad sentiment '2.5' (expected an integer 0..4)")],
)
def test_multiclass_labels(tmp_path: Path, cell: str, label: int | None, reason: str | None) -> None:
    path = _write(tmp_path, f"0\ta\t sentence\t{cell}\n", header="\tid\tsentence\tsentiment\n")
    result = SST.read(path, "train", warn=lambda _: None)
    assert [e.label for e in result.examples] == ([label] if reason is None else [])
    assert [s.reason for s in result.skipped] == ([] if reason is None else [reason])


def test_columns_found_by_name_in_any_order(tmp_path: Path) -> None:
    path = _write(tmp_path, "3.5\tq\tsecond\tfirst\n", header="similarity\tid\tsentence2\tsentence1\n")
    (example,) = STS.read(path, "train").examples
    assert (example.id, example.texts, example.label) == ("q", ("first", "second"), 3.5)


def test_byte_order_mark_blank_lines_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffid\tsentence\tsentiment\n\na\t s\t1\n\n".encode("utf-8"))
    result = SST.read(path, "train")
    assert [(e.id, e.line) for e in result.examples] == [("a", 3)] and result.total_rows == 1
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="the file is empty"):
        SST.read(path, "train")


def test_bad_encoding_and_duplicate_column(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("id\tsentence\tsentiment\na\tcaf\xe9\t1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv: not valid UTF-8"):
        SST.read(path, "train")
    path.write_text("id\tsentence\tsentence\tsentiment\n", encoding="utf-8")
    with pytest.raises(DataError, match="column 'sentence' appears 2 times"):
        SST.read(path, "train")


def test_read_examples_directly(tmp_path: Path) -> None:
    path = _write(tmp_path, "0\ta\tx\ty\t1.0\n")
    result = read_examples(path, text_columns=["sentence1"], labelled=False)
    assert result.examples == [Example(id="a", texts=("x",), label=None, line=2)]
    assert result.warning is None
    with pytest.raises(ValueError):
        read_examples(path, text_columns=["sentence1"], label_column="similarity", label_kind="regression")


# ----------------------------------------------------------------------------- predictions
def test_prediction_file_exact_format_and_round_trip(tmp_path: Path) -> None:
    sst = SST.write_predictions(tmp_path / "p" / SST.prediction_filename("dev"), ["a1", "b2"], [3, 0])
    assert sst.name == "sst-dev-output.csv"
    assert sst.read_bytes() == b"id \t Predicted_Sentiment \na1 , 3 \nb2 , 0 \n"
    assert SST.read_predictions(sst) == (["a1", "b2"], [3, 0])

    sts = STS.write_predictions(tmp_path / "sts.csv", ["x", "y"], [4.25, 0.1])
    assert sts.read_bytes() == b"id \t Predicted_Similiary \nx , 4.25 \ny , 0.1 \n"
    assert STS.read_predictions(sts) == (["x", "y"], [4.25, 0.1])

    para = PARA.write_predictions(tmp_path / "para.csv", ["q"], [1.0])
    assert para.read_bytes() == b"id \t Predicted_Is_Paraphrase \nq , 1 \n"
    assert PARA.read_predictions(para) == (["q"], [1])


def test_prediction_round_trip_real_ids(data_dir: Path, tmp_path: Path) -> None:
    examples = STS.read(data_dir / "sts-test-student.csv", "test").examples
    predictions = [i % 51 / 10 for i in range(len(examples))]
    path = STS.write_predictions(tmp_path / "sts-test-output.csv", [e.id for e in examples], predictions)
    assert STS.read_predictions(path) == ([e.id for e in examples], predictions)


def test_prediction_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SST.write_predictions(tmp_path / "x.csv", ["a"], [1.5])
    with pytest.raises(ValueError):
        SST.write_predictions(tmp_path / "x.csv", ["a", "b"], [1])
    path = tmp_path / "bad.csv"
    path.write_text("id \t Predicted_Similiary \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv:1: expected header 'id \\t Predicted_Sentiment '"):
        SST.read_predictions(path)
    path.write_text("id \t Predicted_Sentiment \na , 7 \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv:2: prediction '7' out of range 0\.\.4"):
        SST.read_predictions(path)
    path.write_text("id \t Predicted_Sentiment \nno comma here\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv:2: expected '<id> , <prediction>'"):
        SST.read_predictions(path)
    with pytest.raises(DataError, match="prediction file not found"):
        SST.read_predictions(tmp_path / "none.csv")


# ----------------------------------------------------------------------------- task specs
def test_task_specs_and_registration() -> None:
    registered: dict[str, TaskSpec] = {}
    pm = pluggy.PluginManager("mtbert")
    pm.add_hookspecs(hookspecs)
    pm.register(tasks_cs224n)
    pm.check_pending()
    pm.hook.mtbert_register_tasks(register=lambda name, spec: registered.__setitem__(name, spec))
    assert list(registered) == ["sst", "para", "sts", "cfimdb"]
    assert [t.metric_key for t in registered.values()] == ["sst_acc", "para_acc", "sts_pearson", "cfimdb_acc"]
    assert [t.main for t in registered.values()] == [True, True, True, False]
    assert [t.input_kind for t in registered.values()] == ["single", "pair", "pair", "single"]
    assert PARA.num_classes == 2 and STS.label_range == (0.0, 5.0)


def test_task_metrics_keys() -> None:
    sst = SST.metrics([0, 1, 2, 3, 4, 4], [0, 1, 2, 3, 4, 3])
    assert sst["sst_acc"] == pytest.approx(5 / 6) and SST.primary(sst) == sst["sst_acc"]
    assert set(sst) == {"sst_acc", "sst_macro_f1", "sst_balanced_acc", *(f"sst_acc_class{k}" for k in range(5))}
    sts = STS.metrics([1.0, 2.0, 3.5], [1.0, 2.0, 3.0])
    assert set(sts) == {"sts_pearson", "sts_spearman", "sts_mse"}
    assert sts["sts_spearman"] == pytest.approx(1.0) and sts["sts_mse"] == pytest.approx(0.25 / 3)


@pytest.mark.parametrize(
    "changes",
    [{"label_kind": "ordinal"}, {"text_columns": ()}, {"label_kind": "regression", "label_range": None},
     {"num_classes": 1}, {"files": {"validation": "x.csv"}}],
)
def test_task_spec_validation(changes: dict) -> None:
    import attrs

    fields = {a.name: getattr(SST, a.name) for a in attrs.fields(TaskSpec)} | changes
    with pytest.raises(ValueError):
        TaskSpec(**fields)
