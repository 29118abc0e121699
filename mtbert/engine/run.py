"""A run: its folder, model, data, stages, evaluation, checkpoints and logs.

``run_recipe`` is what ``mtbert run`` calls. The run folder holds (DESIGN.md, "Runs"):
``recipe.toml`` (resolved), ``run.json`` (versions, commit, plugins, device, seed, data file
hashes, times, status), ``metrics.jsonl`` (one line per evaluation), ``metrics.json`` (best
and last), TensorBoard event files (in the folder itself, so TensorBoard names the run after
its folder), ``checkpoints/`` (``best.safetensors`` and ``last/`` for
``--resume``, plus the encoder's config and vocabulary so the run is self-contained) and
``predictions/`` (dev and test predictions of the best checkpoint, CS224N format).

Under ``torchrun`` (:mod:`mtbert.engine.distributed`) every process builds the same model and
trains on its shard of every batch; rank 0 alone chooses and writes the run folder, evaluates,
saves checkpoints and predictions, logs, prints and calls the plugins' event hooks. run.json's
``distributed`` records the world size, the backend and, at the end, a hash of every process's
weights (they must be identical).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

import mtbert
from mtbert.engine.checkpoint import (
    atomic_write_json, atomic_write_text, load_training_state, load_weights, save_training_state, save_weights,
)
from mtbert.engine.data import TaskData, load_split, resolve_file
from mtbert.engine.device import choose_device
from mtbert.engine.distributed import Distributed, NoHooks, check_batch_sizes, from_environment, resolve_device
from mtbert.engine.evaluate import evaluate
from mtbert.engine.model import MultitaskModel
from mtbert.engine.seeding import derive_seed
from mtbert.errors import CheckpointError, MtbertError, RecipeError
from mtbert.plugins import Plugins
from mtbert.recipe import Recipe

RUN_STATE_VERSION = 1
#: Folder under checkpoints/ with the encoder's config and vocabulary (no weights).
ENCODER_FILES = "encoder-config"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_commit(path: Path) -> dict[str, Any] | None:
    """The commit (and whether the tree is dirty) of the checkout holding ``path``, if any."""
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def sha1_file(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_run_folder(name: str, root: Path = Path("runs")) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = root / f"{name}-{stamp}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = root / f"{name}-{stamp}-{suffix}"
    return folder


class RunLog:
    """metrics.jsonl, TensorBoard scalars and console lines.

    The event files go into the run folder itself: TensorBoard names a run by the folder that
    holds its event files, relative to ``--logdir``, so ``tensorboard --logdir runs`` shows
    ``baseline``, not ``baseline/tb`` (the other files of a run folder hold no events).
    """

    def __init__(self, folder: Path, say: Callable[[str], None]):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        self.say = say
        self.writer = SummaryWriter(log_dir=str(folder))

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text)

    def evaluation(self, record: dict[str, Any]) -> None:
        with (self.folder / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


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
        self.resume_state = resume_state
        self.global_step = 0
        self.examples_seen = 0  # training examples of the tasks, over all processes (dev curves' second axis)
        self.best: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None
        self.stop_requested = False
        self.stop_reason = ""
        self.stage_index = 0
        self.log: RunLog | None = None
        self.model: MultitaskModel | None = None
        self.tasks: dict[str, TaskData] = {}
        self.regularizers: list[tuple[Any, Any]] = []
        self.backbone = None
        self.data_files: dict[str, dict[str, str]] = {}
        self.last_predictions: dict[str, dict[str, list]] = {}
        self.distributed_info: dict[str, Any] = {}  # what run.json adds about the processes

    @property
    def hook(self) -> Any:
        """The plugins' event hooks; rank 0 alone calls them under data parallelism."""
        return self.plugins.hook if self.distributed.is_main else NoHooks()

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to save its state and stop after the current optimizer step."""
        self.stop_requested = True
        self.stop_reason = reason

    def interrupt_message(self) -> str:
        return (f"{self.stop_reason}: stopped at step {self.global_step}; state saved in {self.checkpoints / 'last'}; "
                f"continue with: mtbert resume {self.folder}")

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
        self.load_data(backbone.tokenizer, splits=("train", "dev", "test"))
        self.model = build_model(recipe, encoder, self.tasks)
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
                self.data_files[name][f"{split}_sha1"] = sha1_file(path)
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
        """Dev metrics of every task (and ``mean``); the predictions are kept for event hooks."""
        recipe = self.recipe
        start = time.perf_counter()
        metrics, outputs = evaluate(self.model, self.tasks, "dev", device=self.device,
                                    precision=recipe.train.precision, batch_size=recipe.data.eval_batch_size,
                                    progress=recipe.train.progress)
        self.last_predictions = {
            name: {"ids": ids, "predictions": predictions, "labels": list(self.tasks[name].splits["dev"].encoded.labels)}
            for name, (ids, predictions) in outputs.items()
        }
        eval_seconds = time.perf_counter() - start
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k == "mean" or k.endswith(("_acc", "_pearson")))
        self.say(f"[{stage} epoch {epoch + 1}] dev {shown}  (train {train_seconds:.0f}s, eval {eval_seconds:.0f}s)")
        return metrics

    def record_evaluation(self, trainer: Any, metrics: dict[str, float]) -> bool:
        """Log an evaluation; save the best checkpoint when it improves. Returns whether it did."""
        record = {
            "stage": trainer.stage_name, "stage_index": trainer.stage_index, "epoch": trainer.epoch + 1,
            "step": self.global_step, "examples": self.examples_seen, "split": "dev", "time": _now(),
            "metrics": metrics,
        }
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


def weights_sha1(model: torch.nn.Module) -> str:
    """A hash of a model's parameters and buffers (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def build_model(recipe: Recipe, encoder: Any, tasks: dict[str, TaskData]) -> MultitaskModel:
    heads = {
        name: task_recipe.head.options.build(encoder.config.hidden_size, task_recipe.spec, task_recipe.input.options)
        for name, task_recipe in recipe.tasks.items()
    }
    formats = {name: task_recipe.input.options for name, task_recipe in recipe.tasks.items()}
    return MultitaskModel(encoder, heads, formats)


