"""The run context: everything a stage or a plugin's event hook sees while a run goes on.

It builds the model and the data, evaluates on dev, records evaluations and keeps the best and
last checkpoints. Under ``torchrun`` every process holds one; rank 0 alone writes files, logs,
prints and calls event hooks.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from mtbert.engine.batches import TaskData, load_split, resolve_file
from mtbert.engine.checkpoint import save_training_state, save_weights
from mtbert.engine.device import choose_device, resolve_precision
from mtbert.engine.distributed import Distributed, NoHooks, resolve_device
from mtbert.engine.evaluate import evaluate
from mtbert.engine.health import ModelHealth
from mtbert.engine.hookguard import GuardedHooks
from mtbert.engine.multitask_model import MultitaskModel, build_model
from mtbert.engine.run_records import ENCODER_FILES, RunLog, now
from mtbert.files import atomic_write_json, file_sha1
from mtbert.plugins import Plugins
from mtbert.recipe import Recipe

RUN_STATE_VERSION = 1


class RunContext:
    """Everything a stage or a plugin needs while a run goes on."""

    def __init__(self, recipe: Recipe, plugins: Plugins, folder: Path, *, say: Callable[[str], None] = print,
                 warn: Callable[[str], None] | None = None, resume_state: dict[str, Any] | None = None,
                 distributed: Distributed | None = None):
        self.recipe = recipe
        self.plugins = plugins
        self.folder = folder
        self.distributed = distributed or Distributed()
        main = self.distributed.is_main
        self.say = say if main else _quiet
        self.warn = (warn or (lambda message: print(message, file=sys.stderr))) if main else _quiet
        self.device = choose_device(recipe.train.device)
        if self.distributed.enabled:
            self.device = resolve_device(self.device, self.distributed.local_rank)
        #: The precision forwards run in (``train.precision`` resolved for the device; run.json says why).
        self.precision = resolve_precision(recipe.train.precision, self.device)
        self.resume_state = resume_state
        self.global_step = 0
        self.examples_seen = 0  # training examples of the tasks, over all processes (dev curves' second axis)
        self.best: dict[str, Any] | None = None
        self.best_dev_outputs: tuple[int, dict[str, tuple[list[str], list[Any]]]] | None = None  # (step, task -> (ids, predictions))
        self.last: dict[str, Any] | None = None
        self.stop_requested = False
        self.stop_reason = ""
        self.failure: str | None = None  # a plugin hook that raised: the run stops, saves and fails
        self.stage_index = 0
        self.log: RunLog | None = None
        self.model: MultitaskModel | None = None
        self.tasks: dict[str, TaskData] = {}
        self.regularizers: list[tuple[Any, Any]] = []
        self.backbone = None
        self.data_files: dict[str, dict[str, str]] = {}
        self.last_predictions: dict[str, dict[str, list]] = {}
        self.last_seconds: dict[str, float] = {}  # the last evaluation's train/eval seconds, for metrics.jsonl
        self.distributed_info: dict[str, Any] = {}  # what run.json adds about the processes

    @property
    def hook(self) -> Any:
        """The plugins' event hooks (rank 0 alone calls them under data parallelism).

        A hook that raises does not end the run at once: :class:`GuardedHooks` records the
        plugin and hook and asks the loop to stop, so the state is saved before the run fails.
        """
        return GuardedHooks(self) if self.distributed.is_main else NoHooks()

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to save its state and stop after the current optimizer step."""
        self.stop_requested = True
        self.stop_reason = reason

    def interrupt_message(self) -> str:
        return (f"{self.stop_reason}: stopped at step {self.global_step}; state saved in {self.checkpoints / 'last'}; "
                f"continue with: {self.resume_command()}")

    def resume_command(self) -> str:
        return f"mtbert resume {self.folder}"

    # ----------------------------------------------------------------- set-up
    def build(self) -> None:
        from mtbert.model.backbone import load_backbone

        recipe = self.recipe
        if recipe.train.threads:
            torch.set_num_threads(recipe.train.threads)
        torch.manual_seed(recipe.seed)
        backbone = load_backbone(
            recipe.model.checkpoint, hidden_dropout=recipe.model.hidden_dropout,
            attention_dropout=recipe.model.attention_dropout, attention=recipe.model.attention, seed=recipe.seed,
        )
        self.backbone = backbone
        encoder = backbone.encoder
        encoder.gradient_checkpointing = recipe.model.gradient_checkpointing
        encoder.unpad = recipe.model.unpad
        self.load_data(backbone.tokenizer, splits=("train", "dev", "test"))
        self.model = build_model(recipe, encoder)
        if recipe.model.mode == "pretrain":
            self.model.freeze_encoder()
        self.regularizers = [(spec, spec.options.build()) for spec in recipe.regularizers]
        for _, regularizer in self.regularizers:
            regularizer.setup(self.model)
        self.model.to(self.device)
        if recipe.train.compile:
            self.model.encoder.compile()
        if self.distributed.is_main:
            self.save_encoder_files()
        self.health = ModelHealth(self.model)

    def load_data(self, tokenizer: Any, splits: tuple[str, ...]) -> None:
        recipe = self.recipe
        data_dir = recipe.data_dir()
        for name, task_recipe in recipe.tasks.items():
            task = self.tasks.get(name) or TaskData(
                name=name, spec=task_recipe.spec, input_format=task_recipe.input.options,
                input_format_name=task_recipe.input.name,
                pad_to=recipe.data.max_length if recipe.data.padding == "max_length" else None,
            )
            self.tasks[name] = task
            for split in splits:
                path, key = resolve_file(data_dir, name, task_recipe.section, task_recipe.spec, split)
                if path is None:
                    continue
                if split == "test" and not path.is_file():
                    if key == "data.dir":  # the default test file is optional (Quora's is not public)
                        continue
                limit = getattr(task_recipe.section, f"{split}_limit")
                data = load_split(task, split, path, key if key != "data.dir" else f"data.dir ({name} {split})",
                                  tokenizer=tokenizer, max_length=recipe.data.max_length,
                                  strict=recipe.data.strict, limit=limit, warn=self.warn,
                                  slice_seed=recipe.data.slice_seed, cache=recipe.data.cache,
                                  progress=recipe.train.progress and self.distributed.is_main)
                self.data_files.setdefault(name, {})[split] = str(path.resolve())
                self.data_files[name][f"{split}_sha1"] = file_sha1(path)
                self.data_files[name][f"{split}_rows"] = str(len(data.examples))

    def save_encoder_files(self) -> None:
        """Config and vocabulary of the encoder, so eval, predict and export need no original checkpoint.

        ``checkpoints/encoder-config/`` holds no weights (they are in best.safetensors);
        ``mtbert export`` writes a loadable Hugging Face folder.
        """
        folder = self.checkpoints / ENCODER_FILES
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "config.json", self.model.encoder.config.to_dict())
        for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            source = self.backbone.folder / name
            if source.is_file():
                shutil.copyfile(source, folder / name)

    # ----------------------------------------------------------------- logging and evaluation
    def log_train(self, values: dict[str, float], stage: str) -> None:
        if self.log is not None:
            self.log.scalars("train", values, self.global_step)

    def evaluate_dev(self, stage: str, epoch: int, train_seconds: float) -> dict[str, float]:
        """Dev metrics of every task (and ``mean``); the predictions are kept for event hooks, the
        epoch's training and evaluation seconds for its ``metrics.jsonl`` line."""
        recipe = self.recipe
        start = time.perf_counter()
        metrics, outputs = evaluate(self.model, self.tasks, "dev", device=self.device,
                                    precision=self.precision.name, batch_size=recipe.data.eval_batch_size,
                                    progress=recipe.train.progress)
        self.last_predictions = {
            name: {"ids": ids, "predictions": predictions, "labels": list(self.tasks[name].splits["dev"].encoded.labels)}
            for name, (ids, predictions) in outputs.items()
        }
        eval_seconds = time.perf_counter() - start
        self.last_seconds = {"train_seconds": round(train_seconds, 3), "eval_seconds": round(eval_seconds, 3)}
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k == "mean" or k.endswith(("_acc", "_pearson")))
        self.say(f"[{stage} epoch {epoch + 1}] dev {shown}  (train {train_seconds:.0f}s, eval {eval_seconds:.0f}s)")
        collapse = self.health.check(self.model, self.last_predictions, {n: t.spec for n, t in self.tasks.items()})
        if collapse:
            self.warn(f"warning: MODEL COLLAPSE at step {self.global_step} ({stage} epoch {epoch + 1}): {collapse}")
        return metrics

    def record_evaluation(self, trainer: Any, metrics: dict[str, float]) -> bool:
        """Log an evaluation; save the best checkpoint when it improves. Returns whether it did."""
        record = {
            "stage": trainer.stage_name, "stage_index": trainer.stage_index, "epoch": trainer.epoch + 1,
            "step": self.global_step, "examples": self.examples_seen, "split": "dev", "time": now(),
            **self.last_seconds, "metrics": metrics,
        }
        self.last_seconds = {}
        self.log.evaluation(record)
        self.log.scalars("dev", metrics, self.global_step)
        # the same curves against examples seen: one-task and all-tasks steps differ in size
        self.log.scalars("dev_by_examples", metrics, self.examples_seen)
        self.hook.mtbert_on_evaluate(run=self, stage=trainer.stage_name, epoch=trainer.epoch + 1,
                                     step=self.global_step, metrics=metrics, predictions=self.last_predictions)
        self.last = {"stage": trainer.stage_name, "epoch": trainer.epoch + 1, "step": self.global_step, "dev": metrics}
        select = self.recipe.train.select
        improved = False
        if trainer.select_best and select in metrics:
            score = metrics[select]
            if self.best is None or score > self.best["dev"][select]:
                improved = True
                self.best = dict(self.last)
                # what the final predictions reuse instead of predicting dev again (copies: hooks saw them)
                self.best_dev_outputs = (self.global_step, {name: (list(p["ids"]), list(p["predictions"]))
                                                            for name, p in self.last_predictions.items()})
                save_weights(self.checkpoints / "best.safetensors", self.model.state_dict(), metadata=self.best)
                atomic_write_json(self.checkpoints / "best.json", self.best)
                self.say(f"  new best {select} {score:.4f}: saved {self.checkpoints / 'best.safetensors'}")
        self.write_summary()
        return improved

    def evaluate_epoch(self, trainer: Any, train_seconds: float) -> tuple[dict[str, float], bool]:
        """Evaluate on dev and record it (rank 0); every process gets the metrics and whether they improved."""
        def on_main() -> tuple[dict[str, float], bool, Any, Any]:
            metrics = self.evaluate_dev(trainer.stage_name, trainer.epoch, train_seconds)
            improved = self.record_evaluation(trainer, metrics)
            return metrics, improved, self.best, self.last

        metrics, improved, self.best, self.last = self.distributed.on_main(on_main)
        return metrics, improved

    def write_summary(self) -> None:
        atomic_write_json(self.folder / "metrics.json", {"best": self.best, "last": self.last})

    def save_last(self, trainer: Any) -> None:
        """Write ``checkpoints/last`` (rank 0; every process calls it, the others wait until it is written)."""
        trainer_state = trainer.state_dict()  # a collective under data parallelism
        if not self.distributed.is_main:
            self.distributed.barrier()
            return
        state = {
            "version": RUN_STATE_VERSION,
            "global_step": self.global_step,
            "examples_seen": self.examples_seen,
            "best": self.best,
            "last": self.last,
            "trainer": trainer_state,
            "regularizers": [r.state_dict() if hasattr(r, "state_dict") else {} for _, r in self.regularizers],
        }
        try:
            save_training_state(self.checkpoints / "last", self.model.state_dict(), state)
        finally:
            self.distributed.barrier()
        self.hook.mtbert_on_state_saved(run=self, folder=self.checkpoints / "last")


def _quiet(_message: str) -> None:
    pass
