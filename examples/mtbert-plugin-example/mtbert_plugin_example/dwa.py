"""The ``dwa`` loss combiner: Dynamic Weight Average, from a third-party package.

S. Liu, E. Johns and A. J. Davison (2019), "End-to-End Multi-Task Learning with Attention",
CVPR 2019, section 3.3. In epoch ``t`` task ``k``'s loss is multiplied by::

    lambda_k(t) = K * exp(w_k(t-1) / T) / sum_i exp(w_i(t-1) / T),     w_k(t-1) = L_k(t-1) / L_k(t-2)

where ``L_k(t)`` is the average training loss of task ``k`` over epoch ``t``, ``K`` the number of
tasks and ``T`` the temperature. The weights always sum to ``K``. A task whose loss fell more
slowly over the last epoch (a larger ratio ``w_k``) gets more weight; ``T`` softens the
differences (``T -> inf``: every weight 1). As the paper does, the first two epochs, which have no
two previous epochs to compare, use ``lambda_k = 1``; epoch 3 compares epoch 2's averages with
epoch 1's, and so on.

Options (defaults in brackets):

* ``temperature`` [2.0]: ``T``, the paper's value.

How it fits mtbert's training loop:

* ``combine(losses)`` multiplies each task's loss by the current epoch's weight and adds the
  loss's value to that task's running sum. A task's epoch average is over the steps that had a
  batch of it, so any sampler works (one-task or all-tasks steps; ``requires_step_mode = None``).
* The averages are of the losses the combiner receives: the task's loss plus the terms
  regularizers add for it, as every mtbert loss combiner sees them.
* An epoch ends with ``end_epoch()``, which the engine calls after the last step of every
  training epoch, before the dev evaluation (the loss-combiner contract in
  ``mtbert.api.LossCombinerState``): the epoch's averages become history and the next epoch's
  weights follow. Every process calls it under data parallelism, and the loss values a combiner
  receives are already global, so all processes keep the same weights.
* A task that had no batch in one of the two epochs compared, or whose earlier average is 0,
  gets the neutral ratio 1.
* ``state_dict()`` holds the weights, the last two epoch averages and the running sums, so a run
  resumed in the middle of an epoch continues exactly.

Logged (TensorBoard ``train/``): ``weight/<task>`` (by the engine) and ``combiner/ratio/<task>``,
the ``w_k(t-1)`` behind the current weights.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch

from mtbert.api import Combined, hookimpl, option

def dwa_weights(previous: dict[str, float], earlier: dict[str, float], tasks: list[str],
                temperature: float) -> tuple[dict[str, float], dict[str, float]]:
    """``(lambda, w)`` for the next epoch from the average losses of the last two epochs.

    ``w_k = previous_k / earlier_k`` (1 when either is missing or ``earlier_k <= 0``) and
    ``lambda_k = K softmax(w / T)_k``, computed with the largest exponent subtracted first.
    """
    ratios = {}
    for task in tasks:
        last, before = previous.get(task), earlier.get(task)
        ratios[task] = last / before if last is not None and before is not None and before > 0 else 1.0
    scaled = {task: ratios[task] / temperature for task in tasks}
    top = max(scaled.values())
    exps = {task: math.exp(value - top) for task, value in scaled.items()}
    total = sum(exps.values())
    return {task: len(tasks) * exps[task] / total for task in tasks}, ratios


class DWACombiner:
    """Runtime side of :class:`DWA` for one training stage."""

    def __init__(self, temperature: float, task_names: list[str]):
        self.temperature = temperature
        self.tasks = list(task_names)
        self.weights = {task: 1.0 for task in self.tasks}
        self.ratios = {task: 1.0 for task in self.tasks}
        self.history: list[dict[str, float]] = []  # the last two finished epochs' averages, oldest first
        self.sums = {task: 0.0 for task in self.tasks}
        self.counts = {task: 0 for task in self.tasks}
        self.epochs = 0

    # ---------------------------------------------------------------- mtbert's contract
    def combine(self, losses: dict[str, torch.Tensor]) -> Combined:
        unknown = [task for task in losses if task not in self.weights]
        if unknown:
            raise ValueError(f"dwa was built for tasks {self.tasks}, got {unknown}")
        for task, loss in losses.items():
            self.sums[task] += float(loss.detach())
            self.counts[task] += 1
        return Combined(
            weighted={task: self.weights[task] * loss for task, loss in losses.items()},
            weights={task: self.weights[task] for task in losses},
            logs={f"ratio/{task}": self.ratios[task] for task in losses},
        )

    def after_step(self) -> None:
        pass  # the weights change once per epoch

    def end_epoch(self) -> None:
        """Close the epoch: its average losses become history, and the next epoch's weights follow."""
        averages = {task: self.sums[task] / self.counts[task] for task in self.tasks if self.counts[task]}
        self.history = (self.history + [averages])[-2:]
        self.sums = {task: 0.0 for task in self.tasks}
        self.counts = {task: 0 for task in self.tasks}
        self.epochs += 1
        if len(self.history) == 2:
            self.weights, self.ratios = dwa_weights(self.history[1], self.history[0], self.tasks, self.temperature)

    def state_dict(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks), "weights": dict(self.weights), "ratios": dict(self.ratios),
            "history": [dict(h) for h in self.history], "sums": dict(self.sums), "counts": dict(self.counts),
            "epochs": self.epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["tasks"]) != self.tasks:
            raise ValueError(f"dwa state is for tasks {state['tasks']}, not {self.tasks}")
        self.weights = {t: float(v) for t, v in state["weights"].items()}
        self.ratios = {t: float(v) for t, v in state["ratios"].items()}
        self.history = [{t: float(v) for t, v in h.items()} for h in state["history"]]
        self.sums = {t: float(v) for t, v in state["sums"].items()}
        self.counts = {t: int(v) for t, v in state["counts"].items()}
        self.epochs = int(state["epochs"])


@attrs.define
class DWA:
    """Dynamic Weight Average (Liu et al. 2019): weight each task by how slowly its loss falls."""

    temperature: float = option(2.0, help="T of the softmax over loss ratios (paper: 2; larger = more equal weights)",
                                min=0, min_exclusive=True)

    requires_step_mode = None  # epoch averages: any sampler works

    def build(self, task_names: list[str], model: torch.nn.Module) -> DWACombiner:
        return DWACombiner(self.temperature, list(task_names))


@hookimpl
def mtbert_register_loss_combiners(register):
    register("dwa", DWA)

