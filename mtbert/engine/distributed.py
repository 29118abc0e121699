"""Data parallelism across processes: ``torchrun --nproc_per_node=N -m mtbert run RECIPE``.

torchrun starts N copies of ``mtbert run`` with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in
their environment. :func:`from_environment` sees them and joins the process group (NCCL when
the run's device is CUDA, each process on ``cuda:LOCAL_RANK``; gloo otherwise). Without those
variables nothing here does anything and a run is the single process it always was.

How a step is shared (the engine's side is in :mod:`mtbert.engine.trainer`):

* Every process runs the same plan: the sampler and every task's batch stream are seeded
  identically, so the *global* batches (``optim.batch_size`` examples, or the task's own
  ``batch_size``) and their order are the same everywhere. Process ``r`` of ``W`` takes
  ``batch[r::W]`` of each global batch. ``batch_size`` is therefore the global batch size: a
  recipe trains the same model on 1 or 8 processes, it only goes faster.
* Each process computes its shard's losses; one all-reduce of those values (weighted by the
  shard's share of the global batch, ``n_r / n``) gives every process the global batch's
  losses. The loss combiner sees losses whose *value* is the global one and whose gradient is
  this process's share, ``L~ = L_global + s_r * L_r - stopgrad(s_r * L_r)``, so any combiner
  (weights, uncertainty, GradNorm ...) takes the same decisions on every process and the sum
  over processes of each process's gradient is exactly the single-process gradient of the
  global batch (for heads whose loss is the mean over the batch's examples, as all builtin
  heads' are). A shard that comes out empty (a last batch smaller than ``W``) trains on one
  example with share 0, so every process runs the same graph.
* Gradients are summed across processes with explicit all-reduces after the backward passes
  of an optimizer step and before the gradient transforms: the flat shared-gradient buffer
  (or, when a transform asks for per-task gradients, the whole ``[tasks, params]`` buffer, so
  PCGrad projects the global per-task gradients), then the heads' (and other trainable
  parameters') gradients as one flat buffer. The loss combiner's own parameters (the
  uncertainty log-variances) get the same gradient on every process and are averaged.
  Transforms, the optimizer and the combiner then do identical work on identical numbers,
  so the weights stay identical without ever being broadcast again.

Why not ``DistributedDataParallel``: DDP all-reduces the *summed* gradient during backward,
while the engine needs control: per-task backward passes into a ``[tasks, params]`` buffer
that PCGrad must see globally, and gradient transforms between the backward passes and the
optimizer. The DDP way with the same mathematics is ``no_sync()`` around every backward and a
manual all-reduce of the per-task buffer afterwards, which is what this does without the
wrapper (and without DDP's unused-parameter bookkeeping, since a one-task step leaves the
other heads without gradients). What it gives up is DDP's overlap of communication with the
backward pass: the all-reduce starts when the step's backward passes are done.

Only rank 0 evaluates, writes checkpoints, predictions, TensorBoard and metrics files and
calls the plugins' event hooks (:class:`NoHooks` on the others); the others wait for it at
the next collective. Decisions that must agree (early stopping, a requested stop) are rank 0's
or every process's, shared with a collective.

For plugins: :func:`reduce_mean` and :func:`reduce_sum` average / sum a tensor across
processes and are the identity in a single process. GradNorm uses them for its gradient
norms; a combiner that takes extra gradients of the losses must sum them the same way.
"""

from __future__ import annotations

import datetime as dt
import os
import pickle
from typing import Any, Callable, TypeVar

import torch

from mtbert.errors import MtbertError, RecipeError

T = TypeVar("T")

#: How long a process waits at a collective (rank 0 evaluating, writing predictions) before
#: the job is declared hung. NCCL's own default (10 minutes) is short for a large dev set.
TIMEOUT = dt.timedelta(minutes=60)

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def _dist():
    import torch.distributed as dist

    return dist


def active() -> bool:
    """Whether this process is one of a torchrun job (a process group is initialised)."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return _dist().get_world_size() if active() else 1


def rank() -> int:
    return _dist().get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all processes (a new tensor; ``tensor`` itself in one process)."""
    if world_size() == 1:
        return tensor
    out = tensor.detach().clone()
    _dist().all_reduce(out)
    return out


def reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all processes (a new tensor; ``tensor`` itself in one process)."""
    size = world_size()
    if size == 1:
        return tensor
    out = reduce_sum(tensor)
    return out.div_(size) if out.is_floating_point() else out // size


def shard(indices: list[int], rank: int, world: int) -> tuple[list[int], float]:
    """This process's part of a global batch and its share of the batch's examples.

    ``indices[rank::world]`` (with length bucketing the batch is sorted by length, so every
    process gets a similar mix); a process left without an example takes the batch's first
    one with share 0, so it still runs the same forward and backward passes as the others.
    """
    if world == 1:
        return indices, 1.0
    mine = indices[rank::world]
    if not mine:
        return indices[:1], 0.0
    return mine, len(mine) / len(indices)


def with_global_value(local: torch.Tensor, share: float, global_value: torch.Tensor) -> torch.Tensor:
    """A loss whose value is ``global_value`` and whose gradient is ``share`` times ``local``'s.

    ``global_value`` is the sum over processes of ``share_r * local_r`` (detached). For any
    differentiable ``f``, summing over the processes the gradients of ``f`` of these tensors
    gives ``f'(global) * sum_r share_r * grad local_r``: the gradient of ``f`` of the global
    batch's loss, which is what a single process training on the whole batch computes.
    """
    part = local * share
    return global_value.detach() + (part - part.detach())


class NoHooks:
    """Stands in for the plugin hook relay on processes other than rank 0: every event is a no-op."""

    def __getattr__(self, name: str) -> Callable[..., list[Any]]:
        if name.startswith("mtbert_on_"):
            return lambda **kwargs: []
        raise AttributeError(name)


class Distributed:
    """This process's place in the job; a single process is rank 0 of 1 with no backend."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, backend: str | None = None,
                 owns_group: bool = False):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.backend = backend
        self.owns_group = owns_group

    # ----------------------------------------------------------------- facts
    @property
    def enabled(self) -> bool:
        """A process group is in use (torchrun started this process, even with one process)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def record(self) -> dict[str, Any]:
        """What run.json says about the job."""
        return {"world_size": self.world_size, "backend": self.backend}

    # ----------------------------------------------------------------- collectives
    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` in place over all processes."""
        if self.enabled and self.world_size > 1:
            _dist().all_reduce(tensor)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any process (every process gets the same answer)."""
        if not self.enabled or self.world_size == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        _dist().all_reduce(value)
        return bool(value.item() > 0)

    def barrier(self) -> None:
        if self.enabled and self.world_size > 1:
            _dist().barrier()

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every process."""
        if not self.enabled or self.world_size == 1:
            return obj
        box = [obj if self.is_main else None]
        _dist().broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, by rank, on every process."""
        if not self.enabled or self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        _dist().all_gather_object(out, obj)
        return out

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give its result to every process.

        A user error (``MtbertError``) raised there is raised on every process, so all of them
        stop with the same one-line message instead of waiting for rank 0 forever.
        """
        if not self.enabled or self.world_size == 1:
            return fn()
        result: Any = None
        error: Exception | None = None
        if self.is_main:
            try:
                result = fn()
            except MtbertError as exc:
                error = exc
        payload = self.broadcast_object((result, _picklable(error)))
        result, error = payload
        if error is not None:
            raise error
        return result

    def broadcast_module_(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers into every process's ``module`` (once, at the start)."""
        if not self.enabled or self.world_size == 1:
            return
        dist = _dist()
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def close(self) -> None:
        if self.owns_group and active():
            _dist().destroy_process_group()
        self.owns_group = False


def _picklable(error: Exception | None) -> Exception | None:
    if error is None:
        return None
    try:
        pickle.dumps(error)
        return error
    except Exception:  # an exception class with a custom constructor: keep the message
        return MtbertError(str(error))


def environment() -> dict[str, int] | None:
    """torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, or None when they are not all set."""
    if not all(name in os.environ for name in _ENV):
        return None
    try:
        return {name: int(os.environ[name]) for name in _ENV}
    except ValueError:
        raise RecipeError(f"torchrun environment: RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                          f"{', '.join(f'{n}={os.environ[n]!r}' for n in _ENV)}") from None


def resolve_device(device: torch.device, local_rank: int) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` when the recipe's device is CUDA."""
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise RecipeError(f"torchrun started process LOCAL_RANK={local_rank} on a machine with {count} CUDA "
                          f"device(s): use --nproc_per_node={count} or fewer")
    return torch.device("cuda", local_rank)


def from_environment(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join torchrun's job when started by it; returns the job and this process's device.

    The backend is NCCL for CUDA and gloo for every other device. A process group somebody
    else initialised (a test harness) is used as it is and not destroyed at the end.
    """
    env = environment()
    if env is None:
        return Distributed(), device
    device = resolve_device(device, env["LOCAL_RANK"])
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist = _dist()
    if not dist.is_available():
        raise RecipeError("torchrun started this run, but this build of torch has no torch.distributed")
    owns = False
    if dist.is_initialized():
        backend = dist.get_backend()
    else:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        kwargs: dict[str, Any] = {"backend": backend, "timeout": TIMEOUT}
        if device.type == "cuda":
            kwargs["device_id"] = device  # binds the NCCL communicator to this process's GPU
        try:
            dist.init_process_group(**kwargs)
        except TypeError:  # a torch without device_id
            kwargs.pop("device_id", None)
            dist.init_process_group(**kwargs)
        owns = True
    job = Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=env["LOCAL_RANK"],
                      backend=backend, owns_group=owns)
    return job, device


def check_batch_sizes(recipe: Any, world: int) -> None:
    """Every global batch must give every process at least one example."""
    if world <= 1:
        return
    sizes = [("optim.batch_size", recipe.optim.batch_size)]
    sizes += [(f"tasks.{name}.batch_size", t.section.batch_size) for name, t in recipe.tasks.items()
              if t.section.batch_size is not None]
    for key, size in sizes:
        if size < world:
            raise RecipeError(f"{key} = {size} is smaller than the {world} processes torchrun started; "
                              f"batch_size is the global batch, split across processes, so it must be at least {world}")


def global_losses(
    dist: Distributed, losses: dict[str, torch.Tensor], logs: dict[str, dict[str, float]], shares: dict[str, float],
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The global batch's losses and logs on every process, from one all-reduce.

    Each process contributes ``share * value``; the returned loss of a task has the global
    value and, as gradient, this process's share of it:
    ``L~ = L_global + share * L_local - stopgrad(share * L_local)``. Summing the processes'
    gradients of any function of the ``L~`` then gives that function's gradient at the
    global batch (see the module docstring).
    """
    tasks = list(losses)
    keys = [(task, key) for task in tasks for key in logs[task]]
    local = [losses[t].detach().float() * shares[t] for t in tasks]
    values = torch.tensor([logs[t][k] * shares[t] for t, k in keys], dtype=torch.float32, device=device)
    reduced = dist.all_reduce_(torch.cat([torch.stack(local), values]))
    out: dict[str, torch.Tensor] = {}
    for i, task in enumerate(tasks):
        out[task] = with_global_value(losses[task], shares[task], reduced[i])
    numbers = reduced[len(tasks):].tolist()
    return out, {key: numbers[i] for i, (_, key) in enumerate(keys)}


def reduce_gradients(dist: Distributed, grads: Any, task_grads: torch.Tensor | None, other_params: list[torch.nn.Parameter],
                     other_scales: list[float], device: torch.device) -> None:
    """Sum an optimizer step's gradients over the processes (two flat all-reduces).

    The shared gradients (``grads``, a :class:`~mtbert.engine.gradients.SharedGradients`) are
    reduced in their flat buffer, or, on the per-task path, the ``[tasks, params]`` buffer
    ``task_grads`` (so PCGrad sees the global per-task gradients). The other trainable
    parameters (heads, combiner) go through one flat buffer that also carries whether each had
    a gradient at all: a parameter without one stays without one, as in a single process
    (AdamW skips it).
    """
    if grads is not None:
        if task_grads is not None:
            dist.all_reduce_(task_grads)
        else:
            dist.all_reduce_(grads.flat())
    if not other_params:
        return
    pieces = []
    for p, scale in zip(other_params, other_scales):
        if p.grad is None:
            pieces.append(torch.zeros(p.numel(), device=device))
        else:
            pieces.append(p.grad.detach().reshape(-1).float() * scale)
    present = torch.tensor([0.0 if p.grad is None else 1.0 for p in other_params], device=device)
    flat = dist.all_reduce_(torch.cat(pieces + [present]))
    has_grad = flat[-len(other_params):].tolist()
    offset = 0
    for p, flag in zip(other_params, has_grad):
        chunk = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
        if flag > 0:
            if p.grad is None:
                p.grad = chunk.to(p.dtype).clone()
            else:
                p.grad.copy_(chunk)
