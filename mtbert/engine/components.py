"""The contracts between the engine and plugin components.

A plugin registers an *options class* per component (an attrs class, fields = recipe
options). The engine instantiates it from the recipe, then calls the methods of its kind's
contract below. The Protocols here are the one written source of those contracts, exported by
:mod:`mtbert.api`: the hookspec docstrings and CONTRIBUTING.md point here, and
tests/test_hook_docs.py fails when a signature they show differs from the Protocol's. A
member documented "Optional" may be left out; the engine then does without it. The
dataclass-like types (:class:`Batch`, :class:`Features`, ...) are what flows between engine
and plugins.

Protocol per kind (options class / what its ``build`` returns): input formats
:class:`InputFormat`; heads :class:`Head` / :class:`HeadModule`; samplers :class:`Sampler` /
:class:`SamplerState`; loss combiners :class:`LossCombiner` / :class:`LossCombinerState`;
gradient transforms :class:`GradientTransform` / :class:`GradientTransformState`; regularizers
:class:`Regularizer` / :class:`RegularizerState`; stages :class:`Stage`.

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
    """How examples of a task become encoder inputs and encoder outputs become Features.

    Optional class attribute ``default_for``: the task input kinds (``"single"``, ``"pair"``)
    this format serves when a recipe names none (one installed format per kind; the builtins:
    ``single`` and ``separate-pair``).
    """

    num_sequences: int
    """How many feature sets :meth:`encode` gives (``Features.num_sequences``): heads size their input by it."""

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
    """A task head's options class. Optional class attribute ``default_for``: the task input
    kinds it serves when a recipe names no head (the builtin ``linear``: both)."""

    def check(self, task: Any, input_format: InputFormat | None) -> str | None:
        """Optional: a one-line reason if this head cannot serve ``task`` given through
        ``input_format`` (None when the recipe's input format is itself invalid)."""

    def build(self, hidden_size: int, task: Any, input_format: InputFormat) -> nn.Module:
        """A :class:`HeadModule` for ``task`` fed by ``input_format`` (its ``num_sequences``
        says how many feature sets ``forward`` receives)."""


class ChecksTasks(Protocol):
    """Options of samplers, loss combiners, gradient transforms and regularizers may name tasks."""

    def check_tasks(self, task_names: list[str]) -> str | None:
        """Optional: a one-line reason if the options name a task the recipe does not train
        (``loop.to``, ``weights = {...}``), or None. The recipe validator calls it with the
        recipe's task names, before any work starts."""


class SamplerState(Protocol):
    """What a sampler's ``build`` returns: the plan of every epoch, from its own seeded generator
    (subclass :class:`mtbert.engine.sampling.SeededSampler`)."""

    step_mode: StepMode

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch (used for the schedule and the progress bar)."""

    def epoch(self, index: int) -> list[tuple[str, ...]]:
        """The whole plan of epoch ``index``: per step, the tasks that give a batch."""

    def batches_per_epoch(self) -> dict[str, int]:
        """How many batches each task gives in one epoch (documented and tested per sampler)."""

    def state_dict(self) -> dict[str, Any]:
        """The generator's state (and anything else the next epochs' plans depend on)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on ``--resume``."""


class Sampler(ChecksTasks, Protocol):
    """A sampler's options class: which task or tasks give the next batch."""

    step: StepMode
    """An option: ``"one-task"`` or ``"all-tasks"`` steps (a sampler may refuse one of them)."""

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
    """What a loss combiner's ``build`` returns. Optional members: ``end_epoch()``,
    ``parameters()`` and ``lr``."""

    def combine(self, losses: dict[str, torch.Tensor]) -> Combined:
        """Per-task losses of this step (global values under data parallelism) to each task's
        weighted contribution, the weights (logged) and extra logs; the engine backpropagates
        ``Combined.total``."""

    def after_step(self) -> None:
        """Called after each optimizer step (GradNorm renormalises its weights here)."""

    def end_epoch(self) -> None:
        """Optional: called at the end of every training epoch, before evaluation, in every
        process (DWA closes its epoch averages here)."""

    def parameters(self) -> list[nn.Parameter]:
        """Optional: learned weights the run's optimizer trains (uncertainty weighting), at the
        learning rate ``lr`` when the object has one."""

    def state_dict(self) -> dict[str, Any]:
        """Everything the weights depend on, saved in checkpoints."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on ``--resume``."""


