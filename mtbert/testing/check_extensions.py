"""Contract checks of the optimizer extension points: optimizer-group rules and weight averages."""

from __future__ import annotations

import copy
from typing import Any

import torch

from mtbert.testing.builders import tiny_batch, tiny_model
from mtbert.testing.checker import Checker, component_label, isolated, options_instance, sgd_step
from mtbert.testing.world import TINY_TASK_NAMES


# --------------------------------------------------------------------------- optimizer groups
@isolated
def check_optimizer_groups(options: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """An optimizer-groups rule: every parameter once, valid lr and decay, deterministic, AdamW steps."""
    from mtbert.engine.optim import build_optimizer
    from mtbert.recipe import OptimSection

    check = Checker("optimizer groups", component_label("optimizer groups", options, name))
    options = options_instance(check, options)
    model = tiny_model(plugins=plugins)
    optim = OptimSection()
    base = build_optimizer(model, optim, [], torch.device("cpu")).param_groups
    groups = [{k: v for k, v in g.items() if k in ("params", "lr", "weight_decay", "name")} for g in base]
    state = check.call("build()", options.build)
    check.require(callable(getattr(state, "apply", None)), "the built object has no apply(model, groups) method")
    out = check.call("apply()", state.apply, model, [dict(g) for g in groups])
    check.require(isinstance(out, list) and all(isinstance(g, dict) for g in out), "apply() must return a list of dicts")
    before = [id(p) for g in groups for p in g["params"]]
    after = [id(p) for g in out for p in g["params"]]
    check.require(sorted(after) == sorted(before), "apply() must return every parameter of the groups it got, each exactly once")
    for group in out:
        check.require(group["params"], f"group {group.get('name')!r} is empty")
        check.require(isinstance(group.get("lr"), float) and group["lr"] > 0, f"group {group.get('name')!r} has no positive float lr")
        check.require(isinstance(group.get("weight_decay"), float) and group["weight_decay"] >= 0,
                      f"group {group.get('name')!r} has no non-negative float weight_decay")
    again = check.call("apply()", options.build().apply, model, [dict(g) for g in groups])
    check.require([([id(p) for p in g["params"]], g["lr"], g["weight_decay"]) for g in again]
                  == [([id(p) for p in g["params"]], g["lr"], g["weight_decay"]) for g in out],
                  "apply() is not deterministic: the same groups in must give the same groups out (--resume reloads the optimizer)")
    optimizer = torch.optim.AdamW(out, betas=tuple(optim.betas), eps=optim.eps)
    batch = tiny_batch("tiny_sentiment", input_format=model.input_formats["tiny_sentiment"])
    model.heads["tiny_sentiment"].loss(model(batch), batch.labels).backward()
    check.call("an AdamW step on the groups", optimizer.step)


# --------------------------------------------------------------------------- weight averages
@isolated
def check_weight_average(options: Any, *, name: str | None = None, plugins: Any = None) -> None:
    """A weight average: named weights of the right shapes, evaluation swap restores, state round trip."""
    from mtbert.engine.extensions import averaged_weights

    check = Checker("weight average", component_label("weight average", options, name))
    options = options_instance(check, options)
    model = tiny_model(plugins=plugins).train()
    average = check.call("build()", options.build, model)
    for method in ("update", "weights", "state_dict", "load_state_dict"):
        check.require(callable(getattr(average, method, None)), f"the built object has no {method}() method")
    params = dict(model.named_parameters())
    for step in range(3):
        task = TINY_TASK_NAMES[step % len(TINY_TASK_NAMES)]
        batch = tiny_batch(task, start=step * 4, input_format=model.input_formats[task])
        model.heads[task].loss(model(batch), batch.labels).backward()
        sgd_step([p for p in model.parameters() if p.requires_grad], lr=0.05)
        check.call("update()", average.update, model)
    weights = check.call("weights()", average.weights)
    check.require(isinstance(weights, dict) and weights, "weights() must return a non-empty dict of parameter name -> tensor")
    for key, value in weights.items():
        check.require(key in params, f"weights() names {key!r}, which is not a parameter of the model")
        check.require(tuple(value.shape) == tuple(params[key].shape), f"weights()[{key!r}] has shape {tuple(value.shape)}, "
                                                                      f"the parameter {tuple(params[key].shape)}")
        check.finite(value, f"weights()[{key!r}]")
    trained = {k: v.detach().clone() for k, v in params.items()}
    with averaged_weights(model, average):
        for key, value in weights.items():
            check.close(params[key].detach(), value, f"inside the evaluation the model holds weights()[{key!r}]", atol=0, rtol=0)
    for key, value in trained.items():
        check.require(torch.equal(params[key].detach(), value), f"the trained weight {key!r} was not restored after evaluation")
    state = check.state(average, "the weight average")
    twin_model = copy.deepcopy(model)
    twin = check.call("build()", options.build, twin_model)
    check.call("load_state_dict()", twin.load_state_dict, state)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
        for p in twin_model.parameters():
            p.add_(0.01)
    average.update(model)
    twin.update(twin_model)
    resumed = twin.weights()
    for key, value in average.weights().items():
        check.close(resumed[key], value, f"after a state round trip and one more update, weights()[{key!r}] differs")
