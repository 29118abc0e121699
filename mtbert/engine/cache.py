"""Pre-tokenized dataset cache: a split is tokenized once per file, slice and tokenizer.

Tokenizing dominates loading a split (on the 2-core development CPU: SST train 0.13 s to read,
0.65 s to tokenize; Quora train 0.09 s against 1.7 s), so :func:`encode_cached` keeps each
split's :class:`~mtbert.engine.components.EncodedExamples` in ``.mtbert-cache/`` (or
``$MTBERT_CACHE_DIR``) and later runs load it instead. ``data.cache = false`` turns it off.

The file is still read and sliced on every run (that is cheap, and it keeps the reader's
dirty-row warnings and the examples the engine needs); only tokenization is skipped. An entry
is keyed by everything that decides the encodings:

* the data file's SHA-1, the task, split, slice (``*_limit``, its derived seed and the ids of the
  rows it kept) and ``strict``;
* the tokenizer: a hash of its whole pipeline (vocabulary, casing, accent stripping,
  pre-tokenizer, special-token template), the `tokenizers` version and a hash of the
  tokenizer's source file;
* ``data.max_length`` and the input format: its class, its options and a hash of its source
  file (so editing an input format's code invalidates its entries);
* the mtbert version and :data:`CACHE_VERSION`.

Entries are safetensors files (never pickles): flat int32 token ids with offsets per sequence
slot, and the example ids and labels as JSON metadata. Writes go to a temporary file renamed
into place, so concurrent runs (or DDP ranks) never read half a file; an entry that cannot be
read (or was written for another key) is ignored and rebuilt.
"""

from __future__ import annotations

import array
import hashlib
import inspect
import itertools
import json
import os
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from mtbert.engine.components import EncodedExamples

#: Bump when the entry layout changes.
CACHE_VERSION = 1
CACHE_ENV = "MTBERT_CACHE_DIR"
DEFAULT_CACHE_DIR = ".mtbert-cache"

_source_hashes: dict[str, str] = {}
_tokenizer_keys: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()


def cache_dir() -> Path:
    """Where entries live: ``$MTBERT_CACHE_DIR``, else ``.mtbert-cache`` in the working folder."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _source_hash(obj: Any) -> str | None:
    """SHA-1 of the source file defining ``obj``'s class (None when it has no file)."""
    cls = obj if isinstance(obj, type) else type(obj)
    try:
        source = inspect.getsourcefile(cls)
    except TypeError:
        source = None
    if source is None:
        module = sys.modules.get(cls.__module__)
        source = getattr(module, "__file__", None)
    if not source or not os.path.isfile(source):
        return None
    if source not in _source_hashes:
        _source_hashes[source] = file_sha1(Path(source))
    return _source_hashes[source]


def tokenizer_key(tokenizer: Any) -> dict[str, Any] | None:
    """What decides a tokenizer's output, or None when it cannot be described (then no cache).

    A tokenizer may describe itself with a ``cache_key()`` method returning a JSON-able dict.
    :class:`~mtbert.model.tokenizer.BertTokenizer` is described by a hash of its whole
    `tokenizers` pipeline; any other tokenizer needs at least a ``vocab`` mapping (token -> id)
    and ``lowercase`` / ``strip_accents`` attributes if it has such settings.
    """
    try:
        return _tokenizer_keys[tokenizer]
    except (KeyError, TypeError):
        pass
    own = getattr(tokenizer, "cache_key", None)
    backend = getattr(tokenizer, "_tok", None)  # BertTokenizer's `tokenizers` pipeline
    if callable(own):
        key = {"custom": own()}
    elif backend is not None and hasattr(backend, "to_str"):
        # The whole pipeline (vocabulary, normalizer with casing and accent stripping,
        # pre-tokenizer, template), without the per-call truncation and padding settings.
        pipeline = json.loads(backend.to_str())
        pipeline.pop("truncation", None)
        pipeline.pop("padding", None)
        text = json.dumps(pipeline, sort_keys=True, ensure_ascii=False)
        key = {"pipeline": hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest(),
               "lowercase": getattr(tokenizer, "lowercase", None)}
    else:
        vocab = getattr(tokenizer, "vocab", None)
        if not isinstance(vocab, dict):
            return None
        digest = hashlib.sha1()
        for token, index in sorted(vocab.items(), key=lambda item: (item[1], item[0])):
            digest.update(f"{index}\t{token}\n".encode("utf-8", "surrogatepass"))
        key = {"vocab": digest.hexdigest(), "lowercase": getattr(tokenizer, "lowercase", None),
               "strip_accents": getattr(tokenizer, "strip_accents", None)}
    try:
        import tokenizers

        key["tokenizers"] = tokenizers.__version__
    except ImportError:  # pragma: no cover - mtbert depends on tokenizers
        pass
    key["class"] = f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}"
    key["source"] = _source_hash(tokenizer)
    try:
        _tokenizer_keys[tokenizer] = key
    except TypeError:  # not weak-referenceable: recompute next time
        pass
    return key


