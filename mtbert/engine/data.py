"""Task data for a run: files read once, tokenized once, served as padded batches.

:class:`TaskStream` serves one task's training batches forever: each pass over the data
reshuffles with the stream's own generator; with bucketing, examples of similar length are
batched together (less padding) and the batch order is shuffled. Its full state (generator,
planned batches, position) goes into checkpoints so a resumed run sees the same batches.
Under data parallelism (torchrun) every process plans the same global batches and serves its
own shard of each (:func:`mtbert.engine.distributed.shard`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import attrs
import torch

from mtbert.engine.cache import encode_cached
from mtbert.engine.components import Batch, EncodedExamples
from mtbert.engine.distributed import shard
from mtbert.engine.seeding import derive_seed
from mtbert.errors import DataError

#: Examples sorted by length inside windows of this many batches when bucketing.
BUCKET_WINDOW = 50


def label_dtype(task: Any) -> torch.dtype:
    return torch.long if task.label_kind == "multiclass" else torch.float32


@attrs.define
class SplitData:
    path: Path
    examples: list[Any]
    encoded: EncodedExamples
    skipped: int
    total_rows: int


@attrs.define
class TaskData:
    """One task of a run: its spec, input format and the splits read so far."""

    name: str
    spec: Any
    input_format: Any
    input_format_name: str
    splits: dict[str, SplitData] = attrs.field(factory=dict)
    #: Pad every batch to this many tokens (``data.padding = "max_length"``); None: dynamic padding.
    pad_to: int | None = None

    def collate(self, split: str, indices: list[int]) -> Batch:
        encoded, dtype = self.splits[split].encoded, label_dtype(self.spec)
        if self.pad_to is not None:
            return self.input_format.collate(encoded, indices, self.name, dtype, pad_to=self.pad_to)
        return self.input_format.collate(encoded, indices, self.name, dtype)


def resolve_file(data_dir: Path, task_name: str, section: Any, spec: Any, split: str) -> tuple[Path | None, str]:
    """The file a split reads and the recipe key that chose it (for error messages)."""
    override = getattr(section, f"{split}_file")
    key = f"tasks.{task_name}.{split}_file"
    if override:
        path = Path(override).expanduser()
        if not path.is_absolute() and not path.exists():
            path = data_dir / path  # relative to the working folder first, then to data.dir
        return path, key
    default = spec.files.get(split)
    if default is None:
        return None, key
    folder = spec.default_folder(data_dir) if hasattr(spec, "default_folder") else data_dir
    return folder / default, "data.dir"


def missing_data_files(recipe: Any) -> list[str]:
    """One line per data file a run of ``recipe`` would fail to find (what ``mtbert validate`` adds).

    The default test files are optional (a run skips them), so only train and dev files, and
    test files a recipe names itself, count. When the data folder itself is missing, one line
    says so (with the three ways to set it) instead of a line per default file.
    """
    from mtbert.recipe import DATA_DIR_ENV

    data_dir = recipe.data_dir()
    folder_missing = not data_dir.is_dir()
    problems: list[str] = []
    for name, task_recipe in recipe.tasks.items():
        for split in ("train", "dev", "test"):
            path, key = resolve_file(data_dir, name, task_recipe.section, task_recipe.spec, split)
            own = getattr(task_recipe.spec, "data_folder", None) is not None  # the task ships its files
            if path is None or path.is_file() or (key == "data.dir" and (split == "test" or (folder_missing and not own))):
                continue
            where = f"data.dir ({name} {split})" if key == "data.dir" else f"{key} ({name} {split})"
            what = "is a directory, not a file" if path.is_dir() else "not found"
            problems.append(f"data file for {where} {what}: {path}")
    uses_folder = any(not getattr(t.section, f"{split}_file") and getattr(t.spec, "data_folder", None) is None
                      for t in recipe.tasks.values() for split in ("train", "dev"))
    if folder_missing and uses_folder:
        problems.insert(0, f"data folder not found: {data_dir} (set ${DATA_DIR_ENV}, --set data.dir=PATH, or dir under [data])")
    return problems


def sample_rows(examples: list[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded random subset of ``limit`` examples, kept in file order.

    The CS224N files are not shuffled (the first rows of the SST files are mostly positive),
    so a slice must be a random sample, never the first rows.
    """
    if limit is None or limit >= len(examples):
        return examples
    generator = torch.Generator()
    generator.manual_seed(seed)
    chosen = sorted(torch.randperm(len(examples), generator=generator)[:limit].tolist())
    return [examples[i] for i in chosen]


