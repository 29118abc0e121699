"""Every hook mtbert calls, documented where it is declared.

Two families:

* **registration hooks** (``mtbert_register_<kind>``) are called once, when plugins load.
  Each receives a ``register(name, factory)`` callback. ``factory`` is an attrs class whose
  fields are the component's recipe options (type-annotated, with defaults and a docstring);
  the engine instantiates it from the recipe and calls the methods its kind's contract names
  (see CONTRIBUTING.md). Tasks and checkpoints register plain description objects instead.
  The callback records which plugin supplied each component; a name registered twice is an
  error naming both providers.
* **event hooks** (``mtbert_on_<event>``) are called while a run goes on, so a plugin can log
  or react without owning the loop. Their return values are ignored.

The ``mtbert_`` prefix lets ``PluginManager.check_pending()`` reject a misspelled hook.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("mtbert")

Register = Callable[[str, Any], None]


# --------------------------------------------------------------------------- registration
@hookspec
def mtbert_register_tasks(register: Register) -> None:
    """Register tasks: ``register("sst", TaskSpec(...))``.

    A :class:`mtbert.data.tasks.TaskSpec` says where a task's files are, how to read them,
    its input kind (single sentence or pair), label type and range, metric and prediction
    file format. A recipe trains a task by naming it under ``[tasks.<name>]``.
    """


@hookspec
def mtbert_register_checkpoints(register: Register) -> None:
    """Register named backbones: ``register("minilm-l6", CheckpointSpec(...))``.

    A :class:`mtbert.model.backbone.CheckpointSpec` resolves a name used in
    ``model.checkpoint`` to an HF-format folder (or builds a random model).
    """


@hookspec
def mtbert_register_input_formats(register: Register) -> None:
    """Register input formats: how a task's examples become encoder inputs.

    Factory contract (:class:`mtbert.engine.components.InputFormat`): ``encode_examples``
    tokenizes examples once; ``collate`` pads a batch; ``encode`` runs the encoder and returns
    :class:`mtbert.engine.components.Features` for the head. Builtins: ``single``,
    ``separate-pair``.
    """


@hookspec
def mtbert_register_heads(register: Register) -> None:
    """Register task heads: ``register("linear", LinearHead)``.

    Factory contract (:class:`mtbert.engine.components.Head`): ``build(hidden_size, task)``
    returns an ``nn.Module`` whose ``forward(features)`` gives predictions, with ``loss``
    and ``predict`` methods. Head parameters are task-specific: gradient transforms never
    touch them.
    """


@hookspec
def mtbert_register_samplers(register: Register) -> None:
    """Register task samplers: which task or tasks give the next batch.

    Factory contract (:class:`mtbert.engine.components.Sampler`): ``build(task_sizes, seed)``
    returns an object with ``step_mode`` ("one-task" or "all-tasks"), ``steps_per_epoch``,
    ``epoch(index)`` yielding a tuple of task names per optimizer step, and
    ``state_dict``/``load_state_dict`` for its seeded generator.
    """


@hookspec
def mtbert_register_loss_combiners(register: Register) -> None:
    """Register loss combiners: per-task losses to the total that is backpropagated.

    Factory contract (:class:`mtbert.engine.components.LossCombiner`):
    ``build(task_names, shared_parameters)`` returns an object whose ``combine(losses)``
    gives ``(per_task_weighted_losses, weights)``; the engine backpropagates their sum.
    """


@hookspec
def mtbert_register_gradient_transforms(register: Register) -> None:
    """Register gradient transforms applied between backward and the optimizer step.

    Factory contract (:class:`mtbert.engine.components.GradientTransform`): ``needs`` says
    whether it takes per-task gradients of the shared parameters (a ``[tasks, params]``
    tensor) or their sum (a flat vector); ``apply`` returns the gradients to use.
    """


@hookspec
def mtbert_register_regularizers(register: Register) -> None:
    """Register regularizers: extra loss terms, or one-time changes to modules.

    Factory contract (:class:`mtbert.engine.components.Regularizer`): ``setup(model)`` runs
    once before training (mixout wraps layers there); ``penalty(context)`` returns an extra
    loss term for one task's batch, or ``None``.
    """


@hookspec
def mtbert_register_stages(register: Register) -> None:
    """Register training stages a recipe may chain (``multitask``, in-domain ``mlm``...).

    Factory contract (:class:`mtbert.engine.components.Stage`): ``run(context)`` trains the
    shared model in place and returns the stage's final metrics.
    """


# --------------------------------------------------------------------------- events
@hookspec
def mtbert_on_run_start(run: Any) -> None:
    """A run is about to train: ``run`` is the :class:`mtbert.engine.run.RunContext`."""


@hookspec
def mtbert_on_step_end(run: Any, step: int, logs: dict[str, float]) -> None:
    """An optimizer step ended; ``logs`` holds the losses, weights and rates it produced."""


@hookspec
def mtbert_on_evaluate(
    run: Any, stage: str, epoch: int, step: int, metrics: dict[str, float], predictions: dict[str, dict[str, list]]
) -> None:
    """Dev metrics were computed after an epoch (keys as in DESIGN.md: ``sst_acc`` ...).

    ``predictions`` maps each task to ``{"ids": [...], "predictions": [...], "labels": [...]}``
    in file order (what a confusion matrix or an error analysis needs). An implementation may
    accept only the arguments it uses.
    """


@hookspec
def mtbert_on_state_saved(run: Any, folder: Any) -> None:
    """``folder`` (``checkpoints/last``) now holds a complete ``--resume`` state.

    Called after the state written at the end of every epoch (so after that epoch's
    ``mtbert_on_evaluate``), every ``train.checkpoint_every`` steps and on an interruption; a
    scheduler that checkpoints trials (Ray Tune's population-based training) hands this folder on.
    """


@hookspec
def mtbert_on_run_end(run: Any, summary: dict[str, Any]) -> None:
    """A run finished (or stopped early); ``summary`` is what ``metrics.json`` holds."""
