"""The ``mixout`` regularizer: mix fine-tuned weights with the pretrained ones, like dropout.

Lee, Cho and Kang (2020), "Mixout: Effective Regularization to Finetune Large-scale Pretrained
Language Models", ICLR 2020.

In training, each chosen Linear layer computes with

    W~ = U + M * (W - U) / (1 - p)

where U are the weights the layer had when the stage that trains with the regularizers (the
``multitask`` stage) started, and M is a fresh Bernoulli(1 - p) mask per forward pass: where M = 0 the weight is
replaced by its pretrained value, and the rescaling makes E[W~] = W. Dropout is the special
case U = 0. With ``granularity = "neuron"`` (the paper's mixout and the authors' code) one mask
value per input unit replaces all of that unit's outgoing weights (a column of W);
``"element"`` draws one per weight (the paper's "mixconnect"). ``bias = true`` mixes the bias
vector too (per element; the authors leave it alone).

Why a rewrite: W~ is built from differentiable tensor operations, so autograd gives the exact
gradient dW~/dW = M / (1 - p); the authors' custom autograd function drops the 1/(1 - p)
factor in backward. The pretrained U are non-persistent buffers: they follow ``.to()`` (device
and dtype) but never enter checkpoints, whose keys stay exactly those of the plain model (the
wrapped layer keeps its ``weight`` and ``bias`` parameters). At p = 0 and in eval mode the layer
is the plain Linear (deterministic).

Options: ``p`` (default 0.1, dropout's usual rate; the paper's BERT-large GLUE runs used
mixout(U, p) with p in {0.7, 0.8, 0.9} in place of dropout), ``modules``: fnmatch patterns over
the encoder's module names (e.g. ``"layers.*.ffn.*"``, ``"layers.5.*"``, ``"*.qkv"``; default
every Linear of the encoder, pooler included). Only the encoder is searched, never the task
heads: they are freshly initialised and have no pretrained value to mix with. Encoder
dropout stays as the recipe sets it (``model.hidden_dropout = 0`` to replace it, as the paper
does).

When U is captured: at set-up the layers are wrapped but inactive (plain Linear); when a stage
that applies the recipe's regularizers starts (the engine calls ``begin_stage(model)``), U is
taken from the weights at that moment and mixout switches on. So after an ``mlm`` stage,
mixout pulls toward the weights the MLM stage produced (the "pretrained" model of the
fine-tuning), not toward the checkpoint's, and the MLM stage itself trains without it. When
U differs from the weights the layers had at set-up (an earlier stage trained them), it is part
of ``state_dict()``, so ``--resume`` restores it; otherwise it is the checkpoint's weights,
which set-up captures again.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mtbert.api import RecipeError, hookimpl, option

Granularity = Literal["neuron", "element"]


def mixout(weight: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    """U + M (W - U) / (1 - p) with a given keep-mask M (broadcastable to W)."""
    return target + (weight - target) * (mask / (1.0 - p))


def draw_mask(weight: torch.Tensor, p: float, granularity: Granularity) -> torch.Tensor:
    """A Bernoulli(1 - p) keep-mask: one value per input unit (column) or per element."""
    if granularity == "neuron" and weight.dim() == 2:
        shape = (1, weight.shape[1])
    else:
        shape = tuple(weight.shape)
    return torch.empty(shape, device=weight.device, dtype=weight.dtype).bernoulli_(1.0 - p)


class MixoutLinear(nn.Linear):
    """A Linear layer that trains with mixout toward the weights it had when wrapped.

    It takes over the wrapped layer's ``weight`` and ``bias`` Parameter objects, so parameter
    names, optimizer references and state-dict keys are those of the original layer.
    """

    def __init__(self, linear: nn.Linear, p: float, granularity: Granularity = "neuron", mix_bias: bool = False):
        nn.Module.__init__(self)  # no fresh parameters: the wrapped layer's are reused below
        if not 0.0 <= p < 1.0:
            raise ValueError(f"mixout probability must be in [0, 1), got {p}")
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.p = float(p)
        self.granularity = granularity
        self.register_buffer("target_weight", linear.weight.detach().clone(), persistent=False)
        target_bias = linear.bias.detach().clone() if (mix_bias and linear.bias is not None) else None
        self.register_buffer("target_bias", target_bias, persistent=False)
        self.active = True  # MixoutState switches it off until its stage starts
        self.train(linear.training)

    def capture(self) -> None:
        """U <- the current weights (and bias, when mixed)."""
        with torch.no_grad():
            self.target_weight.copy_(self.weight.detach())
            if self.target_bias is not None:
                self.target_bias.copy_(self.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or not self.active:
            return F.linear(x, self.weight, self.bias)
        weight = mixout(self.weight, self.target_weight, draw_mask(self.weight, self.p, self.granularity), self.p)
        bias = self.bias
        if self.target_bias is not None:
            bias = mixout(bias, self.target_bias, draw_mask(bias, self.p, "element"), self.p)
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        mixed = ", bias mixed" if self.target_bias is not None else ""
        return f"{super().extra_repr()}, p={self.p}, granularity={self.granularity}{mixed}"


def wrap_linears(root: nn.Module, patterns: list[str], p: float, granularity: Granularity, mix_bias: bool) -> list[str]:
    """Replace every plain ``nn.Linear`` under ``root`` whose name matches a pattern; returns the names."""
    linears = [(name, m) for name, m in root.named_modules() if type(m) is nn.Linear]
    chosen = [(name, m) for name, m in linears if any(fnmatchcase(name, pat) for pat in patterns)]
    for pattern in patterns:
        if not any(fnmatchcase(name, pattern) for name, _ in linears):
            already = [n for n, m in root.named_modules() if isinstance(m, MixoutLinear) and fnmatchcase(n, pattern)]
            if already:  # set up twice (a restored run): the layer is wrapped already
                continue
            examples = ", ".join(name for name, _ in linears[:3]) or "none"
            raise RecipeError(
                f"regularizers: mixout modules pattern {pattern!r} matches no Linear layer of the encoder "
                f"(its Linear layers are named like {examples})"
            )
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child, MixoutLinear(module, p, granularity, mix_bias))
    return [name for name, _ in chosen]


class MixoutState:
    def __init__(self, options: "Mixout"):
        self.options = options
        self.wrapped: list[str] = []
        self.layers: dict[str, MixoutLinear] = {}
        self.moved = False  # U differs from the weights at set-up (an earlier stage trained them)

    def setup(self, model: Any) -> None:
        opts = self.options
        self.wrapped = wrap_linears(model.encoder, list(opts.modules), opts.p, opts.granularity, opts.bias)
        self.layers = {n: m for n, m in model.encoder.named_modules() if isinstance(m, MixoutLinear)}
        for layer in self.layers.values():
            layer.active = False  # until the stage that trains with it starts

    def begin_stage(self, model: Any) -> None:
        """The stage that trains with mixout starts: U <- the weights now, and mixing switches on."""
        for layer in self.layers.values():
            if not self.moved and not torch.equal(layer.target_weight, layer.weight.detach()):
                self.moved = True
            layer.capture()
            layer.active = True

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"active": any(layer.active for layer in self.layers.values()), "moved": self.moved}
        if self.moved:  # U is not the checkpoint's weights: keep it for --resume
            state["targets"] = {n: layer.target_weight.detach().clone() for n, layer in self.layers.items()}
            state["target_biases"] = {n: layer.target_bias.detach().clone() for n, layer in self.layers.items()
                                      if layer.target_bias is not None}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.moved = bool(state.get("moved", False))
        with torch.no_grad():
            for name, value in (state.get("targets") or {}).items():
                self.layers[name].target_weight.copy_(torch.as_tensor(value))
            for name, value in (state.get("target_biases") or {}).items():
                self.layers[name].target_bias.copy_(torch.as_tensor(value))
        for layer in self.layers.values():
            layer.active = bool(state.get("active", False))

    def penalty(self, context: Any) -> torch.Tensor | None:
        return None  # mixout acts inside the forward pass

    def logs(self) -> dict[str, float]:
        return {}


def _probability_below_one(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if value >= 1.0:
        raise ValueError(f"p: {value!r} must be below 1 (p = 1 would divide by zero)")


@attrs.define
class Mixout:
    """Mixout: stochastically replace fine-tuned weights by their pretrained values."""

    p: float = option(0.1, help="probability of replacing a weight (or input unit) by its pretrained value (paper's GLUE runs: 0.7-0.9)", min=0, max=1)
    modules: list[str] = option(factory=lambda: ["*"], help="fnmatch patterns over the encoder's module names (default: every Linear layer)")
    granularity: Granularity = option("neuron", help="neuron: one draw per input unit (paper); element: one per weight (mixconnect)")
    bias: bool = option(False, help="mix the bias vectors too")

    @p.validator
    def _check_p(self, attribute: attrs.Attribute, value: float) -> None:
        _probability_below_one(self, attribute, value)

    def check_tasks(self, task_names: list[str]) -> str | None:
        if not self.modules:
            return "modules: give at least one pattern (\"*\" for every Linear layer of the encoder)"
        return None

    def build(self) -> MixoutState:
        return MixoutState(self)


@hookimpl
def mtbert_register_regularizers(register):
    register("mixout", Mixout)
