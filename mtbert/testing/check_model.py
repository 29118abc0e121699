"""Contract checks of the components that shape the model: heads and regularizers."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from mtbert.engine.components import Batch, PenaltyContext
from mtbert.engine.seeding import RandomState
from mtbert.testing.builders import default_plugins, registered_options, tiny_batch, tiny_model
from mtbert.testing.checker import (
    Checker, check_fits_tasks, component_label, grads_finite, has_gradient, isolated, options_instance, sgd_step,
    state_round_trip, trainable,
)
from mtbert.testing.world import TINY_HIDDEN, TINY_TASK_NAMES, TINY_TASKS, tiny_encoder


# --------------------------------------------------------------------------- heads
@isolated
def check_head(options: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """A head: for every tiny task and input format it accepts, shapes, loss, gradients, labels, state."""
    from mtbert.engine.multitask_model import MultitaskModel

    check = Checker("head", component_label("head", options, name))
    options = options_instance(check, options)
    check.require(callable(getattr(options, "build", None)), "has no build(hidden_size, task, input_format) method")
    plugins = plugins or default_plugins()
    combos = []
    refused = []
    for spec in TINY_TASKS.values():
        for format_name in plugins.registry.names("input_format"):
            try:
                fmt = registered_options(plugins, "input_format", format_name)
            except Exception:
                continue  # an input format without defaults: not checked here
            if fmt.check(spec) is not None:
                continue
            reason = check.call("check()", options.check, spec, fmt) if hasattr(options, "check") else None
            if reason is not None:
                refused.append(f"{spec.name}/{format_name}: {reason}")
                continue
            combos.append((spec, format_name, fmt))
    check.require(combos, "refuses every tiny task with every input format: " + "; ".join(refused))
    for spec, format_name, fmt in combos:
        where = f"(task {spec.name}, {spec.label_kind}, input {format_name})"
        torch.manual_seed(0)
        module = check.call("build()", options.build, TINY_HIDDEN, spec, fmt)
        check.require(isinstance(module, nn.Module), f"build() must return an nn.Module, not {type(module).__name__}")
        for method in ("loss", "predict"):
            check.require(callable(getattr(module, method, None)), f"the module has no {method}() method")
        model = MultitaskModel(tiny_encoder(), {spec.name: module}, {spec.name: fmt})
        batch = tiny_batch(spec.name, size=5, input_format=fmt)
        size = len(batch)
        model.train()
        predictions = check.call("forward()", model, batch)
        expected = (size, spec.num_classes) if spec.label_kind == "multiclass" else (size,)
        check.require(isinstance(predictions, torch.Tensor) and tuple(predictions.shape) == expected,
                      f"predictions have shape {tuple(getattr(predictions, 'shape', ()))} {where}; a {spec.label_kind} "
                      f"head gives {expected} ({'logits [B, C]' if spec.label_kind == 'multiclass' else 'one value per example [B]'})")
        check.finite(predictions, f"predictions {where}")
        loss = check.call("loss()", module.loss, predictions, batch.labels)
        check.require(isinstance(loss, torch.Tensor) and loss.dim() == 0, f"loss() must return a scalar tensor {where}")
        check.finite(loss, f"loss {where}")
        check.call("backward of the loss", loss.backward)
        head_params = trainable(module)
        if head_params:
            check.require(has_gradient(head_params), f"no gradient reaches the head's parameters {where}")
        check.require(has_gradient(model.encoder.parameters()),
                      f"no gradient reaches the encoder {where}: do not detach the features")
        grads_finite(check, model.named_parameters(), "a")
        model.eval()
        with torch.no_grad():
            raw = model(batch)
            labels = check.call("predict()", module.predict, raw)
        check.require(isinstance(labels, torch.Tensor) and tuple(labels.shape) == (size,),
                      f"predict() must give one label per example, shape {(size,)}, got {tuple(getattr(labels, 'shape', ()))} {where}")
        if spec.label_kind == "regression":
            low, high = spec.label_range
            check.require(labels.is_floating_point() and bool(((labels >= low) & (labels <= high)).all()),
                          f"predict() must give scores within {low}..{high} {where}: {labels.tolist()}")
        else:
            top = spec.num_classes - 1
            check.require(not labels.is_floating_point() and bool(((labels >= 0) & (labels <= top)).all()),
                          f"predict() must give integer classes 0..{top} {where}: {labels.tolist()}")
        state = state_round_trip(module.state_dict())
        torch.manual_seed(1)
        fresh = options.build(TINY_HIDDEN, spec, fmt)
        check.call("load_state_dict() of a fresh head", fresh.load_state_dict, state)
        twin = MultitaskModel(model.encoder, {spec.name: fresh}, {spec.name: fmt}).eval()
        with torch.no_grad():
            check.close(twin(batch), raw, f"a fresh head loaded with the saved state_dict() predicts differently {where}")




# --------------------------------------------------------------------------- regularizers
@isolated
def check_regularizer(options: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """A regularizer: set-up, a finite scalar penalty (or None), backward, logs, state round trip."""
    check = Checker("regularizer", component_label("regularizer", options, name))
    options = options_instance(check, options)
    check_fits_tasks(check, options, TINY_TASK_NAMES)
    base = tiny_model(plugins=plugins)
    tasks = list(base.heads)

    def built(model: Any, begin: bool) -> Any:
        regularizer = check.call("build()", options.build)
        for method in ("setup", "penalty"):
            check.require(callable(getattr(regularizer, method, None)), f"the built object has no {method}() method")
        check.call("setup()", regularizer.setup, model)
        if begin and hasattr(regularizer, "begin_stage"):  # a fresh stage starts (not a resumed one)
            check.call("begin_stage()", regularizer.begin_stage, model)
        return regularizer

    def step(model: Any, regularizer: Any, task: str, batch: Batch, train: bool) -> tuple[torch.Tensor, Any]:
        wanted = getattr(regularizer, "wants_random_state", False)  # as the trainer: captured just before the forward
        random_state = RandomState(next(model.parameters()).device) if wanted else None
        predictions = model(batch)
        loss = model.heads[task].loss(predictions, batch.labels)
        context = PenaltyContext(model=model, task=task, batch=batch, predictions=predictions, loss=loss,
                                 random_state=random_state)
        term = check.call("penalty()", regularizer.penalty, context)
        where = f"(task {task})"
        if term is not None:
            check.require(isinstance(term, torch.Tensor) and term.numel() == 1, f"penalty() must return a scalar tensor or None {where}")
            check.finite(term, f"the penalty {where}")
        if train:
            total = loss if term is None else loss + term
            model.zero_grad(set_to_none=True)
            check.call("backward of loss + penalty", total.backward)
            check.require(has_gradient(model.encoder.parameters()), f"no gradient reaches the encoder with the penalty {where}")
            grads_finite(check, model.named_parameters(), "a model")
            sgd_step([p for p in model.parameters() if p.requires_grad], lr=0.01)
            if hasattr(regularizer, "after_step"):
                check.call("after_step()", regularizer.after_step)
            check.logs(regularizer)
        return predictions.detach(), None if term is None else term.detach()

    model = copy.deepcopy(base).train()
    regularizer = built(model, True)
    for round_ in range(2):
        for task in tasks:
            torch.manual_seed(10 * round_ + tasks.index(task))
            step(model, regularizer, task, tiny_batch(task, start=round_ * 4, input_format=model.input_formats[task]), True)
    state = check.state(regularizer, "the regularizer") if hasattr(regularizer, "state_dict") else None
    twin = copy.deepcopy(base).train()
    resumed = built(twin, False)  # the engine's order on --resume: set up, load the weights, load the state
    twin.load_state_dict(model.state_dict())
    if state is not None:
        check.require(callable(getattr(resumed, "load_state_dict", None)), "has state_dict() but no load_state_dict()")
        check.call("load_state_dict()", resumed.load_state_dict, state)
    for task in tasks:
        batch = tiny_batch(task, start=8, input_format=model.input_formats[task])
        torch.manual_seed(99)
        pa, ta = step(model, regularizer, task, batch, False)
        torch.manual_seed(99)
        pb, tb = step(twin, resumed, task, batch, False)
        where = f"after set-up, weights and state were restored (task {task})"
        check.close(pb, pa, f"the predictions differ from the original's {where}")
        check.require((ta is None) == (tb is None), f"one penalty is None and the other is not {where}")
        if ta is not None:
            check.close(tb, ta, f"the penalty differs from the original's {where}")


