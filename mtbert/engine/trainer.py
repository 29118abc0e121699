"""The multitask training loop: the extension points of DESIGN.md in the order they act.

One optimizer step::

    sampler -> tasks of this step -> for each: batch -> input format -> encoder -> head
            -> task loss (+ regularizer terms) -> loss combiner -> backward
            -> gradient transforms -> optimizer, schedule -> combiner.after_step()

The plain path (no transform asking for per-task gradients) is one backward of the summed
loss. When a transform asks for per-task gradients, each task's weighted loss is
backpropagated on its own (the tasks' graphs are disjoint, so this costs no extra compute)
and the shared (encoder) gradient is copied into row ``i`` of a ``[tasks, params]`` buffer on
the device; head gradients accumulate untouched in their ``.grad``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from mtbert.engine.components import PenaltyContext
from mtbert.engine.data import TaskStream
from mtbert.engine.device import autocast, use_fused_adamw
from mtbert.engine.gradients import SharedGradients
from mtbert.engine.progress import Progress
from mtbert.engine.seeding import derive_seed
from mtbert.errors import MtbertError


class RunInterrupted(MtbertError):
    """Training stopped on request (Ctrl-C or a plugin); the state was saved for --resume."""


def _state_of(component: Any) -> dict[str, Any]:
    """A component's checkpoint state, for those that keep one (optional ``state_dict``)."""
    return component.state_dict() if hasattr(component, "state_dict") else {}


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant-warmup":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "cosine-warmup":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)  # linear-warmup: linear decay to 0

    return factor


