"""The recipe's sections: every key a recipe may hold, with its default, range and help text.

This module is the reference of recipe keys (``mtbert validate`` and the run's resolved
``recipe.toml`` follow it); components' own options live in their plugins' options classes.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from mtbert.schema import option

DATA_DIR_ENV = "MTBERT_DATA_DIR"


@attrs.define
class ModelSection:
    checkpoint: str = option("minilm-l6", help="named checkpoint (mtbert plugins lists them) or a local HF-format BERT folder")
    mode: Literal["finetune", "pretrain"] = option("finetune", help="finetune: train the encoder too; pretrain: freeze it, train heads only")
    hidden_dropout: float | None = option(None, help="dropout on hidden states, 0 <= p < 1 (default: the checkpoint's)", min=0, max=1,
                                          max_exclusive=True)
    attention_dropout: float | None = option(None, help="dropout on attention probabilities, 0 <= p < 1 (default: the checkpoint's)",
                                             min=0, max=1, max_exclusive=True)
    attention: Literal["sdpa", "math"] = option("sdpa", help="attention kernel: fused scaled_dot_product_attention or the explicit math path")
    unpad: Literal["auto", "always", "never"] = option(
        "auto", help="run token-wise layers on real tokens only: auto (CPU batches with over 5% padding), always, never"
    )
    gradient_checkpointing: bool = option(False, help="recompute layer activations in backward to save memory")


@attrs.define
class DataSection:
    dir: str | None = option(None, help=f"folder with the CS224N files (default: ${DATA_DIR_ENV}, else ./data)")
    max_length: int = option(128, help="longest token sequence kept (pairs: both sentences together)", min=8, max=512)
    strict: bool = option(False, help="stop on dirty rows instead of skipping them with a counted warning")
    eval_batch_size: int = option(128, help="batch size for dev/test evaluation", min=1)
    slice_seed: int = option(0, help="seed of the random rows that tasks.<name>.*_limit keep (fixed, so runs with different seeds see the same slice)", min=0)
    bucket: bool = option(True, help="batch examples of similar length together (less padding), shuffling batch order")
    padding: Literal["dynamic", "max_length"] = option(
        "dynamic", help="dynamic: pad each batch to its longest sequence; max_length: pad every batch to data.max_length (slower; for comparison)"
    )
    cache: bool = option(True, help="keep tokenized splits in .mtbert-cache/ (or $MTBERT_CACHE_DIR), keyed by file hash, slice, tokenizer and input format")


@attrs.define
class TaskSection:
    input: Any = option(None, help="input format (single, separate-pair, ...; default by the task's input kind)")
    head: Any = option(None, help="task head: a name or { name = ..., options } (default by the task's input kind: linear)")
    train_file: str | None = option(None, help="training file (default: the task's file in data.dir)")
    dev_file: str | None = option(None, help="dev file (default: the task's file in data.dir)")
    test_file: str | None = option(None, help="test file (default: the task's file in data.dir)")
    train_limit: int | None = option(None, help="train on N randomly chosen valid rows (see data.slice_seed)", min=1)
    dev_limit: int | None = option(None, help="evaluate on N randomly chosen valid dev rows", min=1)
    test_limit: int | None = option(None, help="predict N randomly chosen test rows", min=1)
    batch_size: int | None = option(None, help="this task's training batch size (default: optim.batch_size)", min=1)


@attrs.define
class OptimSection:
    lr: float = option(2e-5, help="peak learning rate of the encoder", min=0, min_exclusive=True)
    head_lr: float | None = option(None, help="learning rate of the heads (default: lr)", min=0, min_exclusive=True)
    weight_decay: float = option(0.01, help="AdamW decoupled weight decay (not applied to biases and LayerNorm)", min=0)
    betas: list[float] = option(factory=lambda: [0.9, 0.999], help="AdamW betas", min=0, max=1, max_exclusive=True)
    eps: float = option(1e-8, help="AdamW epsilon", min=0, min_exclusive=True)
    epochs: int = option(3, help="epochs of the multitask stage", min=1)
    batch_size: int = option(16, help="training batch size per task", min=1)
    schedule: Literal["linear-warmup", "constant", "constant-warmup", "cosine-warmup"] = option(
        "linear-warmup", help="learning-rate schedule: linear warm-up then linear decay to 0, constant, ..."
    )
    warmup: float = option(0.1, help="warm-up length as a fraction of all optimizer steps", min=0, max=1)
    grad_accumulation: int = option(1, help="optimizer steps happen every N sampler steps", min=1)


@attrs.define
class TrainSection:
    device: str = option("auto", help="auto (cuda when available), cpu, cuda, cuda:N or mps")
    precision: Literal["auto", "fp32", "bf16"] = option(
        "auto", help="auto: bf16 autocast where the hardware has it (CUDA with bf16, CPUs with AMX or AVX512-BF16), else fp32; "
        "bf16 on other CPUs is emulated and slower"
    )
    patience: int | None = option(None, help="stop after N evaluations without improving the selection metric", min=1)
    select: str = option("mean", help="dev metric that picks the best checkpoint (mean, sst_acc, ...)")
    log_every: int = option(10, help="log training scalars every N optimizer steps", min=1)
    checkpoint_every: int | None = option(None, help="also save resumable state every N optimizer steps", min=1)
    keep_last: bool = option(False, help="keep checkpoints/last (weights and optimizer state, what resuming needs) once the run has finished; an unfinished run always keeps it")
    max_steps_per_epoch: int | None = option(None, help="cut every epoch after N sampler steps (quick experiments)", min=1)
    progress: bool = option(True, help="show a progress bar on the terminal")
    threads: int | None = option(None, help="CPU threads for torch (default: torch's choice)", min=1)
    predict: bool = option(True, help="write dev and test predictions of the best checkpoint at the end")
    compile: bool = option(False, help="torch.compile the encoder (measure first: it rarely pays on CPU)")
    ensemble: int = option(1, help="train N complete runs (members/1..N: the recipe's seed, then seeds derived from it) "
                           "and predict with the mean of their outputs; N times the cost", min=1)


TOP_LEVEL = {
    "name", "seed", "description", "include", "requires", "model", "data", "tasks", "sampler",
    "loss_combiner", "gradient_transforms", "regularizers", "stages", "optim", "train",
    "sweep",  # ranges and grids for ``mtbert sweep`` (mtbert.sweep); checked here, ignored by a run
    "optimizer_groups", "weight_average",
}


SECTIONS = {"model": ModelSection, "data": DataSection, "optim": OptimSection, "train": TrainSection}


def with_section_defaults(table: dict[str, Any]) -> dict[str, Any]:
    """A resolved recipe table (a run's recipe.toml) with options added to mtbert since that run
    filled in at their defaults, so an older run compares equal to a new one that leaves them so."""
    for key, section in SECTIONS.items():
        values = table.get(key)
        if not isinstance(values, dict):
            continue
        for field in attrs.fields(section):
            if field.name in values:
                continue
            default = field.default.factory() if isinstance(field.default, attrs.Factory) else field.default
            if default is not None and default is not attrs.NOTHING:
                values[field.name] = default
    return table