def load_split(
    task: TaskData, split: str, path: Path, key: str, *, tokenizer: Any, max_length: int,
    strict: bool, limit: int | None, warn: Callable[[str], None], slice_seed: int = 0, cache: bool = False,
    progress: bool = False,
) -> SplitData:
    """Read, slice and tokenize one split of a task (see :func:`sample_rows` for ``limit``).

    With ``cache`` the tokenized split comes from (or goes to) the pre-tokenized dataset cache
    (:mod:`mtbert.engine.cache`, ``data.cache``).
    """
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise DataError(f"data file for {key} ({task.name} {split}) {what}: {path}")
    result = task.spec.read(path, split, strict=strict, warn=warn, key=key)
    if not result.examples:
        raise DataError(f"{path}: no usable rows for task {task.name} ({split})")
    seed = derive_seed(slice_seed, task.name, split)
    examples = sample_rows(result.examples, limit, seed)
    encoded = encode_cached(task, split, path, examples, tokenizer=tokenizer, max_length=max_length, limit=limit,
                            slice_seed=seed, strict=strict, warn=warn, enabled=cache, progress=progress)
    data = SplitData(path=path, examples=examples, encoded=encoded,
                     skipped=len(result.skipped), total_rows=result.total_rows)
    task.splits[split] = data
    return data


class TaskStream:
    """Endless shuffled (optionally length-bucketed) batches of one task's training split.

    ``batch_size`` is the global batch; with ``world`` > 1 processes each serves the
    ``rank``-th shard of every global batch (same seed everywhere, so the same global batches).
    """

    def __init__(self, task: TaskData, batch_size: int, seed: int, bucket: bool, rank: int = 0, world: int = 1):
        self.task = task
        self.encoded = task.splits["train"].encoded
        self.batch_size = batch_size
        self.bucket = bucket
        self.rank = rank
        self.world = world
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        self.lengths = self.encoded.lengths()
        self.batches: list[list[int]] = []
        self.position = 0
        self.passes = 0

    def __len__(self) -> int:
        """Batches in one full pass over the data."""
        return math.ceil(len(self.encoded) / self.batch_size)

    def _plan_pass(self) -> None:
        n = len(self.encoded)
        order = torch.randperm(n, generator=self.generator).tolist()
        size = self.batch_size
        if self.bucket:
            window = size * BUCKET_WINDOW
            ordered: list[int] = []
            for start in range(0, n, window):
                chunk = order[start:start + window]
                ordered.extend(sorted(chunk, key=lambda i: self.lengths[i]))
            batches = [ordered[i:i + size] for i in range(0, n, size)]
            shuffle = torch.randperm(len(batches), generator=self.generator).tolist()
            self.batches = [batches[i] for i in shuffle]
        else:
            self.batches = [order[i:i + size] for i in range(0, n, size)]
        self.position = 0
        self.passes += 1

    def next_batch(self) -> Batch:
        return self.next_shard()[0]

    def next_shard(self) -> tuple[Batch, float]:
        """This process's part of the next global batch and its share of the batch's examples."""
        if self.position >= len(self.batches):
            self._plan_pass()
        indices, share = shard(self.batches[self.position], self.rank, self.world)
        self.position += 1
        return self.task.collate("train", indices), share

    def state_dict(self) -> dict[str, Any]:
        flat = [i for batch in self.batches for i in batch]
        sizes = [len(batch) for batch in self.batches]
        return {
            "generator": self.generator.get_state(),
            "batches": torch.tensor(flat, dtype=torch.int64),
            "sizes": torch.tensor(sizes, dtype=torch.int64),
            "position": self.position,
            "passes": self.passes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        flat = state["batches"].tolist()
        self.batches, start = [], 0
        for size in state["sizes"].tolist():
            self.batches.append(flat[start:start + size])
            start += size
        self.position = int(state["position"])
        self.passes = int(state["passes"])
        if any(i >= len(self.encoded) for batch in self.batches for i in batch):
            # The file has fewer rows than when the state was saved (a resume with
            # --allow-data-change): the saved plan cannot be served; plan a new pass.
            self.batches, self.position = [], 0


def eval_batches(encoded: EncodedExamples, batch_size: int) -> list[list[int]]:
    """Evaluation batches sorted by length (little padding); callers restore the order."""
    lengths = encoded.lengths()
    order = sorted(range(len(encoded)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