def _run_json(run: RunContext, status: str, started: str, extra: dict[str, Any]) -> dict[str, Any]:
    device = run.device
    info = {
        "mtbert_version": mtbert.__version__,
        "git": git_commit(Path(mtbert.__file__).resolve().parent),
        "command": sys.argv,
        "recipe": run.recipe.name,
        "recipe_source": run.recipe.source,
        "seed": run.recipe.seed,
        "status": status,
        "started": started,
        "device": {
            "type": device.type,
            "name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "precision": run.recipe.train.precision,
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()},
        "plugins": run.plugins.record(),
        "components": {
            "tasks": {n: {"input": t.input.name, "head": t.head.name, "head_provider": t.head.component.provider}
                      for n, t in run.recipe.tasks.items()},
            "sampler": run.recipe.sampler.component.provider,
            "loss_combiner": run.recipe.loss_combiner.component.provider,
            "gradient_transforms": [c.component.provider for c in run.recipe.gradient_transforms],
            "regularizers": [c.component.provider for c in run.recipe.regularizers],
            "stages": [c.component.provider for c in run.recipe.stages],
        },
        "data": run.data_files,
        "checkpoint": run.recipe.model.checkpoint,
        "distributed": {**run.distributed.record(), **run.distributed_info},
    }
    info.update(extra)
    return info


