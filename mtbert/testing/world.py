"""The tiny world: a 77-token vocabulary, a random 2-layer BERT with hidden size 16, and three
tiny tasks whose examples are generated in memory (and written to CSV files for whole runs)."""

from __future__ import annotations

import csv
import functools
import json
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from mtbert import hookimpl
from mtbert.data.readers import Example
from mtbert.data.tasks import SPLITS, TaskSpec

TINY_HIDDEN = 16
#: Longest token sequence the checks encode (one example per task is longer, to test truncation).
TINY_MAX_LENGTH = 16
#: Name of the tiny random checkpoint this kit registers.
TINY_CHECKPOINT = "testing:tiny"

# --------------------------------------------------------------------------- vocabulary
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_POSITIVE = ["good", "great", "fine", "bright"]
_NEGATIVE = ["bad", "awful", "dull", "dark"]
_NEUTRAL = ["okay", "plain", "long", "short"]
_THINGS = ["film", "movie", "story", "plot", "song", "book"]
_ANIMALS = ["cat", "dog", "bird", "horse", "fox", "zebra"]  # "zebra" is not in the vocabulary: [UNK]
_VERBS = ["runs", "sleeps", "eats", "jumps", "sings"]
_PLACES = ["park", "garden", "river", "field", "house"]
_WORDS = (
    "the a this that was is very quite really not and but it what why how does do make people "
    "in on near of to with , . ? !"
).split()
_VOCAB_WORDS = _WORDS + _POSITIVE + _NEGATIVE + _NEUTRAL + _THINGS + [a for a in _ANIMALS if a != "zebra"] + \
    _VERBS + _PLACES + ["run", "sleep", "eat", "jump", "sing", "##s", "##ly", "##ed", "##ing"]


@functools.lru_cache(maxsize=None)
def _vocab_items() -> tuple[tuple[str, int], ...]:
    tokens = list(dict.fromkeys(_SPECIAL + _VOCAB_WORDS))
    return tuple((token, index) for index, token in enumerate(tokens))


def tiny_vocab() -> dict[str, int]:
    """The tiny WordPiece vocabulary: the five special tokens first, then 72 words and pieces."""
    return dict(_vocab_items())


@functools.lru_cache(maxsize=None)
def tiny_tokenizer() -> Any:
    """An uncased :class:`~mtbert.model.tokenizer.BertTokenizer` over :func:`tiny_vocab`."""
    from mtbert.model.tokenizer import BertTokenizer

    return BertTokenizer(tiny_vocab(), lowercase=True)


_TINY_CONFIG = {
    "hidden_size": TINY_HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 128,
}


def tiny_config(**changes: Any) -> Any:
    """The tiny encoder's :class:`~mtbert.model.config.BertConfig` (``changes`` override fields)."""
    from mtbert.model.config import BertConfig

    return BertConfig.from_dict({"vocab_size": len(tiny_vocab()), **_TINY_CONFIG, **changes})


def tiny_encoder(seed: int = 0, **config_changes: Any) -> Any:
    """A random tiny :class:`~mtbert.model.bert.BertEncoder` (2 layers, hidden 16), same for a seed."""
    from mtbert.model.bert import BertEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BertEncoder(tiny_config(**config_changes))


# --------------------------------------------------------------------------- tiny tasks
def _spec(name: str, description: str, texts: tuple[str, ...], label: str, kind: str, header: str, **extra: Any) -> TaskSpec:
    return TaskSpec(
        name=name, description=f"{description} (mtbert.testing)", text_columns=texts, label_column=label,
        label_kind=kind, files={split: f"{name}-{split}.csv" for split in SPLITS}, metric_key=f"{name}_"
        + ("pearson" if kind == "regression" else "acc"), main=True, prediction_header=header,
        prediction_file=name + "-{split}-output.csv", **extra,
    )


TINY_SENTIMENT = _spec("tiny_sentiment", "tiny sentiment of one sentence, 3 classes", ("sentence",), "sentiment",
                       "multiclass", "Predicted_Sentiment", num_classes=3)
TINY_PARAPHRASE = _spec("tiny_paraphrase", "tiny paraphrase detection of a pair, binary", ("sentence1", "sentence2"),
                        "is_duplicate", "binary", "Predicted_Is_Paraphrase")
TINY_SIMILARITY = _spec("tiny_similarity", "tiny similarity of a pair, regression on 0..5", ("sentence1", "sentence2"),
                        "similarity", "regression", "Predicted_Similarity", label_range=(0.0, 5.0))

#: The three tiny tasks by name: single-sentence multiclass, pair binary, pair regression.
TINY_TASKS: dict[str, TaskSpec] = {t.name: t for t in (TINY_SENTIMENT, TINY_PARAPHRASE, TINY_SIMILARITY)}
TINY_TASK_NAMES: tuple[str, ...] = tuple(TINY_TASKS)

_SIZES = {"train": 16, "dev": 8, "test": 4}


def _sentiment(rng: random.Random, long: bool) -> tuple[tuple[str, ...], int]:
    label = rng.randrange(3)
    adjective = rng.choice([_NEGATIVE, _NEUTRAL, _POSITIVE][label])
    text = f"{rng.choice(['the', 'this', 'that'])} {rng.choice(_THINGS)} was {rng.choice(['very', 'quite', 'really'])} {adjective} ."
    if long:  # longer than TINY_MAX_LENGTH tokens: exercises truncation
        text = text[:-2] + f" , and the {rng.choice(_THINGS)} was {adjective} but it was {adjective} and {adjective} ."
    return (text,), label


