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
import sys
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
from mtbert.engine.run_records import RunLog, now, run_record, token_record
from mtbert.engine.runfolder import RunLock, claim_run_folder, trim_evaluations
from mtbert.engine.seeding import derive_seed
from mtbert.engine.signals import StopOnSignal
from mtbert.errors import CheckpointError, MtbertError, PluginError, RecipeError, RunInterrupted
from mtbert.files import WriteError, atomic_write_json, atomic_write_text
from mtbert.plugins import Plugins
from mtbert.recipe import Recipe

__all__ = ["RunContext", "run_recipe"]


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
    say: Callable[[str], None] = print, warn: Callable[[str], None] | None = None, allow_data_change: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Train a recipe; returns the run folder and the metrics summary.

    The run folder is locked for the run's life (:class:`mtbert.engine.runfolder.RunLock`): a
    second run or resume into it is refused naming this process. A resume refuses data files
    whose SHA-1 changed since the run started unless ``allow_data_change``.

    Started by torchrun (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set), this process joins
    the job and trains its share of every batch; it leaves the job at the end.
    """
    if recipe.train.ensemble > 1:  # members are single runs of this function (mtbert.engine.ensemble)
        from mtbert.engine.ensemble import run_ensemble

        return run_ensemble(recipe, plugins, out=out, resume=resume, say=say, warn=warn,
                            allow_data_change=allow_data_change, run_single=run_recipe)
    job, _ = from_environment(choose_device(recipe.train.device))
    locks: list[RunLock] = []
    try:
        return _run_recipe(recipe, plugins, job, out=out, resume=resume, say=say, warn=warn,
                           allow_data_change=allow_data_change, locks=locks)
    finally:
        for lock in locks:
            lock.release()
        job.close()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _run_recipe(
    recipe: Recipe, plugins: Plugins, job: Distributed, *, out: Path | None, resume: bool,
    say: Callable[[str], None], warn: Callable[[str], None] | None, allow_data_change: bool, locks: list[RunLock],
) -> tuple[Path, dict[str, Any]]:
    main = job.is_main
    check_batch_sizes(recipe, job.world_size)
    _check_data_parallel_stages(recipe, job.world_size)

    changes: list[dict[str, str]] = []

    def choose_folder() -> Path:  # rank 0 decides; every process gets its answer (or its error)
        folder, found = claim_run_folder(recipe, plugins, out=out, resume=resume, allow_data_change=allow_data_change,
                                         say=say, warn=warn or _stderr, locks=locks)
        changes.extend(found)
        return folder

    folder = job.on_main(choose_folder)
    resume_state = None
    if resume:
        loaded = load_training_state(folder / "checkpoints" / "last", required=("global_step", "best", "last", "trainer"))
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
            run.warn(f"warning: --resume: {folder / 'run.json'} is damaged; its times and resume count start again")
        if not isinstance(previous_info, dict):
            previous_info = {}
    started = previous_info.get("started", now())
    run.build()
    data_changes: list[dict[str, str]] = []
    if resume and main:
        data_changes = list(previous_info.get("data_changes", [])) + [
            {**change, "time": now(), "resume": int(previous_info.get("resumes", 0)) + 1} for change in changes]
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
    extra_info: dict[str, Any] = {"resumes": resumes}
    if data_changes:
        extra_info["data_changes"] = data_changes  # resumed with --allow-data-change on other data
    purge_step = None
    if main and resume_state is not None:
        trimmed = trim_evaluations(folder, run.global_step, int(resume_state["trainer"].get("stage_index", 0)))
        if trimmed:
            run.say(f"dropped {trimmed} evaluation(s) logged after the saved state from metrics.jsonl")
        purge_step = run.global_step + 1
    if main:
        atomic_write_json(folder / "run.json", run_record(run, "running", started, extra_info))
        run.log = RunLog(folder, say, purge_step=purge_step)
        if resume_state is None:
            run.log.text("recipe", "```toml\n" + recipe.to_toml() + "\n```")
            run.log.text("plugins", "\n".join(f"- {p['name']} {p['version']} ({p['distribution']}): {', '.join(p['components'])}"
                                              for p in plugins.record()))
    t0 = time.perf_counter()
    status = "failed"
    try:
        with StopOnSignal(run):
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
        if run.failure is not None:  # a hook failed in the last epoch: its state is saved, the run is not done
            status = "failed"
            raise PluginError(f"{run.failure}")
        if main and recipe.train.predict and run.best is not None:
            kept = run.best_dev_outputs  # None when the best evaluation came before a resume
            dev_outputs = kept[1] if kept is not None and kept[0] == run.best.get("step") else None
            out = write_predictions(run.model, run.tasks, run.checkpoints / "best.safetensors", folder / "predictions",
                                    device=run.device, precision=run.precision.name,
                                    batch_size=recipe.data.eval_batch_size, progress=recipe.train.progress,
                                    dev_outputs=dev_outputs)
            run.say(f"predictions written to {out}")
        if main and not recipe.train.keep_last:
            drop_last_state(run)
    except MtbertError as exc:
        status = "interrupted" if isinstance(exc, RunInterrupted) else "failed"
        if isinstance(exc, RunInterrupted) and run.failure is not None:
            status = "failed"
            raise PluginError(f"{run.failure}; state saved in {run.checkpoints / 'last'} at step {run.global_step}") from None
        raise
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        elapsed = time.perf_counter() - t0
        previous_seconds = float(previous_info.get("train_seconds", 0.0)) if resume else 0.0
        summary = {"best": run.best, "last": run.last}
        if main:
            _finish_files(run, folder, status, run_record(run, status, started, {
                **extra_info, "finished": now(), "train_seconds": previous_seconds + elapsed,
                "tokens": token_record(run, previous_info.get("tokens") if resume else None),
            }))
        if run.log is not None:
            if status == "finished":
                run.hook.mtbert_on_run_end(run=run, summary=summary)
            try:
                run.log.close()
            except OSError as exc:
                run.warn(f"warning: cannot finish the TensorBoard log in {folder}: {exc}")
    return folder, summary


def _finish_files(run: RunContext, folder: Path, status: str, info: dict[str, Any]) -> None:
    """metrics.json and run.json at the end; a full disk here must not hide the run's own error."""
    try:
        run.write_summary()
        atomic_write_json(folder / "run.json", info)
    except WriteError as exc:
        run.warn(f"warning: cannot record the run's end ({status}): {exc}")
        if status == "finished":
            raise


def drop_last_state(run: RunContext) -> None:
    """A finished run needs no resumable state: remove ``checkpoints/last`` (weights and optimizer state)."""
    for folder in (run.checkpoints / "last", run.checkpoints / "last.old"):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