class _StopOnSignal:
    """First Ctrl-C: finish the current step, save, stop. Second: stop at once."""

    def __init__(self, run: RunContext):
        self.run = run
        self.previous = None
        self.first = 0.0

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum, frame):
        if self.run.stop_requested:
            # Under torchrun a Ctrl-C reaches a worker twice (from the terminal and forwarded by
            # torchrun's agent): only a second Ctrl-C that comes later aborts.
            if self.run.distributed.enabled and time.monotonic() - self.first < 3.0:
                return
            raise KeyboardInterrupt
        self.first = time.monotonic()
        self.run.request_stop("interrupted (Ctrl-C)")
        if self.run.distributed.is_main:
            print("\ninterrupt: finishing this step and saving state (Ctrl-C again to abort without saving)",
                  file=sys.stderr)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _check_resume(folder: Path, recipe: Recipe, plugins: Plugins) -> None:
    """Refuse to resume with a recipe that trains differently from the saved one.

    The saved recipe is validated again with today's defaults, so options added to mtbert since
    the run started (absent from its recipe.toml) compare equal at their default values.
    """
    saved = folder / "recipe.toml"
    if not saved.is_file():
        raise CheckpointError(f"--resume: {folder} is not a run folder (no recipe.toml)")
    import tomllib

    from mtbert.recipe import validate

    try:
        old = validate(tomllib.loads(saved.read_text(encoding="utf-8")), plugins, source=str(saved)).to_dict()
    except RecipeError as exc:
        raise RecipeError(f"--resume: the saved recipe {saved} no longer validates: {exc.problems[0]}") from None
    new = recipe.to_dict()
    ignore = {"train.progress", "train.keep_last", "train.device", "train.threads", "data.dir", "data.cache"}

    def diff(a: Any, b: Any, path: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            out = []
            for key in sorted(set(a) | set(b)):
                out += diff(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            return out
        return [] if a == b or path in ignore else [path]

    changed = diff(old, new, "")
    if changed:
        raise RecipeError(f"--resume: the recipe differs from the one {folder} was started with at {', '.join(changed[:5])}")


def find_resumable(name: str, root: Path = Path("runs")) -> Path | None:
    """The newest unfinished run folder of recipe ``name`` under ``root``."""
    candidates = sorted(root.glob(f"{name}-*"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []
    for folder in candidates:
        info = folder / "run.json"
        if (folder / "checkpoints" / "last" / "state.json").is_file() or (folder / "checkpoints" / "last.old").is_dir():
            try:
                status = json.loads(info.read_text()).get("status")
            except (OSError, ValueError):
                status = None
            if status != "finished":
                return folder
    return None


#: Stages known to train under data parallelism besides those whose options say ``data_parallel = True``.
def _check_data_parallel_stages(recipe: Recipe, world: int) -> None:
    """Under torchrun every stage must know how to share its work between processes."""
    if world <= 1:
        return
    problems = []
    for i, stage in enumerate(recipe.stages):
        if getattr(stage.options, "data_parallel", False):
            continue
        problems.append(f"stages[{i}]: stage '{stage.name}' ({stage.component.provider}) does not support data "
                        f"parallelism; run this recipe in one process (without torchrun)")
    if problems:
        raise RecipeError(problems)


def run_recipe(
    recipe: Recipe, plugins: Plugins, *, out: Path | None = None, resume: bool = False,
    say: Callable[[str], None] = print, warn: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train a recipe; returns the run folder and the metrics summary.

    Started by torchrun (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set), this process joins
    the job and trains its share of every batch; it leaves the job at the end.
    """
    job, _ = from_environment(choose_device(recipe.train.device))
    try:
        return _run_recipe(recipe, plugins, job, out=out, resume=resume, say=say, warn=warn)
    finally:
        job.close()


def _run_recipe(
    recipe: Recipe, plugins: Plugins, job: Distributed, *, out: Path | None, resume: bool,
    say: Callable[[str], None], warn: Callable[[str], None] | None,
) -> tuple[Path, dict[str, Any]]:
    main = job.is_main
    check_batch_sizes(recipe, job.world_size)
    _check_data_parallel_stages(recipe, job.world_size)

    def choose_folder() -> Path:  # rank 0 decides; every process gets its answer (or its error)
        if resume:
            folder = out or find_resumable(recipe.name)
            if folder is None:
                raise CheckpointError(f"--resume: no unfinished run of '{recipe.name}' under runs/; give its folder with --out")
            _check_resume(folder, recipe, plugins)
        else:
            folder = out or default_run_folder(recipe.name)
            if folder.exists() and any(folder.iterdir()):
                raise RecipeError(f"--out: {folder} already holds files; choose another folder or add --resume to continue it")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    folder = job.on_main(choose_folder)
    resume_state = None
    if resume:
        loaded = load_training_state(folder / "checkpoints" / "last")
        if loaded is None:
            raise CheckpointError(f"--resume: {folder} holds no saved training state (checkpoints/last)")
        model_state, resume_state = loaded
        resume_state["model"] = model_state

    run = RunContext(recipe, plugins, folder, say=say, warn=warn, resume_state=resume_state, distributed=job)
    previous_info: dict[str, Any] = {}
    if resume and main and (folder / "run.json").is_file():
        try:
            previous_info = json.loads((folder / "run.json").read_text())
        except ValueError:
            previous_info = {}
    started = previous_info.get("started", _now())
    run.build()
    if resume_state is not None:
        run.model.load_state_dict(resume_state["model"])
        for (_, regularizer), saved in zip(run.regularizers, resume_state.get("regularizers", [])):
            if hasattr(regularizer, "load_state_dict"):
                regularizer.load_state_dict(saved)
        run.global_step = int(resume_state["global_step"])
        run.examples_seen = int(resume_state.get("examples_seen", 0))
        run.best = resume_state["best"]
        run.last = resume_state["last"]
        run.say(f"resuming {folder} at step {run.global_step}")
    elif main:
        atomic_write_text(folder / "recipe.toml", recipe.to_toml())
    if job.world_size > 1:
        job.broadcast_module_(run.model)  # identical weights everywhere from the start, as DDP does
        torch.manual_seed(derive_seed(recipe.seed, "dropout", job.rank))  # distinct dropout per process
    resumes = int(previous_info.get("resumes", -1)) + 1 if resume else 0
    if main:
        atomic_write_json(folder / "run.json", _run_json(run, "running", started, {"resumes": resumes}))
        run.log = RunLog(folder, say)
        if resume_state is None:
            run.log.text("recipe", "```toml\n" + recipe.to_toml() + "\n```")
            run.log.text("plugins", "\n".join(f"- {p['name']} {p['version']} ({p['distribution']}): {', '.join(p['components'])}"
                                              for p in plugins.record()))
    t0 = time.perf_counter()
    status = "failed"
    try:
        with _StopOnSignal(run):
            run.hook.mtbert_on_run_start(run=run)
            for index, stage in enumerate(recipe.stages):
                run.stage_index = index
                saved = resume_state["trainer"] if resume_state is not None else None
                if saved is not None and index < saved["stage_index"]:
                    continue
                own = saved if saved is not None and saved["stage_index"] == index else None  # its own resume state
                stage.options.run(run, index, stage.name, own)
        status = "finished"
        if job.world_size > 1:
            hashes = job.gather_object(weights_sha1(run.model))
            run.distributed_info = {"weights_sha1": hashes, "weights_identical": len(set(hashes)) == 1}
            if len(set(hashes)) != 1:
                run.warn("the processes ended with different weights (see distributed.weights_sha1 in run.json); "
                         "this is a bug in a component's data-parallel support")
        if main and recipe.train.predict and run.best is not None:
            write_predictions(run)
        if main and not recipe.train.keep_last:
            drop_last_state(run)
    except MtbertError as exc:
        from mtbert.engine.trainer import RunInterrupted

        status = "interrupted" if isinstance(exc, RunInterrupted) else "failed"
        raise
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        elapsed = time.perf_counter() - t0
        previous_seconds = float(previous_info.get("train_seconds", 0.0)) if resume else 0.0
        summary = {"best": run.best, "last": run.last}
        if main:
            run.write_summary()
            atomic_write_json(folder / "run.json", _run_json(run, status, started, {
                "finished": _now(), "train_seconds": previous_seconds + elapsed, "resumes": resumes,
            }))
        if run.log is not None:
            if status == "finished":
                run.hook.mtbert_on_run_end(run=run, summary=summary)
            run.log.close()
    return folder, summary


def drop_last_state(run: RunContext) -> None:
    """A finished run needs no resumable state: remove ``checkpoints/last`` (weights and optimizer state)."""
    for folder in (run.checkpoints / "last", run.checkpoints / "last.old"):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def write_predictions(run: RunContext) -> None:
    """Dev and test predictions of the best checkpoint, in the CS224N submission format."""
    state, _ = load_weights(run.checkpoints / "best.safetensors")
    run.model.load_state_dict(state)
    out = run.folder / "predictions"
    for split in ("dev", "test"):
        _, outputs = evaluate(run.model, run.tasks, split, device=run.device, precision=run.recipe.train.precision,
                              batch_size=run.recipe.data.eval_batch_size, progress=run.recipe.train.progress)
        for name, (ids, predictions) in outputs.items():
            spec = run.tasks[name].spec
            spec.write_predictions(out / spec.prediction_filename(split), ids, predictions)
    run.say(f"predictions written to {out}")
