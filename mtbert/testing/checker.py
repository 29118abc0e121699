"""What every contract check shares: failure messages naming the component, the options-class
checks, the checkpoint's state round trip, and small gradient helpers."""

from __future__ import annotations

import functools
import json
import math
from typing import Any, Callable, Iterable, Sequence

import attrs
import torch
from torch import nn

from mtbert.engine.components import Batch
from mtbert.testing.builders import one_thread
from mtbert.testing.world import TINY_TASK_NAMES

#: The step modes a sampler may plan in and a component may require.
STEP_MODES = ("one-task", "all-tasks")


def state_round_trip(state: Any) -> Any:
    """``state`` through exactly what a checkpoint does: tensors to safetensors, the rest to JSON."""
    from safetensors.torch import load, save

    from mtbert.engine.checkpoint import join_tensors, split_tensors

    skeleton, tensors = split_tensors(state)
    return join_tensors(json.loads(json.dumps(skeleton)), load(save(tensors)))


class Checker:
    """Failure messages that name the component: ``head 'cosine': predictions have shape ...``."""

    def __init__(self, kind: str, label: str):
        self.kind = kind
        self.label = label

    def fail(self, message: str) -> None:
        raise AssertionError(f"{self.kind.replace('_', ' ')} {self.label}: {message}")

    def require(self, condition: Any, message: str) -> None:
        if not condition:
            self.fail(message)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a contract method; an exception becomes a failure naming the method."""
        try:
            return fn(*args, **kwargs)
        except AssertionError:
            raise
        except Exception as exc:  # the plugin's own error, reported as a contract failure
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise AssertionError(f"{self.kind.replace('_', ' ')} {self.label}: {what} raised {message}") from exc

    def finite(self, value: Any, what: str) -> None:
        if isinstance(value, torch.Tensor):
            ok = bool(torch.isfinite(value.detach().float()).all())
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        self.require(ok, f"{what} is not finite: {value!r}"[:300])

    def close(self, a: Any, b: Any, what: str, rtol: float = 1e-5, atol: float = 1e-6) -> None:
        ta, tb = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
        self.require(ta.shape == tb.shape, f"{what}: shapes differ, {tuple(ta.shape)} vs {tuple(tb.shape)}")
        self.require(torch.allclose(ta, tb, rtol=rtol, atol=atol, equal_nan=True),
                     f"{what}: {ta.flatten()[:6].tolist()} vs {tb.flatten()[:6].tolist()}")

    def logs(self, obj: Any, what: str = "logs()") -> None:
        if not hasattr(obj, "logs"):
            return
        values = self.call(what, obj.logs)
        self.require(isinstance(values, dict), f"{what} must return a dict, got {type(values).__name__}")
        for key, value in values.items():
            self.require(isinstance(key, str), f"{what} key {key!r} is not a string")
            self.finite(value, f"{what}[{key!r}]")

    def state(self, obj: Any, what: str) -> Any:
        try:
            return state_round_trip(self.call(f"{what}.state_dict()", obj.state_dict))
        except TypeError as exc:
            self.fail(f"{what}.state_dict() holds a value a checkpoint cannot store ({exc}); "
                      f"use tensors, numbers, strings, lists and dicts of them")


def component_label(kind: str, options: Any, name: str | None) -> str:
    if name:
        return f"'{name}'"
    cls = options if isinstance(options, type) else type(options)
    return cls.__name__


def options_instance(check: Checker, options: Any) -> Any:
    """The options object (a class is built with no arguments), after the options-class checks."""
    if isinstance(options, type):
        try:
            options = options()
        except Exception as exc:
            check.fail(f"{options.__name__}() cannot be built from defaults ({type(exc).__name__}: {exc}); "
                       f"give every option a default, or pass an instance with the options you want checked")
    _check_options_class(check, options)
    return options


def _check_options_class(check: Checker, options: Any) -> None:
    """attrs class, options declared with help texts, describable, and the recipe round trip."""
    import tomli_w

    from mtbert.schema import describe, structure, unstructure

    cls = type(options)
    check.require(attrs.has(cls), f"{cls.__name__} is not an attrs class (decorate it with @attrs.define)")
    check.call("describing the options (mtbert plugins)", describe, cls)
    for field in attrs.fields(cls):
        if field.init and not field.name.startswith("_"):
            check.require(field.metadata.get("help"),
                          f"option {field.name!r} has no help text: declare it with mtbert.api.option(default, help=...)")
    table = unstructure(options)
    try:
        tomli_w.dumps({"component": table})
    except Exception as exc:
        check.fail(f"the options {table!r} cannot be written to a resolved recipe.toml ({exc})")
    try:
        again = structure(cls, table)
    except ValueError as exc:
        check.fail(f"the resolved options {table!r} do not validate again ({exc}); --resume would refuse the run")
    check.require(again == options, f"the options do not survive the resolved recipe: {options!r} became {again!r}")


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def has_gradient(params: Iterable[torch.Tensor]) -> bool:
    return any(p.grad is not None and bool((p.grad != 0).any()) for p in params)


def grads_finite(check: Checker, params: Iterable[tuple[str, torch.Tensor]], where: str) -> None:
    for name, p in params:
        if p.grad is not None:
            check.require(bool(torch.isfinite(p.grad).all()), f"the gradient of {where} parameter {name} is not finite")


def isolated(fn: Callable[..., None]) -> Callable[..., None]:
    """Run a check on one thread with the global random state saved and restored (checks seed it)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        with torch.random.fork_rng(devices=[]), one_thread():
            return fn(*args, **kwargs)

    return wrapper


def task_losses(model: Any, batches: dict[str, Batch], tasks: Sequence[str]) -> dict[str, torch.Tensor]:
    return {task: model.heads[task].loss(model(batches[task]), batches[task].labels) for task in tasks}


def sgd_step(params: Iterable[torch.Tensor], lr: float = 0.05) -> None:
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)
                p.grad = None


def check_fits_tasks(check: Checker, options: Any, tasks: Sequence[str]) -> None:
    if hasattr(options, "check_tasks"):
        reason = check.call("check_tasks()", options.check_tasks, list(tasks))
        check.require(reason is None, f"check_tasks({list(tasks)}) refused the tiny tasks: {reason}; pass options "
                                      f"that fit tasks {', '.join(TINY_TASK_NAMES)}")