class StatelessCombiner:
    """Base for loss combiners whose weights never learn: no work after a step, no state."""

    def after_step(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class LossCombiner(ChecksTasks, Protocol):
    """A loss combiner's options class: per-task losses to the total that is backpropagated."""

    requires_step_mode: StepMode | None
    """Class attribute: ``"all-tasks"`` when it compares tasks within a step (GradNorm), else None."""

    def build(self, task_names: list[str], model: nn.Module) -> LossCombinerState:
        """``model`` is the :class:`~mtbert.engine.multitask_model.MultitaskModel`: ``model.shared_parameters()``,
        ``model.encoder.layers[-1]`` (the last shared layer, GradNorm's default W)."""


class GradientTransformState(Protocol):
    """What a gradient transform's ``build`` returns. Optional: ``state_dict``/``load_state_dict``
    when it keeps state (PCGrad's generator), saved in checkpoints."""

    needs: GradientNeeds

    def apply(self, grads: Any, *, tasks: list[str]) -> Any:
        """``per-task``: ``[T, P]`` in, ``[P]`` or ``[T, P]`` out; ``summed``: ``[P]`` -> ``[P]``;
        ``parameters``: a list of parameters whose ``.grad`` it edits in place (returns None)."""

    def logs(self) -> dict[str, float]:
        """Values to log after the step (e.g. how many conflicts PCGrad projected)."""

    def state_dict(self) -> dict[str, Any]:
        """Optional: its state, saved in checkpoints."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Optional: restore :meth:`state_dict` on ``--resume``."""


class GradientTransform(ChecksTasks, Protocol):
    """A gradient transform's options class: applied between backward and the optimizer step,
    on the shared parameters' gradients, after the all-reduce under data parallelism. Per-task
    transforms come first in a recipe's list."""

    requires_step_mode: StepMode | None
    """Class attribute: ``"all-tasks"`` when it needs a batch of every task per step (PCGrad)."""

    needs: GradientNeeds
    """Class attribute: ``"per-task"``, ``"summed"`` or ``"parameters"`` (see ``apply``)."""

    def build(self, shared_parameters: list[nn.Parameter]) -> GradientTransformState:
        """``shared_parameters``: the encoder's trainable parameters (heads are task-specific)."""


@attrs.define
class PenaltyContext:
    """What a regularizer sees for one task's batch. ``random_state``: the global generators'
    state (an ``mtbert.api.RandomState``) just before the forward that gave ``predictions``,
    captured only when a regularizer sets ``wants_random_state``; replaying it repeats that
    forward's dropout masks (SMART's shared dropout reuses the training forward as f(x))."""

    model: Any
    task: str
    batch: Batch
    predictions: torch.Tensor
    loss: torch.Tensor
    random_state: Any = None


class RegularizerState(Protocol):
    """What a regularizer's ``build`` returns. Optional: ``after_step``, ``state_dict``,
    ``load_state_dict`` and the attribute ``wants_random_state`` (True: the engine captures
    ``PenaltyContext.random_state``; a regularizer that replays it restores the generators after)."""

    def setup(self, model: Any) -> None:
        """Once, before training and before a resumed run loads its weights: wrap or change
        modules (mixout)."""

    def penalty(self, context: PenaltyContext) -> torch.Tensor | None:
        """An extra loss term for this task's batch (under the run's autocast), or None."""

    def logs(self) -> dict[str, float]:
        """Values to log after the step."""

    def after_step(self) -> None:
        """Optional: called after every optimizer step (SMART's Bregman average)."""

    def state_dict(self) -> dict[str, Any]:
        """Optional: its state, saved in checkpoints."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Optional: restore :meth:`state_dict` on ``--resume`` (after ``setup`` and the weights)."""


class Regularizer(ChecksTasks, Protocol):
    """A regularizer's options class: extra loss terms, or one-time changes to modules."""

    def build(self) -> RegularizerState:
        """A fresh regularizer for this run."""


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
    """A training stage's options class.

    ``data_parallel``: class attribute, True when the stage trains correctly under torchrun
    (it shares its batches between processes); a recipe using any other stage is refused in a
    multi-process run.
    """

    data_parallel: bool

    def run(self, run: Any, index: int, name: str, resume: dict[str, Any] | None) -> dict[str, float]:
        """Train ``run.model`` in place and return the stage's final metrics. ``index`` is the
        stage's position in the recipe, ``name`` its registered name. ``resume`` is None unless
        the run resumes inside this stage: then it is the ``state_dict()`` of the object the stage
        last gave ``run.save_last(...)`` (which holds ``stage_index``); the engine skips the
        stages before it and gives the later ones None."""


def no_logs() -> dict[str, float]:
    return {}
