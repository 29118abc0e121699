"""The ``smart`` regularizer: SMART's smoothness-inducing adversarial term and its Bregman
proximal-point term.

Jiang, He, Chen, Liu, Gao and Zhao (2020), "SMART: Robust and Efficient Fine-Tuning for
Pre-trained Natural Language Models through Principled Regularized Optimization", ACL 2020.

For the batch of a chosen task this adds to the task's loss

    weight * R_s  +  bregman_weight * D_breg

``R_s = mean_i max_{||x~_i - x_i|| <= epsilon} l_s(f(x~_i), f(x_i))`` where ``x_i`` are the
WORD-embedding lookups of example i (position and segment embeddings are added by the encoder,
once, after the perturbation: MT-DNN perturbs the full embedding output and so adds position
embeddings twice), and ``D_breg = mean_i l_s(f(x_i; theta), f(x_i; theta~))`` with theta~ an
exponential moving average of the parameters (the paper's momentum Bregman proximal point).
``l_s`` is the symmetrised KL divergence for classification (softmax over the classes for
``multiclass`` heads, the Bernoulli distribution of the one logit for ``binary`` heads) and the
squared error for regression; each is reduced per example, then averaged, in fp32. The head is
used as it is: the perturbed forward pass is ``model(batch, inputs_embeds=...)``, so any head of
any input format works (separately encoded pairs perturb both sentences).

The inner maximisation is the paper's Algorithm 1: noise ``N(0, sigma^2)`` on the real tokens
(padding gets none), then ``steps`` ascent steps ``x~ <- Proj(x~ + step_size * g / ||g||)``
with the gradient of ``l_s(f(x~), f(x))`` for a DETACHED target ``f(x)``, then the projection
onto the epsilon-ball around ``x`` — a real ball of radius epsilon (the MT-DNN code rescales the
noise to unit norm instead, so its epsilon is no radius). ``norm`` picks the ball (l_inf as in
the paper, or l2); ``scope`` says over what the norm is taken: the whole example (the paper:
every token of every sentence of the example) or each token on its own (what MT-DNN
normalises). The final term is computed at the found x~ with gradients into every parameter,
through f(x~) and — because the paper's objective depends on theta through both arguments of
l_s — through f(x) too (``clean_gradient = false`` detaches f(x), as virtual adversarial
training does).

Dropout: with ``dropout = "shared"`` (default) f(x) and every f(x~) use the same dropout
masks, so R_s measures the effect of the perturbation alone (without it, at epsilon = 1e-5 the
term is almost entirely the difference of two dropout masks). The state sets
``wants_random_state``, so the engine captures the global random state just before the
training forward (``context.random_state``); f(x) is that forward's own predictions, and the
ascent and final passes replay the captured state, i.e. the training forward's masks. The
noise is drawn after the training forward, from numbers no replayed pass uses, and afterwards
the generators are set back to where the noise left them, so later draws are fresh. A caller
that gives no ``random_state`` gets the same objective at one more forward pass: f(x) is
recomputed under a state captured after the noise, which the other passes replay.
``"independent"`` reuses the training predictions as f(x) with fresh masks for the other passes
(the reference implementations' behaviour). Cost per regularized batch, either way: ``steps``
forward passes with a backward to the input only (no parameter gradients), and one forward
pass with its backward (the final term); f(x) costs nothing beyond the training forward.

Defaults. The paper's Section 5 lists epsilon = 1e-5, sigma = 1e-5, eta = 1e-3, and MT-DNN's
code (the authors') shows what they mean: its epsilon is no radius but the stabiliser of a
normalisation, and after the ascent step the noise is divided by its per-token l_inf norm, so
the perturbation ends with size 1 per token on LayerNorm'd embeddings of size ~1 per
coordinate: a perturbation comparable to the input, in the ascent direction. Read literally
(a 1e-5 ball with a 1e-3 step, clipped back every step) the term is inert: on MiniLM it averaged
9e-6 against a task loss of 0.79. So by default (``scale = "relative"``) epsilon, sigma and
step_size are fractions of each token's own embedding norm (``scope = "token"``, as MT-DNN
normalises), with epsilon = 0.1, step_size = epsilon (one ascent step reaches the ball's surface,
as MT-DNN's normalisation does), sigma = 0.01, steps (T_x~) = 1, the l_inf ball and
weight (lambda_s) = 1 (the paper tunes lambda_s in {1, 3, 5}). ``smart/ratio`` logs the
weighted penalty divided by the task loss, so a run shows whether SMART is doing anything. On
MiniLM with these defaults it averaged 0.11 (penalty 0.125 against a task loss of 1.356, 12 steps
of ``recipes/ablations/smart.toml`` on 64-row slices: ``MTBERT_DATA_DIR=../shared/data python
benchmarks/smart_ratio.py``, 2-core AMD EPYC; RESULTS.md), where the literal reading averaged
about 1e-5. ``scale = "absolute"`` with ``scope =
"example"`` and the paper's numbers gives the literal reading. The Bregman term is OFF by default (``bregman_weight = 0``; the paper
uses mu = 1) because it keeps a full copy of the trainable parameters and runs an extra
forward pass; when on, theta~ starts at the parameters before the first update and follows
``theta~ <- beta theta~ + (1 - beta) theta`` after every optimizer step, with beta =
``bregman_early_momentum`` (paper: 0.99) for the first ``bregman_early_updates`` updates
(paper: the first 10% of training — set it to 10% of your run's steps) and
``bregman_momentum`` (paper: 0.999) afterwards. The teacher f(x; theta~) runs in eval mode
(no dropout). ``tasks`` restricts the regularizer to some tasks (default: all).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import attrs
import torch
import torch.nn.functional as F

from mtbert.api import RandomState, hookimpl, option, unconfigured_task

Norm = Literal["linf", "l2"]
#: Defaults, as fractions of each token's embedding norm (see the module docstring).
EPSILON = 0.1
SIGMA = 0.01
STEP_SIZE = EPSILON
Scope = Literal["example", "token"]


# --------------------------------------------------------------------------- divergences
def divergence(label_kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example l_s between two prediction tensors, in fp32: shape ``[B]``.

    ``multiclass``: sum_c (p_c - q_c)(log p_c - log q_c) = KL(p||q) + KL(q||p) with p, q the
    softmax of the logits. ``binary``: the same for the Bernoulli distributions of the two
    logits, which simplifies exactly to (sigmoid(a) - sigmoid(b)) (a - b). ``regression``:
    (a - b)^2.
    """
    device_type = a.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        a, b = a.float(), b.float()
        if label_kind == "multiclass":
            la, lb = F.log_softmax(a, dim=-1), F.log_softmax(b, dim=-1)
            return ((la.exp() - lb.exp()) * (la - lb)).sum(dim=-1)
        if label_kind == "binary":
            return (torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)
        if label_kind == "regression":
            return (a - b).square()
    raise ValueError(f"unknown label kind {label_kind!r}")