def build_optimizer(
    model: Any, optim: Any, extra_params: list[torch.nn.Parameter], device: torch.device, extra_lr: float | None = None
):
    """AdamW with no weight decay on biases and LayerNorm weights; heads may have their own lr."""
    groups = []

    def split(params: list[tuple[str, torch.nn.Parameter]], lr: float, label: str) -> None:
        decay = [p for n, p in params if p.requires_grad and p.ndim >= 2 and "LayerNorm" not in n and "norm" not in n.lower()]
        no_decay = [p for n, p in params if p.requires_grad and not (p.ndim >= 2 and "LayerNorm" not in n and "norm" not in n.lower())]
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": optim.weight_decay, "name": f"{label}"})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{label}-no-decay"})

    split(list(model.encoder.named_parameters()), optim.lr, "encoder")
    split(list(model.heads.named_parameters()), optim.head_lr or optim.lr, "heads")
    if extra_params:
        groups.append({"params": extra_params, "lr": extra_lr or optim.head_lr or optim.lr, "weight_decay": 0.0,
                       "name": "combiner"})
    kwargs = {"betas": tuple(optim.betas), "eps": optim.eps}
    if use_fused_adamw(device):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # an older torch without fused AdamW here
            pass
    return torch.optim.AdamW(groups, foreach=device.type != "cpu", **kwargs)


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
        recipe = self.recipe
        seed = recipe.seed

        self.streams = {
            name: TaskStream(
                run.tasks[name],
                batch_size=recipe.tasks[name].section.batch_size or recipe.optim.batch_size,
                seed=derive_seed(seed, "stream", stage_index, name),
                bucket=recipe.data.bucket,
            )
            for name in task_names
        }
        self.sampler = recipe.sampler.options.build(
            {n: len(s) for n, s in self.streams.items()}, derive_seed(seed, "sampler", stage_index), epochs
        )
        shared = run.model.shared_parameters()
        self.shared = shared
        self.combiner = recipe.loss_combiner.options.build(list(task_names), run.model)
        self.transforms = [(spec, spec.options.build(shared)) for spec in recipe.gradient_transforms]
        self.per_task = any(getattr(t, "needs", "summed") == "per-task" for _, t in self.transforms)
        combiner_params = list(getattr(self.combiner, "parameters", lambda: [])())
        self.optimizer = build_optimizer(run.model, recipe.optim, combiner_params, self.device,
                                         extra_lr=getattr(self.combiner, "lr", None))
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]

        self.accumulation = recipe.optim.grad_accumulation
        self.steps_per_epoch = self.sampler.steps_per_epoch()
        if recipe.train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, recipe.train.max_steps_per_epoch)
        self.updates_per_epoch = math.ceil(self.steps_per_epoch / self.accumulation)
        total = self.updates_per_epoch * epochs
        warmup = int(round(recipe.optim.warmup * total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(recipe.optim.schedule, total, warmup))

        self.grads = SharedGradients(shared, self.device) if shared else None
        self.task_grads: torch.Tensor | None = None

        self.epoch = 0
        self.position = 0
        self.plan: list[tuple[str, ...]] | None = None
        self.micro = 0
        self.bad_evals = 0
        self.stage_best: float | None = None
        self.log_sums: dict[str, float] = {}
        self.log_counts: dict[str, int] = {}

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
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
            "streams": {name: s.state_dict() for name, s in self.streams.items()},
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.plan = [tuple(step) for step in state["plan"]] if state["plan"] is not None else None
        self.bad_evals = int(state["bad_evals"])
        self.stage_best = state["stage_best"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.combiner.load_state_dict(state["combiner"])
        for (_, transform), saved in zip(self.transforms, state.get("transforms", [])):
            if hasattr(transform, "load_state_dict"):
                transform.load_state_dict(saved)
        for name, stream_state in state["streams"].items():
            self.streams[name].load_state_dict(stream_state)
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    # ----------------------------------------------------------------- one step
    def _task_loss(self, task: str) -> tuple[torch.Tensor, dict[str, float]]:
        run = self.run
        batch = self.streams[task].next_batch().to(self.device)
        logs: dict[str, float] = {}
        with autocast(self.device, self.recipe.train.precision):
            predictions = run.model(batch)
        loss = run.model.heads[task].loss(predictions, batch.labels)
        logs[f"loss/{task}"] = float(loss.detach())
        if run.regularizers:
            context = PenaltyContext(model=run.model, task=task, batch=batch, predictions=predictions, loss=loss)
            for spec, regularizer in run.regularizers:
                with autocast(self.device, self.recipe.train.precision):  # extra forwards as the main one
                    term = regularizer.penalty(context)
                if term is not None:
                    loss = loss + term.float()
                    logs[f"{spec.name}/{task}"] = float(term.detach())
        return loss, logs

    def _backward(self, tasks: tuple[str, ...], combined: Any) -> None:
        scale = 1.0 / self.accumulation
        if not self.per_task or self.grads is None:
            (combined.total * scale).backward()
            return
        if self.task_grads is None or self.task_grads.shape[0] != len(self.task_names):
            self.task_grads = torch.zeros(len(self.task_names), self.grads.numel, device=self.device)
        for k, task in enumerate(tasks):
            (combined.weighted[task] * scale).backward(retain_graph=k < len(tasks) - 1)
            row = self.task_names.index(task)
            self.task_grads[row] += self.grads.flat()
            self.grads.zero()

    def _apply_transforms(self, tasks_seen: list[str]) -> dict[str, float]:
        logs: dict[str, float] = {}
        if self.per_task and self.grads is not None:
            rows = [self.task_names.index(t) for t in tasks_seen]
            current: torch.Tensor = self.task_grads[rows]
        else:
            current = None
        for spec, transform in self.transforms:
            needs = getattr(transform, "needs", "summed")
            if needs == "per-task":
                current = transform.apply(current, tasks=tasks_seen)
                if current.dim() == 2:  # a transform may keep per-task rows; later ones see their sum
                    current = current.sum(dim=0)
                self.grads.assign(current)
                current = None
            elif needs == "summed" and self.grads is not None:
                if current is not None:
                    self.grads.assign(current.sum(dim=0))
                    current = None
                self.grads.assign(transform.apply(self.grads.flat().clone(), tasks=tasks_seen))
            elif needs == "parameters":
                if current is not None:
                    self.grads.assign(current.sum(dim=0))
                    current = None
                transform.apply(self.trainable, tasks=tasks_seen)
            for key, value in transform.logs().items():
                logs[f"{spec.name}/{key}"] = value
        if current is not None:
            self.grads.assign(current.sum(dim=0))
        if self.task_grads is not None:
            self.task_grads.zero_()
        return logs

    def _optimizer_step(self, tasks_seen: list[str]) -> dict[str, float]:
        logs = self._apply_transforms(tasks_seen) if self.transforms else {}
        self.optimizer.step()
        self.scheduler.step()
        self.combiner.after_step()
        for spec, regularizer in self.run.regularizers:
            if hasattr(regularizer, "after_step"):
                regularizer.after_step()
            if hasattr(regularizer, "logs"):
                logs.update({f"{spec.name}/{key}": value for key, value in regularizer.logs().items()})
        self.optimizer.zero_grad(set_to_none=True)
        if self.grads is not None:
            self.grads.rebind()
        return logs

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
        tasks_seen: list[str] = []
        while self.epoch < self.epochs:
            if self.plan is None:
                self.plan = self.sampler.epoch(self.epoch)[: self.steps_per_epoch]
                self.position = 0
            progress = Progress(
                len(self.plan), f"{self.stage_name} epoch {self.epoch + 1}/{self.epochs}",
                enabled=recipe.train.progress, start=self.position,
            )
            running_loss: float | None = None
            epoch_start = time.perf_counter()
            while self.position < len(self.plan):
                tasks = self.plan[self.position]
                losses: dict[str, torch.Tensor] = {}
                step_logs: dict[str, float] = {}
                for task in tasks:
                    losses[task], logs = self._task_loss(task)
                    step_logs.update(logs)
                combined = self.combiner.combine(losses)
                self._backward(tasks, combined)
                for task in tasks:
                    if task not in tasks_seen:
                        tasks_seen.append(task)
                total = float(combined.total.detach())
                if not math.isfinite(total):
                    raise MtbertError(
                        f"training diverged: the loss became {total} at step {run.global_step + 1} "
                        f"(tasks {', '.join(tasks)}); lower optim.lr or add a clip-norm gradient transform"
                    )
                step_logs["loss/total"] = total
                for task, weight in combined.weights.items():
                    step_logs[f"weight/{task}"] = weight
                step_logs.update({f"combiner/{k}": v for k, v in combined.logs.items()})
                self.position += 1
                self.micro += 1
                end_of_epoch = self.position >= len(self.plan)
                if self.micro % self.accumulation == 0 or end_of_epoch:
                    step_logs.update(self._optimizer_step(tasks_seen))
                    tasks_seen = []
                    self.micro = 0
                    run.global_step += 1
                    step_logs["lr"] = self.scheduler.get_last_lr()[0]
                    self._accumulate_logs(step_logs)
                    running_loss = total if running_loss is None else 0.95 * running_loss + 0.05 * total
                    progress.update(1, loss=running_loss)
                    run.hook.mtbert_on_step_end(run=run, step=run.global_step, logs=step_logs)
                    if run.global_step % recipe.train.log_every == 0:
                        run.log_train(self._flush_logs(), self.stage_name)
                    if recipe.train.checkpoint_every and run.global_step % recipe.train.checkpoint_every == 0 and not end_of_epoch:
                        run.save_last(self)
                    if run.stop_requested and not end_of_epoch:
                        progress.close()
                        run.save_last(self)
                        raise RunInterrupted(run.interrupt_message())
                else:
                    self._accumulate_logs(step_logs)
                    progress.update(1, loss=total)
            progress.close()
            if self.log_sums:
                run.log_train(self._flush_logs(), self.stage_name)
            train_seconds = time.perf_counter() - epoch_start
            metrics = run.evaluate_dev(self.stage_name, self.epoch, train_seconds)
            improved = run.record_evaluation(self, metrics)
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
            if run.stop_requested and self.epoch < self.epochs:
                raise RunInterrupted(run.interrupt_message())
        return last_metrics
