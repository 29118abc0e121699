"""``run_recipe``, what ``mtbert run`` calls: choose the run folder, build, run the stages, record.

Under ``torchrun`` (:mod:`mtbert.engine.distributed`) every process builds the same model and
trains on its shard of every batch; rank 0 alone chooses and writes the run folder, evaluates,
saves checkpoints and predictions, logs, prints and calls the plugins' event hooks. run.json's
``distributed`` records the world size, the backend and, at the end, a hash of every process's
weights (they must be identical). The folder's layout is :mod:`mtbert.engine.run_records`'s.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from mtbert.engine.checkpoint import load_training_state
from mtbert.engine.context import RunContext
from mtbert.engine.device import choose_device
from mtbert.engine.distributed import Distributed, check_batch_sizes, from_environment
from mtbert.engine.evaluate import write_predictions
from mtbert.engine.multitask_model import weights_sha1
from mtbert.engine.run_records import RunLog, check_resume, default_run_folder, find_resumable, now, run_record
from mtbert.engine.seeding import derive_seed
from mtbert.errors import CheckpointError, MtbertError, RecipeError, RunInterrupted
from mtbert.files import atomic_write_json, atomic_write_text
from mtbert.plugins import Plugins
from mtbert.recipe import Recipe

__all__ = ["RunContext", "run_recipe"]


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
            check_resume(folder, recipe, plugins)
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
    started = previous_info.get("started", now())
    run.build()
    if resume_state is not None:
        run.model.load_state_dict(resume_state["model"])
        for (_, regularizer), saved in zip(run.regularizers, resume_state.get("regularizers", [])):
            if hasattr(regularizer, "load_state_dict"):
                regularizer.load_state_dict(saved)
        run.global_step = int(resume_state["global_step"])
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
        atomic_write_json(folder / "run.json", run_record(run, "running", started, {"resumes": resumes}))
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
            out = write_predictions(run.model, run.tasks, run.checkpoints / "best.safetensors", folder / "predictions",
                                    device=run.device, precision=recipe.train.precision,
                                    batch_size=recipe.data.eval_batch_size, progress=recipe.train.progress)
            run.say(f"predictions written to {out}")
        if main and not recipe.train.keep_last:
            drop_last_state(run)
    except MtbertError as exc:
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
            atomic_write_json(folder / "run.json", run_record(run, status, started, {
                "finished": now(), "train_seconds": previous_seconds + elapsed, "resumes": resumes,
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
