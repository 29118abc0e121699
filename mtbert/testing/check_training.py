"""Contract checks of the components that drive training: samplers, loss combiners, gradient
transforms and stages."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import attrs
import torch
from torch import nn

from mtbert.engine.components import Batch, Combined
from mtbert.testing.builders import default_plugins, installed_plugins, tiny_batches, tiny_model, tiny_recipe_table
from mtbert.testing.checker import (
    STEP_MODES, Checker, check_fits_tasks, component_label, grads_finite, has_gradient, isolated, options_instance,
    sgd_step, task_losses,
)
from mtbert.testing.world import TINY_TASK_NAMES


# --------------------------------------------------------------------------- samplers


@isolated
def check_sampler(options: Any, *, name: str | None = None, plugins: Any = None, exact_counts: bool = True) -> None:
    """A sampler: plans of known tasks in the step mode asked for, sized as it says, seeded, resumable.

    ``exact_counts=False`` is for samplers that draw every step independently (their epochs
    match ``batches_per_epoch()`` only in expectation): then only the step count is compared.
    """
    check = Checker("sampler", component_label("sampler", options, name))
    options = options_instance(check, options)
    check.require(getattr(options, "step", None) in STEP_MODES,
                  f"the options need a step option, \"one-task\" or \"all-tasks\" (found {getattr(options, 'step', None)!r})")
    variants = [options]
    other = "all-tasks" if options.step == "one-task" else "one-task"
    try:
        variants.append(attrs.evolve(options, step=other))
    except (ValueError, TypeError):
        pass  # this sampler refuses the other mode (a recipe error, as it should be)
    layouts = [
        {"tiny_sentiment": 5, "tiny_paraphrase": 3, "tiny_similarity": 2},
        {"tiny_sentiment": 3},
    ]
    for opts in variants:
        mode = opts.step
        check_fits_tasks(check, opts, TINY_TASK_NAMES)  # the recipe's tasks; a stage may train a subset
        for batches in layouts:
            tasks = list(batches)
            where = f"(step = {mode!r}, batches {batches})"
            sampler = check.call("build()", opts.build, dict(batches), 1234, 3)
            check.require(getattr(sampler, "step_mode", None) == mode,
                          f"the built sampler's step_mode is {getattr(sampler, 'step_mode', None)!r}, the options say {mode!r}")
            per_epoch = check.call("batches_per_epoch()", sampler.batches_per_epoch)
            steps = check.call("steps_per_epoch()", sampler.steps_per_epoch)
            check.require(isinstance(steps, int) and steps > 0, f"steps_per_epoch() must be a positive int, got {steps!r} {where}")
            check.require(isinstance(per_epoch, dict) and set(per_epoch) <= set(tasks)
                          and all(isinstance(v, int) and v >= 0 for v in per_epoch.values()),
                          f"batches_per_epoch() must map tasks to counts, got {per_epoch!r} {where}")
            plans = []
            for index in range(3):
                plan = check.call(f"epoch({index})", sampler.epoch, index)
                check.require(isinstance(plan, list) and all(isinstance(s, tuple) and s for s in plan),
                              f"epoch({index}) must be a list of non-empty tuples of task names {where}")
                for step in plan:
                    check.require(set(step) <= set(tasks), f"epoch({index}) names unknown tasks {step} {where}")
                    check.require(len(set(step)) == len(step), f"epoch({index}) repeats a task within a step: {step} {where}")
                    if mode == "one-task":
                        check.require(len(step) == 1, f"a one-task sampler gave the step {step} {where}")
                    else:
                        check.require(set(step) == set(tasks), f"an all-tasks step must hold every task, got {step} {where}")
                check.require(len(plan) == steps, f"epoch({index}) has {len(plan)} steps but steps_per_epoch() says {steps} {where}")
                plans.append(plan)
            counts = Counter(task for step in plans[0] for task in step)
            if mode == "all-tasks":
                check.require(all(per_epoch.get(t) == steps for t in tasks),
                              f"in all-tasks mode every task gives a batch per step: batches_per_epoch() should be {steps} "
                              f"for each task, got {per_epoch} {where}")
            elif exact_counts:
                expected = {t: n for t, n in per_epoch.items() if n}
                check.require(dict(counts) == expected,
                              f"epoch(0) gives {dict(counts)} batches per task but batches_per_epoch() says {per_epoch} {where}")
            else:
                check.require(sum(per_epoch.values()) == steps,
                              f"batches_per_epoch() sums to {sum(per_epoch.values())}, steps_per_epoch() is {steps} {where}")
            twin = opts.build(dict(batches), 1234, 3)
            check.require([twin.epoch(i) for i in range(3)] == plans, f"the same seed gave a different plan {where}")
            first = opts.build(dict(batches), 1234, 3)
            first.epoch(0)
            state = check.state(first, "the sampler")
            resumed = opts.build(dict(batches), 1234, 3)
            check.call("load_state_dict()", resumed.load_state_dict, state)
            check.require([resumed.epoch(1), resumed.epoch(2)] == [first.epoch(1), first.epoch(2)],
                          f"after load_state_dict() of the state saved after epoch 0, epochs 1 and 2 differ from the "
                          f"original's: keep the generator (and everything the plans depend on) in state_dict() {where}")


# --------------------------------------------------------------------------- loss combiners
def _check_combined(check: Checker, combined: Any, tasks: Sequence[str], where: str) -> None:
    check.require(isinstance(combined, Combined), f"combine() must return mtbert.api.Combined {where}")
    check.require(set(combined.weighted) == set(tasks), f"Combined.weighted has tasks {sorted(combined.weighted)}, the step had {sorted(tasks)} {where}")
    check.require(set(combined.weights) == set(tasks), f"Combined.weights has tasks {sorted(combined.weights)}, the step had {sorted(tasks)} {where}")
    for task in tasks:
        value = combined.weighted[task]
        check.require(isinstance(value, torch.Tensor) and value.numel() == 1, f"the weighted loss of {task} must be a scalar tensor {where}")
        check.finite(value, f"the weighted loss of {task} {where}")
        check.finite(combined.weights[task], f"the weight of {task} {where}")
    for key, value in combined.logs.items():
        check.finite(value, f"Combined.logs[{key!r}] {where}")
    check.require(combined.total.requires_grad, f"the total loss does not require grad {where}: do not detach the losses")


@isolated
def check_loss_combiner(options: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """A loss combiner: finite weighted losses, a differentiable total, extra parameters, state round trip.

    An optional ``end_epoch()`` (combiners whose weights change per epoch) is called after every
    step here, so a few "epochs" pass before the state is saved and after it is restored.
    """
    check = Checker("loss_combiner", component_label("loss_combiner", options, name))
    options = options_instance(check, options)
    mode = getattr(options, "requires_step_mode", None)
    check.require(mode in (None, *STEP_MODES), f"requires_step_mode must be None, 'one-task' or 'all-tasks', got {mode!r}")
    check_fits_tasks(check, options, TINY_TASK_NAMES)
    model = tiny_model(plugins=plugins).eval()  # eval: the same losses every time; gradients still flow
    tasks = list(model.heads)
    batches = tiny_batches(model)
    plan = [tuple(tasks), tuple(tasks)] + ([(t,) for t in tasks] if mode != "all-tasks" else [])

    def built() -> tuple[Any, list[torch.Tensor]]:
        combiner = check.call("build()", options.build, list(tasks), model)
        for method in ("combine", "after_step", "state_dict", "load_state_dict"):
            check.require(callable(getattr(combiner, method, None)), f"the built object has no {method}() method")
        extra = list(check.call("parameters()", combiner.parameters)) if hasattr(combiner, "parameters") else []
        check.require(all(isinstance(p, torch.Tensor) and p.requires_grad for p in extra),
                      "parameters() must give tensors that require grad (the run's optimizer trains them)")
        return combiner, extra

    combiner, extra = built()
    for step in plan:
        where = f"(step tasks {list(step)})"
        combined = check.call("combine()", combiner.combine, task_losses(model, batches, step))
        _check_combined(check, combined, step, where)
        model.zero_grad(set_to_none=True)
        check.call("backward of Combined.total", combined.total.backward)
        check.require(has_gradient(model.encoder.parameters()), f"no gradient reaches the encoder from the total {where}")
        grads_finite(check, model.named_parameters(), "a model")
        for p in extra:
            if p.grad is not None:
                check.finite(p.grad, f"the gradient of a combiner parameter {where}")
        sgd_step(extra)
        check.call("after_step()", combiner.after_step)
        if hasattr(combiner, "end_epoch"):  # optional: epoch-level combiners (each step is an "epoch" here)
            check.call("end_epoch()", combiner.end_epoch)
    state = check.state(combiner, "the combiner")
    resumed, resumed_extra = built()
    check.call("load_state_dict()", resumed.load_state_dict, state)
    for step in plan[:2] + plan[2:3]:
        where = f"after a state round trip (step tasks {list(step)})"
        losses = task_losses(model, batches, step)
        a = combiner.combine(losses)
        b = check.call("combine()", resumed.combine, losses)
        for task in step:
            check.close(b.weights[task], a.weights[task], f"the weight of {task} differs from the original's {where}")
            check.close(b.weighted[task], a.weighted[task], f"the weighted loss of {task} differs from the original's {where}")
        model.zero_grad(set_to_none=True)
        a.total.backward(retain_graph=True)
        b.total.backward()
        sgd_step(extra)
        sgd_step(resumed_extra)
        combiner.after_step()
        resumed.after_step()
        if hasattr(combiner, "end_epoch"):
            combiner.end_epoch()
            resumed.end_epoch()




# --------------------------------------------------------------------------- gradient transforms
_NEEDS = ("per-task", "summed", "parameters")


def _per_task_gradients(model: Any, batches: dict[str, Batch], shared: list[nn.Parameter]) -> torch.Tensor:
    rows = []
    for task in model.heads:
        model.zero_grad(set_to_none=True)
        model.heads[task].loss(model(batches[task]), batches[task].labels).backward()
        rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in shared]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


@isolated
def check_gradient_transform(options: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """A gradient transform: what it needs, output shapes, finite values, logs, state round trip."""
    check = Checker("gradient_transform", component_label("gradient_transform", options, name))
    options = options_instance(check, options)
    mode = getattr(options, "requires_step_mode", None)
    check.require(mode in (None, *STEP_MODES), f"requires_step_mode must be None, 'one-task' or 'all-tasks', got {mode!r}")
    needs = getattr(options, "needs", "summed")
    check.require(needs in _NEEDS, f"needs must be one of {', '.join(_NEEDS)}, got {needs!r}")
    check_fits_tasks(check, options, TINY_TASK_NAMES)
    model = tiny_model(plugins=plugins).eval()
    tasks = list(model.heads)
    batches = tiny_batches(model)
    shared = model.shared_parameters()
    size = sum(p.numel() for p in shared)
    grads = _per_task_gradients(model, batches, shared)
    everything = [p for p in model.parameters() if p.requires_grad]

    def built() -> Any:
        transform = check.call("build()", options.build, shared)
        check.require(callable(getattr(transform, "apply", None)), "the built object has no apply() method")
        built_needs = getattr(transform, "needs", "summed")
        check.require(built_needs == needs, f"the options say needs = {needs!r} but the built object says {built_needs!r} "
                                            f"(the engine reads the built object's; give both the same class attribute)")
        return transform

    def apply(transform: Any, matrix: torch.Tensor, step: Sequence[str], where: str) -> torch.Tensor:
        if needs == "per-task":
            out = check.call("apply()", transform.apply, matrix.clone(), tasks=list(step))
            check.require(isinstance(out, torch.Tensor) and (tuple(out.shape) == (size,) or tuple(out.shape) == tuple(matrix.shape)),
                          f"apply() of a [{matrix.shape[0]}, {size}] per-task gradient must give [{size}] or "
                          f"[{matrix.shape[0]}, {size}], got {tuple(getattr(out, 'shape', ()))} {where}")
            return out if out.dim() == 1 else out.sum(dim=0)
        if needs == "summed":
            out = check.call("apply()", transform.apply, matrix.sum(dim=0).clone(), tasks=list(step))
            check.require(isinstance(out, torch.Tensor) and tuple(out.shape) == (size,),
                          f"apply() of the summed gradient [{size}] must give [{size}], got {tuple(getattr(out, 'shape', ()))} {where}")
            return out
        model.zero_grad(set_to_none=True)
        sum(model.heads[t].loss(model(batches[t]), batches[t].labels) for t in step).backward()
        shapes = [None if p.grad is None else p.grad.shape for p in everything]
        check.call("apply()", transform.apply, everything, tasks=list(step))
        check.require([None if p.grad is None else p.grad.shape for p in everything] == shapes,
                      f"apply() changed the shape of some .grad {where}")
        out = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in everything])
        model.zero_grad(set_to_none=True)
        return out

    transform = built()
    steps = [tuple(tasks)] + ([(tasks[0],)] if mode != "all-tasks" else [])
    for step in steps:
        rows = [tasks.index(t) for t in step]
        where = f"(step tasks {list(step)})"
        out = apply(transform, grads[rows], step, where)
        check.finite(out, f"the transformed gradient {where}")
        check.logs(transform)
    if hasattr(transform, "state_dict"):
        check.require(callable(getattr(transform, "load_state_dict", None)), "has state_dict() but no load_state_dict()")
        state = check.state(transform, "the transform")
        resumed = built()
        check.call("load_state_dict()", resumed.load_state_dict, state)
        other = grads.roll(1, dims=0) * 0.5 + grads * 0.25
        for repeat in range(2):
            where = f"after a state round trip (application {repeat + 1})"
            a = apply(transform, other, tasks, where)
            b = apply(resumed, other, tasks, where)
            check.close(b, a, f"the transformed gradient differs from the original's {where}")




# --------------------------------------------------------------------------- stages
@attrs.define
class _StageProbe:
    """Wraps a stage to see what ``run`` returns and whether the model changed."""

    options: Any
    result: Any = attrs.field(default=None, init=False)
    changed: bool = attrs.field(default=False, init=False)

    def run(self, run: Any, index: int, name: str, resume: dict[str, Any] | None) -> Any:
        before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
        self.result = self.options.run(run, index, name, resume)
        after = dict(run.model.named_parameters())
        self.changed = any(not torch.equal(before[n], after[n].detach()) for n in before)
        return self.result


@isolated
def check_stage(options: Any, *, name: str | None = None, plugins: Any = None, out: str | Path | None = None) -> None:
    """A stage: it trains the tiny model in place inside a whole tiny run and returns its metrics."""
    from mtbert.plugins import Component
    from mtbert.recipe import ComponentSpec, validate

    check = Checker("stage", component_label("stage", options, name))
    options = options_instance(check, options)
    check.require(callable(getattr(options, "run", None)), "has no run(run, index, name, resume) method")
    plugins = plugins or default_plugins()
    probe = _StageProbe(options)
    component = Component(kind="stage", name=name or "stage-under-test", factory=type(options), plugin="(under test)",
                          distribution="(in-process)", version="-")
    with contextlib.ExitStack() as stack:
        folder = Path(out) if out is not None else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mtbert-check-stage-"))) / "run"
        with installed_plugins(plugins):
            recipe = validate(tiny_recipe_table(), plugins, source="tiny.toml")
            recipe.stages = [ComponentSpec(kind="stage", name=component.name, options=probe, component=component)]
            from mtbert.engine.run import run_recipe

            check.call("a tiny run", run_recipe, recipe, plugins, out=folder, say=lambda m: None, warn=lambda m: None)
        info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        check.require(info.get("status") == "finished", f"the tiny run ended with status {info.get('status')!r}")
    check.require(isinstance(probe.result, dict), f"run() must return a dict of metrics, got {type(probe.result).__name__}")
    for key, value in probe.result.items():
        check.require(isinstance(key, str), f"metric key {key!r} is not a string")
        check.finite(value, f"metric {key!r}")
    check.require(probe.changed, "run() did not change any parameter of run.model (a stage trains the model in place)")