# --------------------------------------------------------------------------- balls
def _tiny(x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).tiny


def example_norms(parts: Sequence[torch.Tensor], norm: Norm) -> torch.Tensor:
    """One norm per example over every token of every sequence: ``[B]``."""
    if norm == "l2":
        return torch.stack([p.float().square().sum(dim=(-2, -1)) for p in parts]).sum(dim=0).sqrt()
    return torch.stack([p.float().abs().amax(dim=(-2, -1)) for p in parts]).amax(dim=0)


def token_norms(part: torch.Tensor, norm: Norm) -> torch.Tensor:
    """One norm per token: ``[B, T]``."""
    if norm == "l2":
        return torch.linalg.vector_norm(part.float(), ord=2, dim=-1)
    return part.float().abs().amax(dim=-1)


def normalise(grads: Sequence[torch.Tensor], norm: Norm, scope: Scope) -> list[torch.Tensor]:
    """Each gradient divided by its (example or token) norm; zero stays zero."""
    if scope == "example":
        n = example_norms(grads, norm).clamp_min(_tiny(grads[0].float()))
        return [g / n[:, None, None].to(g.dtype) for g in grads]
    return [g / token_norms(g, norm).clamp_min(_tiny(g.float()))[..., None].to(g.dtype) for g in grads]


