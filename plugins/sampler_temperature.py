"""The ``temperature`` sampler: each step's task drawn with probability ∝ n_t^(1/T), optionally annealed.

Sources: N. Arivazhagan, A. Bapna, O. Firat, D. Lepikhin, M. Johnson, M. Krikun, M. X. Chen,
Y. Cao, G. Foster, C. Cherry, W. Macherey, Z. Chen, Y. Wu, 2019, "Massively Multilingual
Neural Machine Translation in the Wild: Findings and Challenges" (temperature-based sampling,
p_t ∝ (n_t / N)^(1/T): T = 1 is proportional to data size, T → ∞ uniform); A. C. Stickland,
I. Murray, 2019, "BERT and PALs: Projected Attention Layers for Efficient Adaptation in
Multi-Task Learning" (ICML), whose *annealed sampling* on GLUE draws p_t ∝ n_t^α with
α = 1 − 0.8 (e − 1)/(E − 1) in epoch e of E: from proportional towards uniform as training
goes on. ``temperature = 1.0, temperature_end = 5.0`` (the default linear change of the
exponent 1/T) is exactly that schedule.

Sizes are counted in batches (proportional to examples when the tasks share a batch size).
Per epoch there are ``N = sum_t n_t`` steps (``n_t`` = task t's batches in one full pass), and
in epoch e (0-based) of the stage's E epochs::

    T_e  = the temperature at e (below),   p_t(e) = n_t^(1/T_e) / sum_s n_s^(1/T_e)

Batches per task per epoch: ``N * p_t(e)`` in expectation (a multinomial draw, every step
independent); with ``exact = true`` exactly ``N * p_t(e)`` rounded by largest remainder (so
the counts sum to N), in a random order. ``batches_per_epoch()`` reports the first epoch's
counts that way; ``expected_batches(e)`` gives any epoch's.

The schedule: without ``temperature_end`` T is constant. With it, the fraction
``x = e / (E - 1)`` (0 in the first epoch, 1 in the last; 0 when E = 1) moves linearly either
the exponent (``anneal = "exponent"``, default: 1/T_e = (1 − x)/T_start + x/T_end, Stickland &
Murray's form) or the temperature itself (``anneal = "temperature"``:
T_e = (1 − x) T_start + x T_end). ``inf`` is allowed for the exponent form (uniform sampling).

Options (defaults in brackets):

* ``temperature`` [1.0]: T, or T at the first epoch when annealing; > 0, ``inf`` = uniform.
* ``temperature_end`` [none]: T at the stage's last epoch (none: constant T).
* ``anneal`` ["exponent"]: which quantity changes linearly over the epochs (see above).
* ``exact`` [false]: fixed per-epoch counts in a random order instead of independent draws.
* ``step`` ["one-task"]: only ``"one-task"``: drawing a task per step has no meaning when
  every step holds every task, so ``"all-tasks"`` is a recipe error (use ``upsample``,
  ``loop`` or a loss combiner's weights for PCGrad or GradNorm).
"""

from __future__ import annotations

import math
from typing import Literal

import attrs

from mtbert.api import SeededSampler, StepMode, hookimpl, largest_remainder, one_task_only, option

Anneal = Literal["exponent", "temperature"]


def task_probabilities(batches: dict[str, int], temperature: float) -> dict[str, float]:
    """``p_t ∝ n_t^(1/T)`` in float64, computed in log space (no overflow for small T).

    Tasks without batches get probability 0; T = ∞ is uniform over the other tasks.
    """
    present = {task: n for task, n in batches.items() if n > 0}
    if not present:
        return {task: 0.0 for task in batches}
    if temperature == 1.0:
        total = sum(present.values())
        return {task: present.get(task, 0) / total for task in batches}
    exponent = 0.0 if math.isinf(temperature) else 1.0 / temperature
    logs = {task: exponent * math.log(n) for task, n in present.items()}
    top = max(logs.values())
    weights = {task: math.exp(value - top) for task, value in logs.items()}
    norm = sum(weights.values())
    return {task: weights.get(task, 0.0) / norm for task in batches}


