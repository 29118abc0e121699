"""The contracts between the engine and plugin components.

A plugin registers an *options class* per component (an attrs class, fields = recipe
options). The engine instantiates it from the recipe, then calls the methods of its kind's
contract below. The Protocols here are the documentation of those contracts; the dataclass-like
types (:class:`Batch`, :class:`Features`, ...) are what flows between engine and plugins.

Step modes: a sampler produces either one task per optimizer step (``"one-task"``) or a batch
of every task per step (``"all-tasks"``). Loss combiners and gradient transforms that compare
tasks inside one step (GradNorm, PCGrad) declare ``requires_step_mode = "all-tasks"`` and the
recipe is rejected before work starts if the sampler does not provide it.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, Sequence, runtime_checkable

import attrs
import torch
from torch import nn

StepMode = Literal["one-task", "all-tasks"]
GradientNeeds = Literal["per-task", "summed", "parameters"]


# --------------------------------------------------------------------------- data flowing
@attrs.define
class Batch:
    """One task's batch: model inputs (already padded), labels, example ids."""

    task: str
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor | None
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> "Batch":
        non_blocking = torch.device(device).type == "cuda"
        return Batch(
            task=self.task,
            inputs={k: v.to(device, non_blocking=non_blocking) for k, v in self.inputs.items()},
            labels=None if self.labels is None else self.labels.to(device, non_blocking=non_blocking),
            ids=self.ids,
        )

    @property
    def num_tokens(self) -> int:
        return int(sum(int(v.sum()) for k, v in self.inputs.items() if k.startswith("attention_mask")))


@attrs.define
class Features:
    """Encoder outputs for a batch, as the head receives them.

    ``hidden`` and ``masks`` have one entry per encoded sequence: one for single sentences
    and for concatenated pairs, two (first, second) for separately encoded pairs.
    ``pooled`` holds the BERT pooler output of each sequence.
    """

    hidden: tuple[torch.Tensor, ...]
    masks: tuple[torch.Tensor, ...]
    pooled: tuple[torch.Tensor, ...]

    @property
    def num_sequences(self) -> int:
        return len(self.hidden)


@attrs.define
class EncodedExamples:
    """A task split tokenized once: per example, one id list per sequence (and segment ids)."""

    ids: list[str]
    sequences: list[list[list[int]]]  # [sequence slot][example] -> token ids
    type_ids: list[list[list[int]] | None]  # [sequence slot] -> per example segment ids, or None
    labels: list[int | float | None]

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> list[int]:
        """Per example, the longest of its sequences (what padding a batch costs)."""
        return [max(len(slot[i]) for slot in self.sequences) for i in range(len(self.ids))]


# --------------------------------------------------------------------------- contracts
@runtime_checkable
class InputFormat(Protocol):
    """How examples of a task become encoder inputs and encoder outputs become Features."""

    def check(self, task: Any) -> str | None:
        """A one-line reason if this format cannot serve ``task`` (e.g. a pair format on SST)."""

    def encode_examples(self, tokenizer: Any, examples: Sequence[Any], max_length: int) -> EncodedExamples:
        """Tokenize every example once (cached by the engine)."""

    def collate(self, encoded: EncodedExamples, indices: Sequence[int], task: str, label_dtype: torch.dtype,
                pad_to: int | None = None) -> Batch:
        """Pad the chosen examples to the longest among them (dynamic padding), or to at least
        ``pad_to`` tokens when given (``data.padding = "max_length"``; a format without this
        keyword supports dynamic padding only, and the recipe validator says so)."""

    def sequences(self, batch: Batch) -> list[dict[str, torch.Tensor]]:
        """Per encoded sequence, its ``input_ids``, ``attention_mask`` and ``token_type_ids``."""

    def encode(self, encoder: nn.Module, batch: Batch, inputs_embeds: tuple[torch.Tensor, ...] | None = None) -> Features:
        """Run the encoder on a batch. ``inputs_embeds`` (one word-embedding tensor per sequence,
        as :meth:`sequences` orders them) replaces the word lookup: SMART perturbs it."""


