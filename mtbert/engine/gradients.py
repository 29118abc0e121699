"""The shared parameters' gradients as one flat tensor on the device.

Each shared parameter's ``.grad`` is bound to a view into one contiguous buffer, so autograd
accumulates straight into it: reading all shared gradients is ``flat()`` and writing them back
is one ``copy_``, with no Python loop over parameters in the hot path. If autograd ever
replaces a ``.grad`` instead of accumulating into the view (it may for unusual layouts),
``flat()`` notices and gathers the gradients by copying instead, so results stay correct.

Parameters that no loss of an optimizer step reached (BERT's pooler under mean pooling, a
layer a stage does not use) must reach the optimizer with ``.grad = None``, not a zero view:
AdamW skips a parameter without a gradient, but decays one with a zero gradient and keeps
moving it with its momentum. A post-accumulate hook on each parameter records which ones a
backward reached; ``release_unused()`` unbinds the others before the optimizer step.

``redirect(target)`` points the ``.grad`` views at another flat tensor of the same size (a row
of the per-task ``[tasks, params]`` buffer), so a task's backward accumulates straight into its
row: no copy and no zeroing per task.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


class SharedGradients:
    def __init__(self, parameters: list[torch.nn.Parameter], device: torch.device):
        self.parameters = [p for p in parameters if p.requires_grad]
        self.numel = sum(p.numel() for p in self.parameters)
        self.buffer = torch.zeros(self.numel, device=device, dtype=torch.float32)
        self.current = self.buffer
        self.views: list[torch.Tensor] = self._views_into(self.buffer)
        self.used: set[int] = set()
        self._hooks = [p.register_post_accumulate_grad_hook(self._mark) for p in self.parameters
                       if hasattr(p, "register_post_accumulate_grad_hook")]
        self.rebind()

    def _mark(self, parameter: torch.Tensor) -> None:
        self.used.add(id(parameter))

    def release_unused(self) -> list[torch.nn.Parameter]:
        """Set ``.grad = None`` on the parameters no backward reached since ``rebind()``; returns them."""
        if len(self._hooks) != len(self.parameters):  # a torch without the hook: keep every gradient
            return []
        unused = [p for p in self.parameters if id(p) not in self.used]
        for p in unused:
            p.grad = None
        return unused

    def close(self) -> None:
        """Remove the hooks (a later stage builds its own)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _views_into(self, flat: torch.Tensor) -> list[torch.Tensor]:
        views, offset = [], 0
        for p in self.parameters:
            views.append(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        return views

    def redirect(self, target: torch.Tensor | None) -> None:
        """Accumulate the next backward into ``target`` (a contiguous flat tensor), or back into
        the main buffer with ``None``. The gradients already in ``target`` are kept."""
        self.flat()  # settle the current binding first
        self.current = self.buffer if target is None else target
        self.views = self._views_into(self.current)
        for p, view in zip(self.parameters, self.views):
            p.grad = view if p.dtype == view.dtype else None

    def rebind(self, zero: bool = True) -> None:
        """Point every ``.grad`` at its view again (after ``zero_grad(set_to_none=True)``).

        ``zero=False`` skips clearing the main buffer, for callers whose backward passes all go
        to other targets (:meth:`redirect`) and who then overwrite it whole (:meth:`assign`).
        """
        if self.current is not self.buffer:
            self.current = self.buffer
            self.views = self._views_into(self.buffer)
        if zero:
            self.buffer.zero_()
        self.used.clear()
        for p, view in zip(self.parameters, self.views):
            p.grad = view if p.dtype == view.dtype else None

    def _bound(self) -> bool:
        return all(p.grad is not None and p.grad.data_ptr() == v.data_ptr() for p, v in zip(self.parameters, self.views))

    def flat(self) -> torch.Tensor:
        """All shared gradients as one vector (a view of the buffer when binding held)."""
        if not self._bound():
            for p, view in zip(self.parameters, self.views):
                if p.grad is None:
                    view.zero_()
                elif p.grad.data_ptr() != view.data_ptr():
                    view.copy_(p.grad)
                    p.grad = view
        return self.current

    def zero(self) -> None:
        self.flat().zero_()

    def assign(self, vector: torch.Tensor) -> None:
        """Make ``vector`` the shared gradients the optimizer will use (in the main buffer)."""
        if self.current is not self.buffer:
            self.redirect(None)
        self.flat()
        self.buffer.copy_(vector)


def accepts_keyword(function: Any, name: str) -> bool:
    """Whether ``function`` takes the keyword ``name`` (optional parts of a component contract)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def build_transform(options: Any, shared: list[torch.nn.Parameter], seed: int) -> Any:
    """A gradient transform; one whose ``build`` takes ``seed`` gets one derived from the recipe's."""
    if accepts_keyword(options.build, "seed"):
        return options.build(shared, seed=seed)
    return options.build(shared)


def apply_transforms(transforms: list[tuple[Any, Any]], grads: SharedGradients | None, task_grads: torch.Tensor | None,
                     task_names: list[str], tasks_seen: list[str], trainable: list[torch.nn.Parameter]) -> dict[str, float]:
    """Run the recipe's gradient transforms, in order, on this optimizer step's gradients.

    ``task_grads`` is the ``[tasks, params]`` buffer of the per-task path (None otherwise): a
    per-task transform gets the rows of ``tasks_seen``, later ones their sum. The result ends in
    the shared parameters' ``.grad`` (through ``grads``); the per-task buffer is zeroed.
    """
    logs: dict[str, float] = {}
    if task_grads is not None and grads is not None:
        rows = [task_names.index(t) for t in tasks_seen]
        # Every task in recipe order (the all-tasks case): the buffer itself, no copy.
        current: torch.Tensor = task_grads if rows == list(range(len(task_names))) else task_grads[rows]
    else:
        current = None
    for spec, transform in transforms:
        needs = getattr(transform, "needs", "summed")
        if needs == "per-task":
            current = transform.apply(current, tasks=tasks_seen)
            if current.dim() == 2:  # a transform may keep per-task rows; later ones see their sum
                current = current.sum(dim=0)
            grads.assign(current)
            current = None
        elif needs == "summed" and grads is not None:
            if current is not None:
                grads.assign(current.sum(dim=0))
                current = None
            grads.assign(transform.apply(grads.flat().clone(), tasks=tasks_seen))
        elif needs == "parameters":
            if current is not None:
                grads.assign(current.sum(dim=0))
                current = None
            transform.apply(trainable, tasks=tasks_seen)
        for key, value in transform.logs().items():
            logs[f"{spec.name}/{key}"] = value
    if current is not None:
        grads.assign(current.sum(dim=0))
    if task_grads is not None:
        task_grads.zero_()
    return logs