def project(deltas: Sequence[torch.Tensor], norm: Norm, scope: Scope, epsilon: float | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The closest point of the epsilon-ball: clamp for l_inf, radial shrink for l2.

    ``epsilon`` is one radius, or one tensor per sequence broadcastable to ``[B, T, 1]``
    (per-token or per-example radii, see :func:`radii`).
    """
    eps = [epsilon] * len(deltas) if isinstance(epsilon, (int, float)) else list(epsilon)
    if norm == "linf":  # the l_inf ball of an example is the product of its tokens' balls
        return [d.clamp(-e, e) if isinstance(e, (int, float)) else torch.maximum(torch.minimum(d, e), -e)
                for d, e in zip(deltas, eps)]
    if scope == "example":
        n = example_norms(deltas, norm)
        radius = eps[0] if isinstance(eps[0], (int, float)) else eps[0].reshape(-1)
        factor = (radius / n.clamp_min(_tiny(n))).clamp(max=1.0)
        return [d * factor[:, None, None].to(d.dtype) for d in deltas]
    out = []
    for d, e in zip(deltas, eps):
        n = token_norms(d, norm)
        radius = e if isinstance(e, (int, float)) else e[..., 0]
        factor = (radius / n.clamp_min(_tiny(n))).clamp(max=1.0)
        out.append(d * factor[..., None].to(d.dtype))
    return out


def radii(words: Sequence[torch.Tensor], norm: Norm, scope: Scope) -> list[torch.Tensor]:
    """The clean embeddings' own size, per token or per example, as ``[B, T, 1]`` (or ``[B, 1, 1]``) tensors.

    With ``scale = "relative"`` epsilon, sigma and step_size are fractions of it: the
    perturbation is as large relative to the input as the paper's settings intend, whatever the
    encoder's embedding scale (MiniLM's word embeddings are ~0.05 per coordinate, where a fixed
    1e-5 ball changes nothing).
    """
    if scope == "example":
        n = example_norms(words, norm).detach()
        return [n[:, None, None].to(w.dtype) for w in words]
    return [token_norms(w, norm).detach()[..., None].to(w.dtype) for w in words]


# --------------------------------------------------------------------------- the regularizer
class SmartState:
    """Runtime side of :class:`Smart`; ``last_perturbation`` keeps the last delta (detached)."""

    def __init__(self, options: "Smart"):
        self.options = options
        self.model: Any = None
        self.last_perturbation: tuple[torch.Tensor, ...] | None = None
        self.ema: dict[str, torch.Tensor] | None = None
        self.updates = 0
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        #: Shared dropout replays the training forward's masks: the engine captures its random state.
        self.wants_random_state = options.dropout == "shared" and options.weight > 0

    # ----------------------------------------------------------------- contract
    def setup(self, model: Any) -> None:
        self.model = model

    def penalty(self, context: Any) -> torch.Tensor | None:
        opts = self.options
        if opts.tasks is not None and context.task not in opts.tasks:
            return None
        if opts.weight == 0 and opts.bregman_weight == 0:
            return None
        if context.task not in context.model.heads:  # e.g. a stage without task heads
            return None
        kind = context.model.heads[context.task].label_kind
        total: torch.Tensor | None = None
        if opts.weight > 0:
            smooth = self.smoothness(context, kind)
            self._record("smoothness", smooth)
            total = opts.weight * smooth
        if opts.bregman_weight > 0:
            breg = self.bregman(context, kind)
            self._record("bregman", breg)
            term = opts.bregman_weight * breg
            total = term if total is None else total + term
        self._record("penalty", total)
        loss = float(context.loss.detach()) if context.loss is not None else 0.0
        if loss > 0:  # how much SMART adds to what the task trains on: ~0 means it does nothing
            self._record("ratio", torch.tensor(float(total.detach()) / loss))
        return total

    def logs(self) -> dict[str, float]:
        """Means since the last call: the smoothness term, the Bregman term, their weighted sum."""
        out = {k: self._sums[k] / self._counts[k] for k in self._sums}
        self._sums.clear()
        self._counts.clear()
        return out

    # ----------------------------------------------------------------- R_s
    def smoothness(self, context: Any, kind: str) -> torch.Tensor:
        """R_s for this batch (unweighted): the adversarial search, then l_s at x + delta."""
        opts = self.options
        model, batch = context.model, context.batch
        masks = [s["attention_mask"] for s in model.sequences(batch)]
        with torch.no_grad():
            words = model.word_embeddings(batch)
        size = radii(words, opts.norm, opts.scope) if opts.scale == "relative" else [1.0] * len(words)
        ball = [opts.epsilon * r for r in size]
        # The noise is drawn after the training forward (and before any state captured here), so
        # the passes below, which replay the state before that forward, never reuse its numbers.
        delta = [
            torch.randn_like(w) * opts.sigma * r * m[..., None].to(w.dtype) for w, r, m in zip(words, size, masks)
        ]
        replay: RandomState | None = None
        after_noise: RandomState | None = None
        clean = context.predictions
        if opts.dropout == "shared":
            replay = getattr(context, "random_state", None)
            if replay is not None:  # f(x) is the training forward: replay its masks, then go on fresh
                after_noise = RandomState(words[0].device)
            else:  # no captured state: recompute f(x) under one the other passes replay
                replay = RandomState(words[0].device)
                clean = model(batch)
        target = clean.detach()

        for _ in range(opts.steps):
            leaves = [d.detach().requires_grad_(True) for d in delta]
            if replay is not None:
                replay.replay()
            with torch.enable_grad():
                adv = model(batch, inputs_embeds=tuple(w + d for w, d in zip(words, leaves)))
                loss = divergence(kind, adv, target).sum()
            if loss.requires_grad:
                grads = torch.autograd.grad(loss, leaves, allow_unused=True)
                grads = [torch.zeros_like(d) if g is None else g for g, d in zip(grads, leaves)]
            else:  # the predictions do not depend on the input at all
                grads = [torch.zeros_like(d) for d in leaves]
            direction = normalise(grads, opts.norm, opts.scope)
            moved = [d.detach() + opts.step_size * r * g for d, r, g in zip(leaves, size, direction)]
            delta = project(moved, opts.norm, opts.scope, ball)
            delta = [d * m[..., None].to(d.dtype) for d, m in zip(delta, masks)]
        if opts.steps == 0:
            delta = project(delta, opts.norm, opts.scope, ball)
        delta = [d.detach() for d in delta]
        self.last_perturbation = tuple(delta)

        if replay is not None:
            replay.replay()
        embeds = model.word_embeddings(batch)  # with gradients into the embedding matrix
        adv = model(batch, inputs_embeds=tuple(e + d for e, d in zip(embeds, delta)))
        if after_noise is not None:  # later random numbers (dropout of the next batch) are fresh
            after_noise.replay()
        reference = clean if opts.clean_gradient else target
        return divergence(kind, adv, reference).mean()

    # ----------------------------------------------------------------- D_breg
    def bregman(self, context: Any, kind: str) -> torch.Tensor:
        """D_breg for this batch (unweighted): l_s between the model and its moving average."""
        model, batch = context.model, context.batch
        self._ensure_ema(model)
        from torch.func import functional_call

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                teacher = functional_call(model, self.ema, (batch,))
        finally:
            model.train(was_training)
        return divergence(kind, context.predictions, teacher).mean()

    def _ensure_ema(self, model: Any) -> None:
        if self.model is None:
            self.model = model
        if self.ema is None:  # theta~_1 = the parameters before the first update
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            self.ema = {n: p.detach().clone() for n, p in named}

    def after_step(self) -> None:
        """theta~ <- beta theta~ + (1 - beta) theta; the trainer calls it after every optimizer step."""
        if self.ema is None or self.model is None:
            return
        opts = self.options
        beta = opts.bregman_early_momentum if self.updates < opts.bregman_early_updates else opts.bregman_momentum
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, average in self.ema.items():
                average.lerp_(params[name].detach().to(average.dtype), 1.0 - beta)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"ema": None if self.ema is None else dict(self.ema), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))
        ema = state.get("ema")
        if ema is not None and self.model is not None:
            params = dict(self.model.named_parameters())
            self.ema = {n: t.to(device=params[n].device, dtype=params[n].dtype).clone() for n, t in ema.items()}

    # ----------------------------------------------------------------- logging
    def _record(self, key: str, value: torch.Tensor) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + float(value.detach())
        self._counts[key] = self._counts.get(key, 0) + 1


@attrs.define
class Smart:
    """SMART: adversarial smoothness (and optional Bregman proximal point) regularization."""

    weight: float = option(1.0, help="lambda_s, weight of the smoothness term (paper: tuned in 1, 3, 5); 0 turns it off", min=0)
    epsilon: float = option(EPSILON, help="radius of the perturbation ball: a fraction of each token's embedding norm (scale = relative), or absolute (paper: 1e-5)", min=0, min_exclusive=True)
    sigma: float = option(SIGMA, help="standard deviation of the initial noise, in the same units as epsilon (paper: 1e-5)", min=0)
    step_size: float = option(STEP_SIZE, help="eta, ascent step on the normalised gradient, in the same units as epsilon (paper: 1e-3)", min=0)
    steps: int = option(1, help="ascent steps before the final term (paper: 1; 0 = random noise only)", min=0)
    norm: Norm = option("linf", help="the ball and the gradient normalisation: linf (paper) or l2")
    scope: Scope = option("token", help="norms over each token (MT-DNN's code) or the whole example (the paper's text)")
    scale: Literal["relative", "absolute"] = option(
        "relative", help="relative: epsilon, sigma, step_size are fractions of the clean embeddings' norm (per scope); absolute: as given")
    dropout: Literal["shared", "independent"] = option(
        "shared", help="shared: f(x) and f(x+delta) use the same dropout masks (the training forward's, replayed); independent: fresh masks for f(x+delta)"
    )
    clean_gradient: bool = option(True, help="let the gradient flow through f(x) as well as f(x+delta) (the paper's objective)")
    tasks: list[str] | None = option(None, help="tasks to regularize (default: all)")
    bregman_weight: float = option(0.0, help="mu, weight of the Bregman proximal-point term (paper: 1; 0 = off)", min=0)
    bregman_momentum: float = option(0.999, help="beta of the parameter moving average after the early updates (paper: 0.999)", min=0, max=1)
    bregman_early_momentum: float = option(0.99, help="beta during the first bregman_early_updates updates (paper: 0.99)", min=0, max=1)
    bregman_early_updates: int = option(0, help="updates that use bregman_early_momentum (paper: the first 10% of training)", min=0)

    def check_tasks(self, task_names: list[str]) -> str | None:
        if self.tasks is not None and not self.tasks:
            return "tasks: give at least one task, or leave it out for all tasks"
        return unconfigured_task(self.tasks, task_names)

    def build(self) -> SmartState:
        return SmartState(self)


@hookimpl
def mtbert_register_regularizers(register):
    register("smart", Smart)