def _paraphrase(rng: random.Random, long: bool) -> tuple[tuple[str, ...], int]:
    animal, verb, place = rng.choice(_ANIMALS), rng.choice(_VERBS), rng.choice(_PLACES)
    first = f"why does the {animal} {verb[:-1]} in the {place} ?"
    label = rng.randrange(2)
    if label:
        second = f"what does make the {animal} {verb[:-1]} near the {place} ?"
    else:
        other = rng.choice([a for a in _ANIMALS if a != animal])
        second = f"why does the {other} {verb[:-1]} in the {rng.choice(_PLACES)} ?"
    if long:
        first = first[:-2] + f" and the {place} near the river with people in it ?"
    return (first, second), label


def _similarity(rng: random.Random, long: bool) -> tuple[tuple[str, ...], float]:
    slots = [rng.choice(_ANIMALS), rng.choice(_VERBS), rng.choice(_PLACES)]
    pools = [_ANIMALS, _VERBS, _PLACES]
    other = [s if rng.random() < 0.5 else rng.choice([c for c in pool if c != s]) for s, pool in zip(slots, pools)]
    kept = sum(a == b for a, b in zip(slots, other))
    first = f"the {slots[0]} {slots[1]} in the {slots[2]} ."
    second = f"a {other[0]} {other[1]} near the {other[2]} ."
    if long:
        second = second[:-2] + f" and the {other[0]} {other[1]} in the {other[2]} with people ."
    return (first, second), round(5.0 * kept / 3.0, 2)


_MAKERS: dict[str, Callable[[random.Random, bool], tuple[tuple[str, ...], Any]]] = {
    "tiny_sentiment": _sentiment, "tiny_paraphrase": _paraphrase, "tiny_similarity": _similarity,
}


def tiny_examples(task: str = "tiny_sentiment", split: str = "train", count: int | None = None) -> list[Example]:
    """Deterministic :class:`~mtbert.data.readers.Example` rows of a tiny task (test rows unlabelled).

    Default sizes: 16 train, 8 dev, 4 test rows; the second row of every split is longer than
    :data:`TINY_MAX_LENGTH` tokens. Every classification split holds every class.
    """
    if task not in _MAKERS:
        raise KeyError(f"unknown tiny task {task!r}; choose one of {', '.join(TINY_TASK_NAMES)}")
    count = _SIZES.get(split, 8) if count is None else count
    rng = random.Random(f"{task}/{split}")
    spec = TINY_TASKS[task]
    rows: list[Example] = []
    for i in range(count):
        texts, label = _MAKERS[task](rng, long=i == 1)
        if spec.label_kind != "regression" and i < spec.num_classes:
            while label != i:  # the first rows cover every class
                texts, label = _MAKERS[task](rng, long=i == 1)
        rows.append(Example(id=f"{task}-{split}-{i:03d}", texts=texts, label=None if split == "test" else label, line=i + 2))
    return rows


def write_tiny_data(folder: str | Path) -> Path:
    """Write the tiny tasks' train/dev/test files (CS224N layout: tab-separated, header row)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, spec in TINY_TASKS.items():
        for split in SPLITS:
            labelled = split != "test"
            header = ["", "id", *spec.text_columns, *([spec.label_column] if labelled else [])]
            with (folder / spec.files[split]).open("w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
                writer.writerow(header)
                for index, example in enumerate(tiny_examples(name, split)):
                    writer.writerow([index, example.id, *example.texts, *([example.label] if labelled else [])])
    return folder


_TEMP: dict[str, tempfile.TemporaryDirectory] = {}


def _temp_folder(key: str) -> Path:
    if key not in _TEMP:
        _TEMP[key] = tempfile.TemporaryDirectory(prefix=f"mtbert-testing-{key}-")
    return Path(_TEMP[key].name)


def tiny_data_dir() -> Path:
    """A folder (created once per process) holding the tiny tasks' files: a recipe's ``data.dir``."""
    folder = _temp_folder("data")
    if not (folder / TINY_SENTIMENT.files["train"]).is_file():
        write_tiny_data(folder)
    return folder


def _tiny_checkpoint_folder() -> Path:
    folder = _temp_folder("checkpoint")
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        vocab.write_text("".join(f"{token}\n" for token, _ in _vocab_items()), encoding="utf-8")
        (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    return folder


def _tiny_checkpoint_spec() -> Any:
    from mtbert.model.backbone import CheckpointSpec

    return CheckpointSpec(description=f"random 2-layer hidden-16 BERT with a {len(_vocab_items())}-token vocabulary, "
                                      f"for plugin tests (mtbert.testing)", folder=_tiny_checkpoint_folder,
                          random_config=dict(_TINY_CONFIG))


class _TestingPlugin:
    """Registers the tiny tasks and the ``testing:tiny`` checkpoint (only in :func:`tiny_plugins`)."""

    @hookimpl
    def mtbert_register_tasks(self, register):
        for spec in TINY_TASKS.values():
            register(spec.name, spec)

    @hookimpl
    def mtbert_register_checkpoints(self, register):
        register(TINY_CHECKPOINT, _tiny_checkpoint_spec())


TESTING_PLUGIN = _TestingPlugin()

