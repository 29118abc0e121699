"""Every hook mtbert calls, documented where it is declared.

Two families:

* **registration hooks** (``mtbert_register_<kind>``) are called once, when plugins load.
  Each receives a ``register(name, factory)`` callback. ``factory`` is an attrs class whose
  fields are the component's recipe options (type-annotated, with defaults and a docstring);
  the engine instantiates it from the recipe and calls the methods its kind's contract names:
  the Protocols in :mod:`mtbert.engine.components`, exported by :mod:`mtbert.api` (this file
  names them and does not restate them). Tasks and checkpoints register plain description
  objects instead. The callback records which plugin supplied each component; a name registered twice is an
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

    A :class:`mtbert.api.TaskSpec` says where a task's files are, how to read them,
    its input kind (single sentence or pair), label type and range, metric and prediction
    file format. A recipe trains a task by naming it under ``[tasks.<name>]``.
    """


@hookspec
def mtbert_register_checkpoints(register: Register) -> None:
    """Register named backbones: ``register("minilm-l6", CheckpointSpec(...))``.

    A :class:`mtbert.api.CheckpointSpec` resolves a name used in
    ``model.checkpoint`` to an HF-format folder (or builds a random model).
    """


@hookspec
def mtbert_register_input_formats(register: Register) -> None:
    """Register input formats: how a task's examples become encoder inputs.

    Contract: :class:`mtbert.api.InputFormat`. Builtins: ``single`` and ``separate-pair`` (the
    defaults for single-sentence and pair tasks), ``concat-pair``.
    """


@hookspec
def mtbert_register_heads(register: Register) -> None:
    """Register task heads: ``register("linear", LinearHead)``.

    Contract: :class:`mtbert.api.Head`; ``build(hidden_size, task, input_format)`` returns a
    :class:`mtbert.api.HeadModule`. Head parameters are task-specific: gradient transforms
    never touch them.
    """


@hookspec
def mtbert_register_samplers(register: Register) -> None:
    """Register task samplers: which task or tasks give the next batch.

    Contract: :class:`mtbert.api.Sampler`; ``build(batches, seed, epochs)`` returns a
    :class:`mtbert.api.SamplerState`.
    """


@hookspec
def mtbert_register_loss_combiners(register: Register) -> None:
    """Register loss combiners: per-task losses to the total that is backpropagated.

    Contract: :class:`mtbert.api.LossCombiner`; ``build(task_names, model)`` returns a
    :class:`mtbert.api.LossCombinerState`, whose ``combine(losses)`` gives a
    :class:`mtbert.api.Combined`.
    """


@hookspec
def mtbert_register_gradient_transforms(register: Register) -> None:
    """Register gradient transforms applied between backward and the optimizer step.

    Contract: :class:`mtbert.api.GradientTransform`; ``build(shared_parameters)`` returns a
    :class:`mtbert.api.GradientTransformState`.
    """


@hookspec
def mtbert_register_regularizers(register: Register) -> None:
    """Register regularizers: extra loss terms, or one-time changes to modules.

    Contract: :class:`mtbert.api.Regularizer`; ``build()`` returns a
    :class:`mtbert.api.RegularizerState` (``setup(model)`` once, ``penalty(context)`` per batch;
    ``wants_random_state = True`` gets ``context.random_state``, the generators' state just
    before the training forward, to replay its dropout masks).
    """


@hookspec
def mtbert_register_stages(register: Register) -> None:
    """Register training stages a recipe may chain (``multitask``, in-domain ``mlm``...).

    Contract: :class:`mtbert.api.Stage`; ``run(run, index, name, resume)`` trains the shared
    model in place and returns the stage's final metrics.
    """


@hookspec
def mtbert_register_optimizer_groups(register: Register) -> None:
    """Register optimizer parameter-group rules (``llrd``: layer-wise learning-rate decay).

    Contract: :class:`mtbert.api.OptimizerGroups`; ``build()`` returns a
    :class:`mtbert.api.OptimizerGroupsState` whose ``apply(model, groups)`` receives the engine's AdamW parameter groups (dicts
    with ``params``, ``lr``, ``weight_decay`` and ``name``: ``encoder``, ``encoder-no-decay``,
    ``heads``, ``heads-no-decay``, ``combiner``) and returns the groups to use: split, with
    other learning rates or weight decay, but holding every parameter exactly once. The
    learning-rate schedule scales each group's own rate. A recipe lists them under
    ``[[optimizer_groups]]``; they apply in order.
    """


@hookspec
def mtbert_register_weight_averages(register: Register) -> None:
    """Register weight averages evaluated in place of the trained weights (``ema``).

    Contract: :class:`mtbert.api.WeightAverage`; ``build(model)`` returns a
    :class:`mtbert.api.WeightAverageState` with ``update(model)`` (after every optimizer step), ``weights()`` (the
    averaged value of each parameter it averages, by ``model.named_parameters()`` name),
    ``state_dict()``/``load_state_dict()``. At every evaluation the engine puts the averaged
    weights into the model, evaluates, keeps them as the best checkpoint when they are the best,
    and puts the trained weights back before training (and ``--resume``) continues. A recipe
    names one: ``weight_average = { name = "ema", decay = 0.999 }``.
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
    """Dev metrics were computed after an epoch (keys as in README.md: ``sst_acc`` ...).

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
