"""The public module for plugin authors: everything a plugin imports from mtbert, in one place.

A plugin (mtbert's builtins in ``plugins/`` included) imports only from here, so mtbert can
move its own modules without breaking anyone: the names below are stable within a minor
version (see "Versioning against mtbert" in CONTRIBUTING.md). The contract each component kind
keeps is the Protocol of that kind below (:class:`Head`, :class:`Sampler`, ...), defined in
:mod:`mtbert.engine.components`; the test kit is :mod:`mtbert.testing`.
"""

from __future__ import annotations

from mtbert import hookimpl
from mtbert.data.tasks import TaskSpec
from mtbert.engine.batches import pack_batches, plan_batches, unpack_batches
from mtbert.engine.components import (
    Batch,
    ChecksTasks,
    Combined,
    EncodedExamples,
    Features,
    GradientNeeds,
    GradientTransform,
    GradientTransformState,
    Head,
    HeadModule,
    InputFormat,
    LossCombiner,
    LossCombinerState,
    OptimizerGroups,
    OptimizerGroupsState,
    PenaltyContext,
    Regularizer,
    RegularizerState,
    Sampler,
    SamplerState,
    Stage,
    StatelessCombiner,
    StepMode,
    WeightAverage,
    WeightAverageState,
)
from mtbert.engine.device import autocast, use_fused_adamw
from mtbert.engine.distributed import reduce_mean, reduce_sum, world_size
from mtbert.engine.encoding import batch_labels, encode_apart, encode_sentence_pairs, run_encoder, sequence_inputs
from mtbert.engine.heads import (
    Activation,
    PairPart,
    Pooling,
    TaskHeadModule,
    activation_module,
    build_mlp,
    check_class_weights,
    check_dropout,
    check_pair_views,
    dropout_list,
    input_width,
    masked_mean,
    pair_features,
    pool,
    pooled_input,
)
from mtbert.engine.optim import adamw, build_scheduler, decay_groups, lr_lambda
from mtbert.engine.progress import Progress
from mtbert.engine.sampling import (
    ORDER_HELP,
    EqualCountSampler,
    Order,
    SeededSampler,
    cycled_steps,
    largest_remainder,
    one_task_only,
    one_task_plan,
    unknown_task,
    unconfigured_task,
)
from mtbert.engine.seeding import RandomState, derive_seed
from mtbert.engine.trainer import MultitaskTrainer
from mtbert.errors import CheckpointError, DataError, MtbertError, RecipeError, RunInterrupted
from mtbert.metrics import confusion_matrix
from mtbert.model.backbone import CheckpointSpec
from mtbert.model.bert import hidden_activation
from mtbert.model.mlm import IGNORE_INDEX, MaskedLMHead, mask_tokens, tokenize_unique
from mtbert.model.tokenizer import BertTokenizer, pad_batch
from mtbert.recipe import flatten_recipe, load_recipe
from mtbert.schema import did_you_mean, option

__all__ = [
    # registering components
    "hookimpl", "option", "did_you_mean", "TaskSpec", "CheckpointSpec",
    # the contracts (Protocols) and what flows between engine and plugins
    "InputFormat", "Head", "HeadModule", "ChecksTasks", "Sampler", "SamplerState", "LossCombiner", "LossCombinerState",
    "GradientTransform", "GradientTransformState", "Regularizer", "RegularizerState", "Stage",
    "OptimizerGroups", "OptimizerGroupsState", "WeightAverage", "WeightAverageState",
    "Batch", "EncodedExamples", "Features", "Combined", "PenaltyContext", "RandomState", "StepMode", "GradientNeeds",
    "StatelessCombiner",
    # input formats and heads
    "pad_batch", "batch_labels", "sequence_inputs", "run_encoder", "encode_sentence_pairs", "encode_apart", "BertTokenizer", "TaskHeadModule", "Pooling", "PairPart", "Activation", "pool", "masked_mean",
    "pair_features", "pooled_input", "input_width", "activation_module", "build_mlp", "dropout_list",
    "check_dropout", "check_class_weights", "check_pair_views",
    # samplers
    "SeededSampler", "EqualCountSampler", "Order", "ORDER_HELP", "one_task_plan", "cycled_steps",
    "largest_remainder", "unknown_task", "unconfigured_task", "one_task_only",
    # data parallelism
    "reduce_sum", "reduce_mean", "world_size",
    # stages
    "MultitaskTrainer", "RunInterrupted", "lr_lambda", "autocast", "use_fused_adamw", "derive_seed", "Progress",
    "hidden_activation", "adamw", "build_scheduler", "decay_groups", "plan_batches", "pack_batches", "unpack_batches",
    "IGNORE_INDEX", "MaskedLMHead", "mask_tokens", "tokenize_unique",
    # errors, evaluation, and recipes (to test a recipe that uses the plugin)
    "MtbertError", "RecipeError", "DataError", "CheckpointError", "confusion_matrix", "load_recipe",
    "flatten_recipe",
]
