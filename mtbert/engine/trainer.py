"""The multitask training loop: the extension points (CONTRIBUTING.md, "Component contracts") in the order they act.

One optimizer step::

    sampler -> tasks of this step -> for each: batch -> input format -> encoder -> head
            -> task loss (+ regularizer terms) -> loss combiner -> backward
            -> gradient transforms -> optimizer, schedule -> combiner.after_step()

The plain path (no transform asking for per-task gradients) is one backward of the summed
loss. When a transform asks for per-task gradients, each task's weighted loss is
backpropagated on its own (the tasks' graphs are disjoint, so this costs no extra compute)
and the shared (encoder) gradient is copied into row ``i`` of a ``[tasks, params]`` buffer on
the device; head gradients accumulate untouched in their ``.grad``.

Under data parallelism (torchrun; :mod:`mtbert.engine.distributed`) every process runs this
same loop on its shard of each global batch: the step's task losses are made global with one
all-reduce before the loss combiner sees them, and the gradients are summed across processes
once per optimizer step, before the gradient transforms (the per-task buffer itself when a
transform asks for per-task gradients), so transforms and optimizer do identical work
everywhere. Evaluation and files are rank 0's; early stopping and stop requests are agreed.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from mtbert.engine.batches import TaskStream
from mtbert.engine.components import PenaltyContext
from mtbert.engine.device import autocast
from mtbert.engine.distributed import Distributed, global_losses, reduce_gradients
from mtbert.engine.extensions import averaged_weights
from mtbert.engine.gradients import SharedGradients, apply_transforms, build_transform
from mtbert.engine.health import diverged_component
from mtbert.engine.optim import build_optimizer, build_scheduler
from mtbert.engine.progress import Progress
from mtbert.engine.seeding import RandomState, derive_seed
from mtbert.errors import MtbertError, RunInterrupted


def _state_of(component: Any) -> dict[str, Any]:
    """A component's checkpoint state, for those that keep one (optional ``state_dict``)."""
    return component.state_dict() if hasattr(component, "state_dict") else {}