def _format_options(input_format: Any) -> Any:
    import attrs

    if attrs.has(type(input_format)):
        from mtbert.schema import unstructure

        try:
            return unstructure(input_format)
        except Exception:  # noqa: BLE001 - options that do not serialise: fall back to repr
            return repr(input_format)
    return repr(input_format)


def rows_fingerprint(examples: Sequence[Any]) -> str:
    """SHA-1 of the examples' ids, in order: which rows a slice kept."""
    digest = hashlib.sha1()
    for example in examples:
        digest.update(repr(getattr(example, "id", None)).encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()


def entry_key(
    *, task: str, split: str, path: Path, input_format: Any, tokenizer: Any, max_length: int,
    limit: int | None, slice_seed: int, strict: bool, file_hash: str | None = None, rows: str | None = None,
) -> dict[str, Any] | None:
    """The full key of a split's entry (JSON-able), or None when the tokenizer is not describable.

    ``rows`` (:func:`rows_fingerprint` of the sliced examples) guards the slice itself.
    """
    tok = tokenizer_key(tokenizer)
    if tok is None:
        return None
    import mtbert

    fmt = type(input_format)
    return {
        "cache_version": CACHE_VERSION,
        "mtbert": mtbert.__version__,
        "task": task,
        "split": split,
        "file_sha1": file_hash or file_sha1(path),
        "limit": limit,
        "slice_seed": slice_seed,
        "strict": strict,
        "rows": rows,
        "max_length": max_length,
        "input_format": {"class": f"{fmt.__module__}.{fmt.__qualname__}", "options": _format_options(input_format),
                         "source": _source_hash(input_format)},
        "tokenizer": tok,
    }


def entry_path(key: dict[str, Any], root: Path | None = None) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    safe_task = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(key["task"]))
    return (root or cache_dir()) / f"{safe_task}-{key['split']}-{digest[:20]}.safetensors"


