"""Recipes: TOML files that compose plugins and hyperparameters.

``load_recipe(path, overrides)`` reads the file with :mod:`tomllib`, applies ``include``
(recipes compose; the including file wins), then ``--set key.path=value`` overrides, then
validates everything (sections, task names, every component name and every component option)
before any work starts. All problems are collected and raised together as a
:class:`~mtbert.errors.RecipeError`, each line naming the file (and line when it can be
found), the key path, the value and what is allowed.

Component references (``head``, ``input``, ``sampler``, ``loss_combiner``,
``[[gradient_transforms]]``, ``[[regularizers]]``, ``[[stages]]``) are either a name or a table
``{ name = "...", <options> }``; options are checked against the component's attrs class.

Rooms: ``sections`` (the reference of every key), ``reading`` (files, includes, ``--set``),
``resolve`` (component references), ``validate`` (the named checks), ``resolved`` (the
validated :class:`Recipe`), ``keys`` (recipes as dotted keys) and ``sweep_table`` (the
``[sweep]`` table).
"""

from __future__ import annotations

from mtbert.recipe.keys import LABEL_KEYS, NEUTRAL_KEYS, RESULT_NEUTRAL_KEYS, changed_keys, flatten_recipe
from mtbert.recipe.reading import (
    apply_override, apply_overrides, key_label, locate, merge_tables, override_key, parse_override, read_with_includes,
    split_key, with_includes,
)
from mtbert.recipe.resolve import resolve_component
from mtbert.recipe.resolved import ComponentSpec, Recipe, TaskRecipe
from mtbert.recipe.sections import (
    DATA_DIR_ENV, TOP_LEVEL, DataSection, ModelSection, OptimSection, TaskSection, TrainSection,
)
from mtbert.recipe.sweep_table import check_sweep_table
from mtbert.recipe.validate import load_recipe, validate

__all__ = [
    "DATA_DIR_ENV", "LABEL_KEYS", "NEUTRAL_KEYS", "RESULT_NEUTRAL_KEYS", "TOP_LEVEL", "ComponentSpec", "DataSection", "ModelSection", "OptimSection",
    "Recipe", "TaskRecipe", "TaskSection", "TrainSection", "apply_override", "apply_overrides", "changed_keys",
    "check_sweep_table", "flatten_recipe", "key_label", "load_recipe", "locate",
    "merge_tables", "override_key", "parse_override", "read_with_includes", "resolve_component", "split_key",
    "validate", "with_includes",
]
