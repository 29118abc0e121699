"""Shared machinery of the benchmark suite: side-by-side timing, ratios, peak memory.

Every comparison is measured *side by side in one run*: each round of pytest-benchmark times
the candidate, and the untimed set-up or teardown of the same round times the reference just
before or just after it (alternately), so both see the same machine load and a ratio holds on
a busy machine even when absolute times do not. The ratio is ``median(candidate) / median(reference)`` of those paired rounds
(a time ratio: below 1 the candidate is faster) and goes into ``benchmark.extra_info`` with
the reference's name and the target, which ``benchmarks/report.py`` prints.

Peak memory, measured once after timing, is the most memory a call allocates above what was
allocated when it started:

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``torch.cuda.memory_allocated()`` before the call;
* CPU: the running sum of the allocation and free events that ``torch.profiler`` records
  with ``profile_memory=True`` (torch's CPU allocator only: Python objects and memory that
  libraries allocate outside torch are not counted; ``tracemalloc`` sees none of torch's
  tensors and ``ru_maxrss`` only ever grows, so neither can measure one step).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import time
from typing import Any, Callable

import torch

#: No comparison runs more paired rounds than this, however fast it is.
MAX_ROUNDS = 200


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (how mtbert trains there with train.precision = "bf16"); fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_memory(fn: Callable[[], Any], device: torch.device) -> tuple[int, str]:
    """(bytes, method): the peak allocation of one call above its starting point."""
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before), "torch.cuda.max_memory_allocated"
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    changes = [n for _, n in sorted((e.start_ns(), e.nbytes()) for e in events)]
    peak = max(itertools.accumulate(changes), default=0)
    return max(0, int(peak)), "torch.profiler CPU allocator events"


#: The pytest config, set by conftest.py (pytest-benchmark's fixture keeps no public handle).
CONFIG: dict[str, Any] = {}


def rounds_for(seconds_per_round: float) -> int:
    """Enough paired rounds to fill --benchmark-max-time, at least --benchmark-min-rounds."""
    config = CONFIG.get("config")
    min_rounds = int(config.getoption("benchmark_min_rounds")) if config else 5
    max_time = float(config.getoption("benchmark_max_time")) if config else 1.0
    wanted = math.ceil(max_time / max(seconds_per_round, 1e-6))
    return max(min_rounds, min(MAX_ROUNDS, wanted))


def measure(
    benchmark: Any,
    fn: Callable[[], Any],
    *,
    device: torch.device,
    reference: Callable[[], Any] | None = None,
    reference_name: str | None = None,
    target_max_ratio: float | None = None,
    target: str | None = None,
    memory: bool = False,
    warmup: int = 2,
    group: str | None = None,
    role: str | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Benchmark ``fn``; with ``reference``, time it in the same rounds and record the ratio.

    ``target_max_ratio``: the largest time ratio candidate/reference that meets the target
    (``1.0`` = not slower, ``0.5`` = at least 2x faster, ``1.15`` = at most 15% slower).
    ``warmup``: extra untimed calls of each before timing, for calls under a second (the
    first call, which also estimates how many rounds fit in --benchmark-max-time, is always
    untimed). Returns the extra_info written.
    """
    extra = benchmark.extra_info
    if group is not None:
        benchmark.group = group
    extra["device"] = device.type
    if info:
        extra.update(info)
    disabled = bool(getattr(benchmark, "disabled", False))

    def pair() -> float:
        return timed(fn, device) + (timed(reference, device) if reference is not None else 0.0)

    if not disabled:
        first = pair()  # a warm-up, and the time of a round
        if first < 1.0:  # heavy calls are warm after one pass; light ones get more, then a fair estimate
            for _ in range(warmup):
                pair()
            first = pair()
    mine: list[float] = []
    theirs: list[float] = []

    def run() -> None:
        mine.append(timed(fn, device))

    # The reference runs in the untimed set-up of even rounds and the teardown of odd ones
    # (reference, benchmark | benchmark, reference | ...), so neither always goes first.
    def setup() -> None:
        if reference is not None and len(mine) % 2 == 0:
            theirs.append(timed(reference, device))

    def teardown() -> None:
        if reference is not None and len(mine) % 2 == 0:  # odd round: `run` has just appended
            theirs.append(timed(reference, device))

    rounds = 1 if disabled else rounds_for(first)
    benchmark.pedantic(run, setup=setup, teardown=teardown, rounds=rounds, iterations=1, warmup_rounds=0)

    extra["median_s"] = statistics.median(mine)
    extra["paired_rounds"] = len(mine)
    if role:
        extra["role"] = role
    if reference is not None:
        ratio = statistics.median(mine) / statistics.median(theirs)
        extra["ratio"] = ratio
        extra["ratio_vs"] = reference_name or "reference"
        extra["reference_median_s"] = statistics.median(theirs)
        if target_max_ratio is not None:
            extra["target_max_ratio"] = target_max_ratio
            extra["target"] = target or f"time ratio <= {target_max_ratio:g}"
            extra["target_met"] = bool(ratio <= target_max_ratio)
    if memory:
        peak, method = peak_memory(fn, device)
        extra["peak_mem_mb"] = peak / 2**20
        extra["memory_method"] = method
        if reference is not None:
            ref_peak, _ = peak_memory(reference, device)
            extra["reference_peak_mem_mb"] = ref_peak / 2**20
            if ref_peak:
                extra["mem_ratio"] = peak / ref_peak
    return dict(extra)
