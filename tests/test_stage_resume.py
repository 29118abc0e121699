"""Stages receive their own resume state from the engine.

A run interrupted inside its second stage resumes by skipping the first stage and calling the
second with the state it saved (``run(run, index, name, resume)``); the stages after it, and
every stage of a fresh run, get ``resume = None``. A third-party stage sees exactly this, with
no lookup of its own in the run's checkpoint.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from mtbert.api import RunInterrupted, hookimpl, option
from mtbert.engine.run import run_recipe
from mtbert.recipe import validate
from mtbert.testing import installed_plugins, tiny_plugins, tiny_recipe_table
from mtbert_plugins.stage_multitask import Multitask

CALLS: list[tuple[int, Any]] = []


@attrs.define
class Probe:
    """Records what the engine hands each stage, then trains as the builtin multitask stage does."""

    epochs: int = option(2, help="epochs of this stage", min=1)

    def run(self, run: Any, index: int, name: str, resume: dict[str, Any] | None) -> dict[str, float]:
        CALLS.append((index, None if resume is None else resume["stage_index"]))
        return Multitask(epochs=self.epochs).run(run, index, name, resume)


class ProbePlugin:
    @hookimpl
    def mtbert_register_stages(self, register):
        register("probe", Probe)


class StepCounter:
    def __init__(self):
        self.steps: list[int] = []

    @hookimpl
    def mtbert_on_step_end(self, step):
        self.steps.append(step)


class StopAt:
    def __init__(self, step: int):
        self.step = step

    @hookimpl
    def mtbert_on_step_end(self, run, step):
        if step == self.step:
            run.request_stop("test interruption")


def _run(tmp_path, folder: str, *extra: Any, resume: bool = False):
    plugins = tiny_plugins(("probe", ProbePlugin()), *extra)
    table = tiny_recipe_table(stages=[{"name": "probe"}, {"name": "probe"}])
    with installed_plugins(plugins):
        return run_recipe(validate(table, plugins), plugins, out=tmp_path / folder, resume=resume,
                          say=lambda _: None, warn=lambda _: None)


def test_a_resumed_run_hands_the_interrupted_stage_its_own_state(tmp_path):
    counter = StepCounter()
    CALLS.clear()
    _, whole = _run(tmp_path, "whole", ("counter", counter))
    assert CALLS == [(0, None), (1, None)]  # a fresh run: no stage gets a state
    total = counter.steps[-1]
    stop = total * 3 // 4 + 1  # inside the second stage's second epoch (each stage: half the steps)
    CALLS.clear()
    with pytest.raises(RunInterrupted):
        _run(tmp_path, "split", ("stopper", StopAt(stop)))
    assert CALLS == [(0, None), (1, None)]
    CALLS.clear()
    _, split = _run(tmp_path, "split", resume=True)
    assert CALLS == [(1, 1)]  # the first stage is skipped, the second gets the state it saved
    assert split == whole  # and the resumed run trains identically