# --------------------------------------------------------------------------- (de)serialisation
def _pack(lists: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(x) for x in lists], dtype=torch.int64)
    offsets = torch.zeros(len(lists) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    values = array.array("i", itertools.chain.from_iterable(lists))
    flat = torch.frombuffer(values, dtype=torch.int32).clone() if values else torch.zeros(0, dtype=torch.int32)
    return flat, offsets


def _unpack(flat: torch.Tensor, offsets: torch.Tensor) -> list[list[int]]:
    values = flat.tolist()
    bounds = offsets.tolist()
    return [values[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


def save_entry(path: Path, key: dict[str, Any], encoded: EncodedExamples) -> None:
    """Write an entry atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for slot, sequences in enumerate(encoded.sequences):
        tensors[f"seq{slot}.ids"], tensors[f"seq{slot}.offsets"] = _pack(sequences)
    for slot, types in enumerate(encoded.type_ids):
        if types is not None:
            tensors[f"type{slot}.ids"], tensors[f"type{slot}.offsets"] = _pack(types)
    metadata = {
        "key": json.dumps(key, sort_keys=True, default=str),
        "slots": str(len(encoded.sequences)),
        "types": json.dumps([t is not None for t in encoded.type_ids]),
        "ids": json.dumps(list(encoded.ids)),
        "labels": json.dumps(list(encoded.labels)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; entries are as readable as other files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_entry(path: Path, key: dict[str, Any]) -> EncodedExamples:
    """Read an entry; raises (any exception) when it is missing, corrupt or for another key."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("key") != json.dumps(key, sort_keys=True, default=str):
            raise ValueError("entry was written for another key")
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    slots = int(metadata["slots"])
    has_types = json.loads(metadata["types"])
    ids = json.loads(metadata["ids"])
    labels = json.loads(metadata["labels"])
    sequences = [_unpack(tensors[f"seq{s}.ids"], tensors[f"seq{s}.offsets"]) for s in range(slots)]
    type_ids = [_unpack(tensors[f"type{s}.ids"], tensors[f"type{s}.offsets"]) if has_types[s] else None
                for s in range(slots)]
    if len(has_types) != slots or len(labels) != len(ids) or any(len(seqs) != len(ids) for seqs in sequences):
        raise ValueError("entry is inconsistent")
    return EncodedExamples(ids=ids, sequences=sequences, type_ids=type_ids, labels=labels)


# --------------------------------------------------------------------------- the call site
#: Examples tokenized per call when a progress bar is shown.
CHUNK = 2048


def concat_encoded(parts: Sequence[EncodedExamples]) -> EncodedExamples:
    """One EncodedExamples from consecutive chunks of a split (same sequence slots in each)."""
    first = parts[0]
    return EncodedExamples(
        ids=[i for p in parts for i in p.ids],
        sequences=[[s for p in parts for s in p.sequences[slot]] for slot in range(len(first.sequences))],
        type_ids=[None if first.type_ids[slot] is None else [t for p in parts for t in p.type_ids[slot]]
                  for slot in range(len(first.type_ids))],
        labels=[label for p in parts for label in p.labels],
    )


def encode_in_chunks(task: Any, split: str, examples: Sequence[Any], tokenizer: Any, max_length: int,
                     progress: bool) -> EncodedExamples:
    """Tokenize a split; with ``progress`` on a terminal, in chunks of :data:`CHUNK` under a bar.

    Tokenizing is per example, so chunking gives the same result as one call.
    """
    from mtbert.engine.progress import _is_terminal, track

    if not progress or len(examples) <= CHUNK or not _is_terminal(sys.stderr):
        return task.input_format.encode_examples(tokenizer, examples, max_length)
    starts = range(0, len(examples), CHUNK)
    parts = [task.input_format.encode_examples(tokenizer, examples[i:i + CHUNK], max_length)
             for i in track(starts, len(starts), f"tokenize {task.name} {split}", enabled=True, unit="chunk")]
    return concat_encoded(parts)
def encode_cached(
    task: Any, split: str, path: Path, examples: Sequence[Any], *, tokenizer: Any, max_length: int,
    limit: int | None, slice_seed: int, strict: bool, warn: Callable[[str], None] = lambda message: None,
    enabled: bool = True, root: Path | None = None, progress: bool = False,
) -> EncodedExamples:
    """``task.input_format.encode_examples(tokenizer, examples, max_length)``, through the cache.

    ``slice_seed`` is the seed the slice was drawn with (already derived for task and split).
    With ``progress`` a cache miss tokenizes in chunks under a bar (terminal only).
    """
    encode = lambda: encode_in_chunks(task, split, examples, tokenizer, max_length, progress)  # noqa: E731
    if not enabled:
        return encode()
    key = entry_key(task=task.name, split=split, path=path, input_format=task.input_format, tokenizer=tokenizer,
                    max_length=max_length, limit=limit, slice_seed=slice_seed, strict=strict,
                    rows=rows_fingerprint(examples))
    if key is None:
        return encode()
    file = entry_path(key, root)
    if file.is_file():
        try:
            cached = load_entry(file, key)
            if len(cached) == len(examples):
                return cached
            raise ValueError("entry holds another number of rows")
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is rebuilt
            warn(f"data cache {file} is unreadable ({type(exc).__name__}); rebuilding it")
    encoded = encode()
    try:
        save_entry(file, key, encoded)
    except Exception as exc:  # noqa: BLE001 - a cache that cannot be written only costs time
        warn(f"data cache: could not write {file} ({type(exc).__name__}: {exc}); set data.cache = false to silence this")
    return encoded