class MultitaskTrainer:
    """Trains the run's model on a set of tasks for a number of epochs (one stage)."""

    def __init__(self, run: Any, stage_index: int, stage_name: str, task_names: list[str], epochs: int, select_best: bool):
        self.run = run
        self.recipe = run.recipe
        self.stage_index = stage_index
        self.stage_name = stage_name
        self.task_names = task_names
        self.epochs = epochs
        self.select_best = select_best
        self.device = run.device
        self.dist: Distributed = getattr(run, "distributed", None) or Distributed()
        recipe = self.recipe
        seed = recipe.seed

        self.streams = {
            name: TaskStream(
                run.tasks[name],
                batch_size=recipe.tasks[name].section.batch_size or recipe.optim.batch_size,
                seed=derive_seed(seed, "stream", stage_index, name),
                bucket=recipe.data.bucket,
                rank=self.dist.rank,
                world=self.dist.world_size,
            )
            for name in task_names
        }
        self.sampler = recipe.sampler.options.build(
            {n: len(s) for n, s in self.streams.items()}, derive_seed(seed, "sampler", stage_index), epochs
        )
        shared = run.model.shared_parameters()
        self.shared = shared
        self.combiner = recipe.loss_combiner.options.build(list(task_names), run.model)
        self.transforms = [(spec, build_transform(spec.options, shared, derive_seed(seed, "transform", stage_index, i)))
                           for i, spec in enumerate(recipe.gradient_transforms)]
        self.per_task = any(getattr(t, "needs", "summed") == "per-task" for _, t in self.transforms)
        combiner_params = list(getattr(self.combiner, "parameters", lambda: [])())
        self.optimizer = build_optimizer(run.model, recipe.optim, combiner_params, self.device,
                                         extra_lr=getattr(self.combiner, "lr", None),
                                         group_rules=getattr(recipe, "optimizer_groups", []))
        spec = getattr(recipe, "weight_average", None)
        self.average = spec.options.build(run.model) if spec is not None else None
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        # Data parallelism: everything trainable outside the flat shared buffer is summed across
        # processes as one flat buffer; the combiner's own parameters, whose gradient is the same
        # on every process (it depends on the global loss values only), are averaged instead.
        shared_ids = {id(p) for p in shared}
        combiner_ids = {id(p) for p in combiner_params}
        self.other_params = [p for p in self.trainable if id(p) not in shared_ids]
        self.other_scales = [1.0 / self.dist.world_size if id(p) in combiner_ids else 1.0 for p in self.other_params]

        self.accumulation = recipe.optim.grad_accumulation
        self.steps_per_epoch = self.sampler.steps_per_epoch()
        if recipe.train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, recipe.train.max_steps_per_epoch)
        self.updates_per_epoch = math.ceil(self.steps_per_epoch / self.accumulation)
        self.scheduler = build_scheduler(self.optimizer, recipe.optim.schedule, self.updates_per_epoch * epochs,
                                         recipe.optim.warmup)

        self.grads = SharedGradients(shared, self.device) if shared and self._flat_gradients_needed() else None
        self.task_grads: torch.Tensor | None = None

        self.epoch = 0
        self.position = 0
        self.plan: list[tuple[str, ...]] | None = None
        self.micro = 0
        self.tasks_seen: list[str] = []  # tasks whose gradients the next optimizer step holds
        self.bad_evals = 0
        self.stage_best: float | None = None
        self.log_sums: dict[str, float] = {}
        self.log_counts: dict[str, int] = {}

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The stage's resumable state; under data parallelism a collective (every process calls it)."""
        return {
            "stage_index": self.stage_index,
            "epoch": self.epoch,
            "position": self.position,
            "plan": [list(step) for step in self.plan] if self.plan is not None else None,
            "bad_evals": self.bad_evals,
            "stage_best": self.stage_best,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "combiner": self.combiner.state_dict(),
            "transforms": [_state_of(t) for _, t in self.transforms],
            "weight_average": _state_of(self.average) if self.average is not None else {},
            "streams": {name: s.state_dict() for name, s in self.streams.items()},
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rank_rng": self._rank_rng_states(),
        }

    def _rank_rng_states(self) -> list[Any] | None:
        """Every process's dropout RNG states, by rank (they differ on purpose), or None in one process."""
        if self.dist.world_size == 1:
            return None
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return self.dist.gather_object([torch.get_rng_state(), cuda])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.plan = [tuple(step) for step in state["plan"]] if state["plan"] is not None else None
        self.bad_evals = int(state["bad_evals"])
        self.stage_best = state["stage_best"]
        fresh = [(group["initial_lr"], group["weight_decay"]) for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_recipe_rates(fresh)
        self.sampler.load_state_dict(state["sampler"])
        self.combiner.load_state_dict(state["combiner"])
        for (_, transform), saved in zip(self.transforms, state.get("transforms", [])):
            if hasattr(transform, "load_state_dict"):
                transform.load_state_dict(saved)
        if self.average is not None and state.get("weight_average"):
            self.average.load_state_dict(state["weight_average"])
        for name, stream_state in state["streams"].items():
            self.streams[name].load_state_dict(stream_state)
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.dist.world_size > 1:
            ranks = state.get("rank_rng")
            if ranks is not None and len(ranks) == self.dist.world_size:
                cpu, cuda = ranks[self.dist.rank]
                torch.set_rng_state(cpu)
                if cuda is not None and self.device.type == "cuda":
                    torch.cuda.set_rng_state(cuda, self.device)
            else:  # saved by a run with another number of processes: fresh, distinct streams
                torch.manual_seed(derive_seed(self.recipe.seed, "dropout", self.dist.rank, self.run.global_step))

    def _flat_gradients_needed(self) -> bool:
        """The flat buffer serves gradient transforms and the all-reduce of data parallelism; a plain
        step lets autograd hand each parameter its own gradient: no buffer to clear, no copy into it."""
        return bool(self.transforms) or self.dist.world_size > 1

    def _apply_recipe_rates(self, fresh: list[tuple[float, float]]) -> None:
        """The recipe's learning rates and weight decay over those of a loaded optimizer state.

        Equal on a plain ``--resume`` (the recipe was checked to be the saved one), so nothing
        changes; different when population-based training continues another trial's state with
        perturbed values (:mod:`mtbert.sweep.pbt`): the schedule then goes on from the new base rates.
        """
        groups = self.optimizer.param_groups
        if [(g["initial_lr"], g["weight_decay"]) for g in groups] == fresh:
            return
        factors = [fn(self.scheduler.last_epoch) for fn in self.scheduler.lr_lambdas]
        for group, (base, decay), factor in zip(groups, fresh, factors):
            group["initial_lr"], group["weight_decay"], group["lr"] = base, decay, base * factor
        self.scheduler.base_lrs = [base for base, _ in fresh]
        self.scheduler._last_lr = [group["lr"] for group in groups]

    # ----------------------------------------------------------------- one step
    def _task_loss(self, task: str) -> tuple[torch.Tensor, dict[str, float], float]:
        """This process's loss on the task's next batch, its logs and its share of the global batch."""
        run = self.run
        stream = self.streams[task]
        batch, share = stream.next_shard()
        run.examples_seen += stream.last_global_size
        batch = batch.to(self.device)
        logs: dict[str, float] = {}
        # Only for a regularizer that replays this forward's dropout masks (SMART's shared dropout).
        wanted = any(getattr(r, "wants_random_state", False) for _, r in run.regularizers)
        random_state = RandomState(self.device) if wanted else None
        with autocast(self.device, self.run.precision.name):
            predictions = run.model(batch)
        loss = run.model.heads[task].loss(predictions, batch.labels)
        logs[f"loss/{task}"] = float(loss.detach())
        if run.regularizers:
            context = PenaltyContext(model=run.model, task=task, batch=batch, predictions=predictions, loss=loss,
                                     random_state=random_state)
            for spec, regularizer in run.regularizers:
                with autocast(self.device, self.run.precision.name):  # extra forwards as the main one
                    term = regularizer.penalty(context)
                if term is not None:
                    loss = loss + term.float()
                    logs[f"{spec.name}/{task}"] = float(term.detach())
        return loss, logs, share

    def _backward(self, tasks: tuple[str, ...], combined: Any) -> None:
        scale = 1.0 / self.accumulation
        if not self.per_task or self.grads is None:
            (combined.total * scale).backward()
            return
        if self.task_grads is None or self.task_grads.shape[0] != len(self.task_names):
            self.task_grads = torch.zeros(len(self.task_names), self.grads.numel, device=self.device)
        for k, task in enumerate(tasks):
            # The shared .grad views point into this task's row: backward accumulates there directly.
            self.grads.redirect(self.task_grads[self.task_names.index(task)])
            (combined.weighted[task] * scale).backward(retain_graph=k < len(tasks) - 1)
        self.grads.redirect(None)

    def _optimizer_step(self, tasks_seen: list[str]) -> dict[str, float]:
        if self.dist.world_size > 1:
            reduce_gradients(self.dist, self.grads, self.task_grads if self.per_task else None,
                             self.other_params, self.other_scales, self.device)
        logs = apply_transforms(self.transforms, self.grads, self.task_grads if self.per_task else None,
                                self.task_names, tasks_seen, self.trainable) if self.transforms else {}
        if self.grads is not None:
            self.grads.release_unused()  # parameters no loss reached keep .grad = None: AdamW skips them
        self.optimizer.step()
        self.scheduler.step()
        if self.average is not None:
            self.average.update(self.run.model)
        self.combiner.after_step()
        for spec, regularizer in self.run.regularizers:
            if hasattr(regularizer, "after_step"):
                regularizer.after_step()
            if hasattr(regularizer, "logs"):
                logs.update({f"{spec.name}/{key}": value for key, value in regularizer.logs().items()})
        self.optimizer.zero_grad(set_to_none=True)
        if self.grads is not None:
            # Per-task backward passes go to the task rows and the transforms assign the whole
            # buffer: clearing it would be wasted (91 MB for MiniLM) each step.
            self.grads.rebind(zero=not self.per_task)
        return logs

    def step(self, tasks: tuple[str, ...], *, end_of_epoch: bool = False) -> tuple[float, dict[str, float], bool]:
        """One sampler step: the tasks' losses, the loss combiner, backward, and the optimizer step
        when it completes ``optim.grad_accumulation`` steps (or the epoch).

        Returns the total loss, the step's logs and whether the optimizer stepped (then
        ``run.global_step`` has advanced). The loop of :meth:`train` and the benchmarks both
        take their steps here.
        """
        losses: dict[str, torch.Tensor] = {}
        logs: dict[str, float] = {}
        task_logs: dict[str, dict[str, float]] = {}
        shares: dict[str, float] = {}
        for task in tasks:
            losses[task], task_logs[task], shares[task] = self._task_loss(task)
            logs.update(task_logs[task])
        if self.dist.world_size > 1:
            losses, logs = global_losses(self.dist, losses, task_logs, shares, self.device)
        if hasattr(self.combiner, "observe_task_losses"):  # the losses without regularizer terms
            self.combiner.observe_task_losses({t: logs[f"loss/{t}"] for t in tasks})
        combined = self.combiner.combine(losses)
        self._backward(tasks, combined)
        self.tasks_seen += [task for task in tasks if task not in self.tasks_seen]
        total = float(combined.total.detach())
        if not math.isfinite(total):
            raise MtbertError(
                f"training diverged: {diverged_component(self.run, logs, tasks, total)} at step "
                f"{self.run.global_step + 1}; lower optim.lr or add a clip-norm gradient transform"
            )
        logs["loss/total"] = total
        for task, weight in combined.weights.items():
            logs[f"weight/{task}"] = weight
        logs.update({f"combiner/{k}": v for k, v in combined.logs.items()})
        self.micro += 1
        if self.micro % self.accumulation and not end_of_epoch:
            return total, logs, False
        logs.update(self._optimizer_step(self.tasks_seen))
        self.tasks_seen = []
        self.micro = 0
        self.run.global_step += 1
        logs["lr"] = self.scheduler.get_last_lr()[0]
        return total, logs, True

    # ----------------------------------------------------------------- logging
    def _accumulate_logs(self, logs: dict[str, float]) -> None:
        for key, value in logs.items():
            self.log_sums[key] = self.log_sums.get(key, 0.0) + value
            self.log_counts[key] = self.log_counts.get(key, 0) + 1

    def _flush_logs(self) -> dict[str, float]:
        means = {k: self.log_sums[k] / self.log_counts[k] for k in self.log_sums}
        self.log_sums.clear()
        self.log_counts.clear()
        return means

    # ----------------------------------------------------------------- the loop
    def train(self) -> dict[str, float]:
        run = self.run
        recipe = self.recipe
        run.model.train()
        last_metrics: dict[str, float] = {}
        if self.epoch == 0 and self.position == 0 and self.plan is None:  # a fresh stage, not a resumed one
            for _, regularizer in run.regularizers:
                if hasattr(regularizer, "begin_stage"):
                    regularizer.begin_stage(run.model)
        while self.epoch < self.epochs:
            if self.plan is None:
                self.plan = self.sampler.epoch(self.epoch)[: self.steps_per_epoch]
                self.position = 0
            progress = Progress(
                len(self.plan), f"{self.stage_name} epoch {self.epoch + 1}/{self.epochs}",
                enabled=recipe.train.progress and self.dist.is_main, start=self.position,
            )
            running_loss: float | None = None
            epoch_start = time.perf_counter()
            while self.position < len(self.plan):
                tasks = self.plan[self.position]
                self.position += 1
                end_of_epoch = self.position >= len(self.plan)
                total, step_logs, stepped = self.step(tasks, end_of_epoch=end_of_epoch)
                self._accumulate_logs(step_logs)
                if not stepped:
                    progress.update(1, loss=total)
                    continue
                running_loss = total if running_loss is None else 0.95 * running_loss + 0.05 * total
                progress.update(1, loss=running_loss)
                run.hook.mtbert_on_step_end(run=run, step=run.global_step, logs=step_logs)
                if run.global_step % recipe.train.log_every == 0:
                    run.log_train(self._flush_logs(), self.stage_name)
                if recipe.train.checkpoint_every and run.global_step % recipe.train.checkpoint_every == 0 and not end_of_epoch:
                    run.save_last(self)
                if self.dist.any(run.stop_requested, self.device) and not run.stop_requested:
                    run.request_stop("stop requested by another process")  # every process stops here
                if run.stop_requested and not end_of_epoch:
                    progress.close()
                    run.save_last(self)
                    raise RunInterrupted(run.interrupt_message())
            progress.close()
            if hasattr(self.combiner, "end_epoch"):  # per-epoch combiners (DWA) close their epoch here
                self.combiner.end_epoch()
            if self.log_sums:
                run.log_train(self._flush_logs(), self.stage_name)
            train_seconds = time.perf_counter() - epoch_start
            with averaged_weights(run.model, self.average):  # evaluated and kept as best: the averaged weights
                metrics, improved = run.evaluate_epoch(self, train_seconds)  # rank 0's, on every process
            if self.select_best:
                if improved:
                    self.bad_evals = 0
                else:
                    self.bad_evals += 1
            last_metrics = metrics
            self.epoch += 1
            self.plan = None
            self.position = 0
            stop_early = bool(recipe.train.patience and self.select_best and self.bad_evals >= recipe.train.patience)
            if stop_early:
                run.say(f"early stopping: {self.bad_evals} evaluation(s) without improving {recipe.train.select}")
                self.epoch = self.epochs
            run.save_last(self)
            if self.dist.any(run.stop_requested, self.device) and not run.stop_requested:
                run.request_stop("stop requested by another process")
            if run.stop_requested and self.epoch < self.epochs:
                raise RunInterrupted(run.interrupt_message())
        if self.grads is not None:
            self.grads.close()
        return last_metrics
