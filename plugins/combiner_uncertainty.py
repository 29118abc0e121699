"""The ``uncertainty`` loss combiner: learned homoscedastic-uncertainty weights.

Kendall, Gal and Cipolla (2018), *Multi-Task Learning Using Uncertainty to Weigh Losses for
Scene Geometry and Semantics* (CVPR). Each task ``i`` has a learned log-variance
``s_i = log sigma_i^2`` (initialised to ``init``, 0 by default), trained by the run's optimizer
together with the network (``parameters()``). With ``form = "paper"`` (the default) the terms
are the paper's, written in ``s`` (their eq. 7 for regression with a Gaussian likelihood, eq. 10
for classification with a softmax scaled by ``1/sigma^2``)::

    regression     (STS, MSE loss):        0.5 * exp(-s_i) * L_i + 0.5 * s_i
    classification (SST, Para; CE / BCE):        exp(-s_i) * L_i + 0.5 * s_i

(``log sigma = s/2``.) For fixed ``L_i`` the minimum is at ``s_i = log(2 L_i)`` for
classification and ``s_i = log(L_i)`` for regression, so a task whose loss stays high gets a
smaller weight. ``form = "exp"`` uses ``exp(-s_i) * L_i + s_i`` for every task, the
simplification many implementations use. The task kind comes from the head's ``label_kind``
(``regression`` or not).

The logged weight of a task (``Combined.weights``) is the factor on its loss, ``exp(-s_i)``
(``0.5 * exp(-s_i)`` for regression in the paper form); ``Combined.logs`` holds each ``s_i``.

``lr`` (default: none, i.e. the heads' learning rate) is the learning rate the engine should
give the log-variances' parameter group: at BERT fine-tuning rates (1e-5) Adam moves ``s`` by
about ``lr`` per step, far too slowly for the weights to adapt, so a larger rate (1e-3 to
1e-2) is usual. Works in one-task and all-tasks steps: each ``s_i`` is its own parameter, so a
task absent from a step leaves its ``s_i`` without a gradient and AdamW leaves it exactly where
it is (one shared vector would get a zero gradient there, and Adam's momentum would keep
moving it).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch

from mtbert.api import Combined, hookimpl, option


class UncertaintyCombiner:
    def __init__(self, options: "Uncertainty", task_names: list[str], regression: list[bool], device: torch.device):
        self.options = options
        self.tasks = list(task_names)
        self.index = {t: i for i, t in enumerate(self.tasks)}
        self.lr = options.lr
        self.log_vars = [torch.nn.Parameter(torch.tensor(float(options.init), device=device)) for _ in self.tasks]
        if options.form == "paper":
            # factor on L_i, factor on s_i
            self.scale = [0.5 if r else 1.0 for r in regression]
            self.reg = [0.5] * len(self.tasks)
        else:
            self.scale = [1.0] * len(self.tasks)
            self.reg = [1.0] * len(self.tasks)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.log_vars)

    def combine(self, losses: dict[str, torch.Tensor]) -> Combined:
        weighted: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}
        logs: dict[str, float] = {}
        for task, loss in losses.items():
            i = self.index[task]
            s = self.log_vars[i]
            factor = self.scale[i] * torch.exp(-s)
            weighted[task] = factor * loss + self.reg[i] * s
            weights[task] = float(factor.detach())
            logs[f"log_var/{task}"] = float(s.detach())
        return Combined(weighted=weighted, weights=weights, logs=logs)

    def after_step(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "log_vars": torch.stack([s.detach() for s in self.log_vars]).clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["tasks"]) != self.tasks:
            raise ValueError(f"uncertainty state is for tasks {state['tasks']}, not {self.tasks}")
        saved = torch.as_tensor(state["log_vars"])
        with torch.no_grad():  # in place: the optimizer holds these very Parameters
            for s, value in zip(self.log_vars, saved):
                s.copy_(value.to(s))


@attrs.define
class Uncertainty:
    """Kendall et al. (2018) uncertainty weighting with learned log-variances s_i."""

    form: Literal["paper", "exp"] = option(
        "paper", help="paper: 0.5*exp(-s)*L + 0.5*s (regression), exp(-s)*L + 0.5*s (classification); "
                      "exp: exp(-s)*L + s for every task")
    init: float = option(0.0, help="initial log-variance s_i of every task")
    lr: float | None = option(None, help="learning rate of the log-variances (default: the heads' learning rate)",
                              min=0, min_exclusive=True)

    requires_step_mode = None

    def build(self, task_names: list[str], model: torch.nn.Module) -> UncertaintyCombiner:
        heads = getattr(model, "heads", {})
        regression = [getattr(heads[t], "label_kind", None) == "regression" if t in heads else False for t in task_names]
        params = list(model.parameters())
        device = params[0].device if params else torch.device("cpu")
        return UncertaintyCombiner(self, list(task_names), regression, device)


@hookimpl
def mtbert_register_loss_combiners(register):
    register("uncertainty", Uncertainty)