def annealed_temperature(start: float, end: float | None, anneal: Anneal, index: int, epochs: int) -> float:
    """The temperature in epoch ``index`` (0-based) of ``epochs`` (see the module docstring)."""
    if end is None:
        return start
    x = min(max(index / (epochs - 1), 0.0), 1.0) if epochs > 1 else 0.0
    if anneal == "temperature":
        return (1.0 - x) * start + x * end
    exponent = (1.0 - x) / start + x / end  # 1/inf == 0.0
    return math.inf if exponent == 0.0 else 1.0 / exponent


class TemperatureSampler(SeededSampler):
    """One task per step, drawn with probability ∝ n_t^(1/T_e); ``N = sum_t n_t`` steps per epoch."""

    def __init__(self, batches: dict[str, int], seed: int, epochs: int, temperature: float,
                 temperature_end: float | None, anneal: Anneal, exact: bool):
        super().__init__(batches, seed, "one-task")
        self.epochs = epochs
        self.temperature = temperature
        self.temperature_end = temperature_end
        self.anneal: Anneal = anneal
        self.exact = exact
        self.total = sum(self.batches.values())

    def temperature_at(self, index: int) -> float:
        return annealed_temperature(self.temperature, self.temperature_end, self.anneal, index, self.epochs)

    def probabilities(self, index: int) -> dict[str, float]:
        return task_probabilities(self.batches, self.temperature_at(index))

    def expected_batches(self, index: int) -> dict[str, float]:
        return {task: p * self.total for task, p in self.probabilities(index).items()}

    def exact_batches(self, index: int) -> dict[str, int]:
        return largest_remainder(self.expected_batches(index), self.total)

    def batches_per_epoch(self) -> dict[str, int]:
        return self.exact_batches(0)

    def steps_per_epoch(self) -> int:
        return self.total

    def epoch(self, index: int) -> list[tuple[str, ...]]:
        return self.sampled_epoch(self.exact, lambda: self.exact_batches(index), lambda: self.probabilities(index),
                                  self.total)


@attrs.define
class Temperature:
    """Each step's task drawn with probability ∝ n_t^(1/T), T optionally annealed (sum_t n_t steps per epoch)."""

    step_modes = ('one-task',)  # the step values this sampler accepts

    temperature: float = option(1.0, help="T (at the first epoch when annealed): 1 = proportional to batches, inf = uniform", min=0, min_exclusive=True,
                                finite=False)
    temperature_end: float | None = option(None, help="T at the stage's last epoch (default: T stays constant)", min=0,
                                           min_exclusive=True, finite=False)
    anneal: Anneal = option("exponent", help="what changes linearly over the epochs: the exponent 1/T (Stickland & Murray 2019) or T itself")
    exact: bool = option(False, help="use exactly round(N p_t) batches of each task per epoch, shuffled, instead of independent draws")
    step: StepMode = option("one-task", help="must be one-task: the sampler draws one task per step")

    def __attrs_post_init__(self) -> None:
        if self.step != "one-task":
            raise ValueError(one_task_only(
                "temperature", "it draws one task per step, which means nothing when every step holds every task",
                "use 'upsample' or 'loop' (or loss_combiner weights) for a batch of every task per step",
            ))
        for key, value in (("temperature", self.temperature), ("temperature_end", self.temperature_end)):
            if value is not None and math.isnan(value):
                raise ValueError(f"{key} = nan is not a temperature")
        if self.anneal == "temperature" and (math.isinf(self.temperature) or math.isinf(self.temperature_end or 0.0)):
            raise ValueError("anneal = \"temperature\" needs finite temperatures; use anneal = \"exponent\" to reach T = inf")

    def build(self, batches: dict[str, int], seed: int, epochs: int) -> TemperatureSampler:
        return TemperatureSampler(batches, seed, epochs, self.temperature, self.temperature_end, self.anneal, self.exact)


@hookimpl
def mtbert_register_samplers(register):
    register("temperature", Temperature)
