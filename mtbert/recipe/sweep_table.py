"""The recipe's ``[sweep]`` table: the grid and the search ranges ``mtbert sweep`` reads.

``mtbert run`` and ``mtbert validate`` check it (so a typo fails before a sweep starts) and
otherwise ignore it; the sweep itself lives in :mod:`mtbert.sweep`.
"""

from __future__ import annotations

from typing import Any

from mtbert.schema import did_you_mean

SWEEP_KEYS = ("space", "grid", "metric")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_sweep_table(raw: Any, metric_keys: set[str] | None) -> list[tuple[str, str]]:
    """Problems with a recipe's ``[sweep]`` table as ``(key path, message)``; empty when fine.

    ``metric_keys``: the recipe's task metric keys (``sst_acc`` ...), to check ``metric``; None
    when the tasks could not be read (then ``metric`` is only checked to be a string).
    """
    problems: list[tuple[str, str]] = []
    if raw is None:
        return problems
    if not isinstance(raw, dict):
        return [("sweep", f"{raw!r} is not a table (allowed keys: {', '.join(SWEEP_KEYS)})")]
    for key in raw:
        if key not in SWEEP_KEYS:
            problems.append((f"sweep.{key}", f"unknown key{did_you_mean(str(key), SWEEP_KEYS)} (allowed: {', '.join(SWEEP_KEYS)})"))
    metric = raw.get("metric")
    if metric is not None:
        if not isinstance(metric, str):
            problems.append(("sweep.metric", f"{metric!r} is not a metric name"))
        elif metric_keys is not None and metric != "mean" and metric not in metric_keys:
            problems.append(("sweep.metric", f"{metric!r} is not a dev metric of this recipe; choose mean or one of "
                                             f"{', '.join(sorted(metric_keys))}{did_you_mean(metric, metric_keys)}"))
    grid = raw.get("grid")
    if grid is not None:
        if not isinstance(grid, dict):
            problems.append(("sweep.grid", f"{grid!r} is not a table of key path = [values]"))
        else:
            for key, values in grid.items():
                if not isinstance(values, list) or not values:
                    problems.append((f"sweep.grid.{key}", f"{values!r} is not a non-empty list of values"))
    space = raw.get("space")
    if space is not None:
        if not isinstance(space, dict):
            problems.append(("sweep.space", f"{space!r} is not a table of key path = {{ low, high }} or {{ choices }}"))
            space = {}
        for key, spec in space.items():
            problems += [(f"sweep.space.{key}", m) for m in _check_range(spec)]
    return problems


def _check_range(spec: Any) -> list[str]:
    if not isinstance(spec, dict):
        return [f"{spec!r} is not a table {{ low = .., high = .. [, log = true | step = ..] }} or {{ choices = [..] }}"]
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        if extra:
            return [f"a choices range takes no other keys (found {', '.join(extra)})"]
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            return [f"choices = {choices!r} is not a non-empty list"]
        bad = [c for c in choices if not isinstance(c, (str, int, float, bool))]
        if bad:
            return [f"choices must be strings, numbers or booleans, found {bad[0]!r}"]
        return []
    extra = sorted(set(spec) - {"low", "high", "log", "step"})
    if extra:
        return [f"unknown key {extra[0]!r} (a range takes low, high, log, step; or choices alone)"]
    low, high = spec.get("low"), spec.get("high")
    if low is None or high is None:
        return ["a range needs low and high (or choices = [...])"]
    if not _number(low) or not _number(high):
        return [f"low and high must be numbers, got {low!r} and {high!r}"]
    if not low < high:
        return [f"low ({low!r}) must be below high ({high!r})"]
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        return [f"log = {log!r} is not true or false"]
    if log and low <= 0:
        return [f"a log range needs low > 0, got {low!r}"]
    if step is not None:
        if not _number(step) or step <= 0:
            return [f"step = {step!r} is not a positive number"]
        if log:
            return ["log and step cannot be combined"]
    return []