class HeadModule(Protocol):
    """What a head's ``build`` returns: an ``nn.Module`` with these three methods."""

    def forward(self, features: Features) -> torch.Tensor:
        """Predictions: logits ``[B, C]`` for classes, one logit ``[B]`` for binary, scores ``[B]``."""

    def loss(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch."""

    def predict(self, predictions: torch.Tensor) -> torch.Tensor:
        """Labels in the task's space: class ids, 0/1, or scores within the label range."""


class Head(Protocol):
    def build(self, hidden_size: int, task: Any, input_format: str) -> nn.Module: ...


class SamplerState(Protocol):
    step_mode: StepMode

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch (used for the schedule and the progress bar)."""

    def epoch(self, index: int) -> list[tuple[str, ...]]:
        """The whole plan of epoch ``index``: per step, the tasks that give a batch."""

    def batches_per_epoch(self) -> dict[str, int]:
        """How many batches each task gives in one epoch (documented and tested per sampler)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Sampler(Protocol):
    step: StepMode

    def build(self, batches: dict[str, int], seed: int, epochs: int) -> SamplerState:
        """``batches``: each task's batch count for one full pass over its training data;
        ``seed``: the sampler's own seed; ``epochs``: how many epochs the stage runs (for schedules)."""


@attrs.define
class Combined:
    """A loss combiner's answer: each task's contribution to the total, and its weights."""

    weighted: dict[str, torch.Tensor]
    weights: dict[str, float]
    logs: dict[str, float] = attrs.field(factory=dict)

    @property
    def total(self) -> torch.Tensor:
        return torch.stack(list(self.weighted.values())).sum()


class LossCombinerState(Protocol):
    def combine(self, losses: dict[str, torch.Tensor]) -> Combined: ...

    def after_step(self) -> None:
        """Called after each optimizer step (GradNorm renormalises its weights here)."""

    def end_epoch(self) -> None:
        """Optional: called at the end of every training epoch, before evaluation (DWA)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StatelessCombiner:
    """Base for loss combiners whose weights never learn: no work after a step, no state."""

    def after_step(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class LossCombiner(Protocol):
    requires_step_mode: StepMode | None

    def build(self, task_names: list[str], model: nn.Module) -> LossCombinerState:
        """``model`` is the :class:`~mtbert.engine.model.MultitaskModel`: ``model.shared_parameters()``,
        ``model.encoder.layers[-1]`` (the last shared layer, GradNorm's default W)."""


class GradientTransformState(Protocol):
    needs: GradientNeeds

    def apply(self, grads: Any, *, tasks: list[str]) -> Any:
        """``per-task``: ``[T, P]`` in, ``[P]`` or ``[T, P]`` out; ``summed``: ``[P]`` -> ``[P]``;
        ``parameters``: a list of parameters whose ``.grad`` it edits in place (returns None)."""

    def logs(self) -> dict[str, float]: ...


class GradientTransform(Protocol):
    requires_step_mode: StepMode | None

    def build(self, shared_parameters: list[nn.Parameter]) -> GradientTransformState: ...


@attrs.define
class PenaltyContext:
    """What a regularizer sees for one task's batch."""

    model: Any
    task: str
    batch: Batch
    predictions: torch.Tensor
    loss: torch.Tensor


class RegularizerState(Protocol):
    def setup(self, model: Any) -> None:
        """Once, before training: wrap or change modules (mixout)."""

    def penalty(self, context: PenaltyContext) -> torch.Tensor | None:
        """An extra loss term for this task's batch, or None."""

    def logs(self) -> dict[str, float]: ...


class Regularizer(Protocol):
    def build(self) -> RegularizerState: ...


class OptimizerGroupsState(Protocol):
    def apply(self, model: Any, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The engine's AdamW parameter groups in, the groups to use out (every parameter once)."""


class OptimizerGroups(Protocol):
    def build(self) -> OptimizerGroupsState: ...


class WeightAverageState(Protocol):
    def update(self, model: Any) -> None:
        """After every optimizer step: fold the current weights into the average."""

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged value of each averaged parameter, by ``model.named_parameters()`` name."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class WeightAverage(Protocol):
    def build(self, model: Any) -> WeightAverageState: ...


class Stage(Protocol):
    def run(self, run: Any, index: int, name: str) -> dict[str, float]:
        """Train ``run.model`` in place; ``index`` is the stage's position in the recipe."""


def no_logs() -> dict[str, float]:
    return {}
