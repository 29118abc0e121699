"""The ``gradnorm`` loss combiner: task weights that balance gradient norms and training rates.

Chen, Badrinarayanan, Lee and Rabinovich (2018), *GradNorm: Gradient Normalization for Adaptive
Loss Balancing in Deep Multitask Networks* (ICML). The network is trained on
``L = sum_i w_i L_i``; the weights ``w_i > 0`` (initially 1) are trained by their own Adam
optimizer (learning rate ``lr``) on the balancing loss::

    G_i   = || grad_W (w_i L_i) ||_2 = w_i * || grad_W L_i ||_2     (W: the balanced layer)
    Gbar  = mean_i G_i
    r_i   = Ltilde_i / mean_j Ltilde_j,   Ltilde_i = L_i(t) / L_i(0)   (unweighted losses)
    Lgrad = sum_i | G_i - [Gbar * r_i ** alpha] |     (the bracket is a constant target)

and after each update they are renormalised so that ``sum_i w_i = T`` (the number of
tasks), with every weight at least ``min_weight`` (a weight below it is raised to it and the
others shrink proportionally), so the weights stay positive. A task that trains more slowly
than the others (``r_i > 1``) gets a larger gradient-norm target, hence a larger weight.

How this implementation keeps the balancing away from the network (two popular
implementations let ``Lgrad.backward()`` write into the network's ``.grad``):

* ``||grad_W L_i||`` is computed with ``torch.autograd.grad(L_i, W, retain_graph=True)``, which
  never touches any ``.grad``; since ``G_i = w_i ||grad_W L_i||``, the norms are detached and the
  balancing loss is a function of the task weights alone. Its gradient is taken with
  ``torch.autograd.grad(Lgrad, w)``, so nothing flows into the network.
* The loss the engine backpropagates uses the *detached* current weights: the network's
  gradients are exactly those of ``sum_i w_i L_i``, and the weights receive no gradient from it.
* ``L_i(0)`` is each task's unweighted loss the first time it is seen (recorded once; kept
  across ``--resume`` in ``state_dict``), and the ratios use unweighted losses. Both are the
  TASK losses alone: the engine passes them through ``observe_task_losses`` before
  ``combine``, because the losses ``combine`` receives include regularizer terms (SMART's
  penalty, ...), whose own decay would otherwise pass for the task's training rate. The
  gradient norms ``G_i`` do use the full per-task objective: it is what the network trains on.
* Update timing: ``combine`` only accumulates ``grad_w Lgrad``; ``after_step`` (called by the
  engine after the network's optimizer step) applies the Adam step, the floor and the
  renormalisation. So the weights used for a step's network backward are the pre-update ones,
  as in the paper's Algorithm 1, and under gradient accumulation every micro-batch of an
  optimizer step uses the same weights while their balancing gradients are averaged.

Options and defaults: ``alpha`` = 1.5 (the value the paper uses on NYUv2; seed 002 swept
0.5, 1.0, 1.5, 3.0 and found 1.0 best on the CS224N tasks); ``lr`` = 0.025 (Adam on ``w``: each
weight moves by roughly ``lr`` per step); ``layer`` = ``"last"`` (the parameters of the last
shared encoder layer, ``model.encoder.layers[-1]``: the paper's "last shared layer"),
``"pooler"`` (BERT's pooler dense layer, seed 002's choice: only valid when every head uses
the pooler output) or ``"all-shared"`` (every encoder parameter: one extra backward through
the whole encoder per task and step); ``min_weight`` = 0.01, the smallest weight after
renormalisation (at most 1, as the weights average 1).

Cost: one extra backward per task from its loss down to W per step (for ``"last"``: the head
and one encoder layer). Needs a batch of every task per step (``sampler.step =
"all-tasks"``); a step that lacks a task uses the current weights without a balancing update.
Logged: the weights (``weight/<task>``) and, under ``combiner/``, ``gradnorm_loss``,
``grad_norm/<task>`` (``G_i``) and ``rate/<task>`` (``r_i``).

Data parallelism (torchrun): the engine hands every process the global batch's loss values
with this process's share of their gradient, so ``L_i(0)`` and the rates are the same
everywhere; ``grad_W L_i`` is summed over the processes (one all-reduce per task and step, the
size of W) before its norm is taken, so ``G_i`` is the global batch's, and the averaged weight
gradient keeps ``w`` identical on every process.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch

from mtbert.api import Combined, MtbertError, hookimpl, option, reduce_mean, reduce_sum, world_size

#: L_i(0) below this is treated as this (a task that starts at zero loss has no rate to speak of).
_TINY_INITIAL_LOSS = 1e-12


def renormalise(w: torch.Tensor, total: float, floor: float) -> torch.Tensor:
    """``w`` scaled to sum to ``total`` with every entry at least ``floor`` (``floor * len(w) <= total``).

    Entries below the floor are raised to it and the others shrink proportionally to keep the
    sum; that may push another entry under the floor, so repeat (at most ``len(w)`` times).
    """
    w = w.detach().clamp(min=torch.finfo(w.dtype).tiny)
    w = w * (total / w.sum())
    fixed = torch.zeros_like(w, dtype=torch.bool)
    for _ in range(w.numel()):
        low = (w < floor) & ~fixed
        if not bool(low.any()):
            break
        fixed |= low
        w = torch.where(fixed, torch.full_like(w, floor), w)
        free = ~fixed
        w = torch.where(free, w * ((total - floor * float(fixed.sum())) / w[free].sum()), w)
    return w


def balanced_parameters(model: torch.nn.Module, layer: str) -> list[torch.nn.Parameter]:
    """The trainable parameters of the layer W whose gradient norms GradNorm balances."""
    encoder = model.encoder
    if layer == "last":
        params = list(encoder.layers[-1].parameters())
    elif layer == "pooler":
        params = list(encoder.pooler.parameters())
    else:
        params = list(model.shared_parameters()) if hasattr(model, "shared_parameters") else list(encoder.parameters())
    return [p for p in params if p.requires_grad]


class GradNormCombiner:
    def __init__(self, options: "GradNorm", task_names: list[str], params: list[torch.nn.Parameter]):
        self.options = options
        self.tasks = list(task_names)
        self.count = len(self.tasks)
        self.params = params
        device = params[0].device
        self.w = torch.nn.Parameter(torch.ones(self.count, device=device))
        self.optimizer = torch.optim.Adam([self.w], lr=options.lr)
        self.initial: dict[str, float] = {}  # L_i(0), unweighted, recorded once
        self.pending = torch.zeros(self.count, device=device)  # sum of grad_w Lgrad since the last update
        self.pending_steps = 0
        self.last_w_grad: torch.Tensor | None = None  # for inspection and tests
        self.task_losses: dict[str, float] = {}  # this step's losses without regularizer terms

    def observe_task_losses(self, losses: dict[str, float]) -> None:
        """The step's task losses without regularizer terms (the engine calls this before ``combine``)."""
        self.task_losses = {t: float(v) for t, v in losses.items()}

    # ---------------------------------------------------------------- the contract
    def combine(self, losses: dict[str, torch.Tensor]) -> Combined:
        unknown = [t for t in losses if t not in self.tasks]
        if unknown:
            raise ValueError(f"gradnorm was built for tasks {self.tasks}, got {unknown}")
        current = self.w.detach().clone()  # the pre-update weights this step trains with
        index = {t: i for i, t in enumerate(self.tasks)}
        weighted = {t: current[index[t]] * loss for t, loss in losses.items()}
        values = current.tolist()
        weights = {t: values[index[t]] for t in losses}
        logs: dict[str, float] = {}
        plain = {t: self.task_losses.get(t, float(loss.detach())) for t, loss in losses.items()}
        self.task_losses = {}
        for task in losses:
            if task not in self.initial:
                self.initial[task] = plain[task]
        if (len(losses) == self.count and self.count > 1 and torch.is_grad_enabled()
                and all(loss.requires_grad for loss in losses.values())):
            logs.update(self._balance([losses[t] for t in self.tasks], [plain[t] for t in self.tasks]))
        return Combined(weighted=weighted, weights=weights, logs=logs)

    def after_step(self) -> None:
        if self.pending_steps == 0:
            return
        self.w.grad = reduce_mean(self.pending / self.pending_steps)  # identical on every process
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.w.copy_(renormalise(self.w, self.count, self.options.min_weight))
        self.pending.zero_()
        self.pending_steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks),
            "weights": self.w.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "initial_losses": dict(self.initial),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["tasks"]) != self.tasks:
            raise ValueError(f"gradnorm state is for tasks {state['tasks']}, not {self.tasks}")
        with torch.no_grad():
            self.w.copy_(torch.as_tensor(state["weights"]).to(self.w))
        self.optimizer.load_state_dict(state["optimizer"])
        self.initial = {t: float(v) for t, v in state["initial_losses"].items()}
        self.pending.zero_()
        self.pending_steps = 0

    # ---------------------------------------------------------------- the balancing
    def _grad_norm(self, task: str, loss: torch.Tensor) -> torch.Tensor:
        """``||grad_W L_i||`` without touching any ``.grad`` (and detached)."""
        grads = torch.autograd.grad(loss, self.params, retain_graph=True, allow_unused=True)
        present = [g.detach().float() for g in grads if g is not None]
        if not present:
            raise MtbertError(
                f"gradnorm: the loss of task '{task}' does not depend on the balanced layer "
                f"(layer = '{self.options.layer}'); with layer = 'pooler' every head must use pooling = 'pooler', "
                f"otherwise choose layer = 'last'"
            )
        if world_size() > 1:  # the global batch's gradient: the sum of every process's share
            return torch.linalg.vector_norm(reduce_sum(torch.cat([g.reshape(-1) for g in present])))
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in present]))

    def _balance(self, losses: list[torch.Tensor], plain: list[float]) -> dict[str, float]:
        norms = torch.stack([self._grad_norm(t, loss) for t, loss in zip(self.tasks, losses)])  # [T], no graph
        loss_now = torch.tensor(plain, dtype=torch.float32, device=norms.device)  # task losses alone
        initial = torch.tensor([max(self.initial[t], _TINY_INITIAL_LOSS) for t in self.tasks], device=loss_now.device)
        inverse_rate = loss_now / initial  # Ltilde_i, unweighted
        rates = inverse_rate / inverse_rate.mean()  # r_i
        g = self.w * norms  # G_i = w_i ||grad_W L_i||: depends on w only
        target = (g.mean() * rates.pow(self.options.alpha)).detach()  # constant, as the paper says
        balancing = (g - target).abs().sum()
        (w_grad,) = torch.autograd.grad(balancing, [self.w])
        self.pending += w_grad
        self.pending_steps += 1
        self.last_w_grad = w_grad.detach()
        logs = {"gradnorm_loss": float(balancing.detach())}
        g_values, r_values = g.detach().tolist(), rates.tolist()
        for i, task in enumerate(self.tasks):
            logs[f"grad_norm/{task}"] = g_values[i]
            logs[f"rate/{task}"] = r_values[i]
        return logs


@attrs.define
class GradNorm:
    """GradNorm (Chen et al. 2018): learn task weights that equalise gradient norms scaled by training rates."""

    alpha: float = option(1.5, help="asymmetry: how strongly slow tasks are pushed (paper 1.5; seed 002's best 1.0)", min=0)
    lr: float = option(0.025, help="learning rate of the weights' own Adam optimizer", min=0, min_exclusive=True)
    layer: Literal["last", "pooler", "all-shared"] = option(
        "last", help="balanced layer W: last encoder layer, BERT's pooler, or every shared parameter")
    min_weight: float = option(0.01, help="smallest weight after renormalising (keeps w > 0; weights average 1)",
                               min=0, max=1, min_exclusive=True)

    requires_step_mode = "all-tasks"

    def build(self, task_names: list[str], model: torch.nn.Module) -> GradNormCombiner:
        params = balanced_parameters(model, self.layer)
        if not params:
            raise MtbertError(
                f"gradnorm: the balanced layer '{self.layer}' has no trainable parameters "
                f"(is the encoder frozen by model.mode = 'pretrain'?)"
            )
        return GradNormCombiner(self, list(task_names), params)


@hookimpl
def mtbert_register_loss_combiners(register):
    register("gradnorm", GradNorm)
