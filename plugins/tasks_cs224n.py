"""The four CS224N minBERT tasks, as a builtin plugin.

* ``sst``: Stanford Sentiment Treebank, five sentiment classes (0 very negative .. 4 very positive)
  for one movie-review sentence; scored by accuracy (``sst_acc``).
* ``para``: Quora Question Pairs, whether two questions are paraphrases (binary); scored by
  accuracy (``para_acc``).
* ``sts``: Semantic Textual Similarity, a 0..5 similarity score for a sentence pair (regression);
  scored by Pearson correlation (``sts_pearson``).
* ``cfimdb``: CFIMDB, binary sentiment of a whole IMDB review; not part of the multitask ``mean``
  (``main = false``), used for single-task checks (``cfimdb_acc``).

File names and prediction formats are the course's own, so runs read its data folder unchanged
and write submission files it accepts.
"""

from __future__ import annotations

from mtbert.api import TaskSpec, hookimpl

SST = TaskSpec(
    name="sst",
    description="SST-5 sentence sentiment, 5 classes",
    text_columns=("sentence",),
    label_column="sentiment",
    label_kind="multiclass",
    num_classes=5,
    files={"train": "ids-sst-train.csv", "dev": "ids-sst-dev.csv", "test": "ids-sst-test-student.csv"},
    metric_key="sst_acc",
    main=True,
    prediction_header="Predicted_Sentiment",
    prediction_file="sst-{split}-output.csv",
    class_names=("very negative", "negative", "neutral", "positive", "very positive"),
)

PARA = TaskSpec(
    name="para",
    description="Quora question pairs, paraphrase or not (binary)",
    text_columns=("sentence1", "sentence2"),
    label_column="is_duplicate",
    label_kind="binary",
    files={"train": "quora-train.csv", "dev": "quora-dev.csv", "test": "quora-test-student.csv"},
    metric_key="para_acc",
    main=True,
    prediction_header="Predicted_Is_Paraphrase",
    prediction_file="para-{split}-output.csv",
    class_names=("not paraphrase", "paraphrase"),
)

STS = TaskSpec(
    name="sts",
    description="STS-B sentence-pair similarity, regression on 0..5",
    text_columns=("sentence1", "sentence2"),
    label_column="similarity",
    label_kind="regression",
    label_range=(0.0, 5.0),
    files={"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test-student.csv"},
    metric_key="sts_pearson",
    main=True,
    prediction_header="Predicted_Similiary",  # sic: the course's spelling, kept for its grader
    prediction_file="sts-{split}-output.csv",
)

CFIMDB = TaskSpec(
    name="cfimdb",
    description="CFIMDB review sentiment, binary (not part of the mean)",
    text_columns=("sentence",),
    label_column="sentiment",
    label_kind="binary",
    files={"train": "ids-cfimdb-train.csv", "dev": "ids-cfimdb-dev.csv", "test": "ids-cfimdb-test-student.csv"},
    metric_key="cfimdb_acc",
    main=False,
    prediction_header="Predicted_Sentiment",
    prediction_file="cfimdb-{split}-output.csv",
    class_names=("negative", "positive"),
)

TASKS = (SST, PARA, STS, CFIMDB)


@hookimpl
def mtbert_register_tasks(register) -> None:
    for task in TASKS:
        register(task.name, task)
