"""A validated recipe: its sections and every component resolved to a registry entry and options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import tomli_w

from mtbert.plugins import Component
from mtbert.recipe.sections import DATA_DIR_ENV, DataSection, ModelSection, OptimSection, TaskSection, TrainSection
from mtbert.schema import unstructure


@attrs.define
class ComponentSpec:
    """A resolved component reference: the registry entry and its validated options."""

    kind: str
    name: str
    options: Any
    component: Component

    def to_toml(self) -> dict[str, Any]:
        return {"name": self.name, **unstructure(self.options)}


@attrs.define
class TaskRecipe:
    name: str
    spec: Any  # mtbert.data.tasks.TaskSpec
    section: TaskSection
    input: ComponentSpec
    head: ComponentSpec


@attrs.define
class Recipe:
    """A validated recipe with every component resolved."""

    name: str
    seed: int
    description: str
    requires: list[str]
    model: ModelSection
    data: DataSection
    optim: OptimSection
    train: TrainSection
    tasks: dict[str, TaskRecipe]
    sampler: ComponentSpec
    loss_combiner: ComponentSpec
    gradient_transforms: list[ComponentSpec]
    regularizers: list[ComponentSpec]
    stages: list[ComponentSpec]
    source: str = ""
    optimizer_groups: list[ComponentSpec] = attrs.field(factory=list)
    weight_average: ComponentSpec | None = None

    def data_dir(self) -> Path:
        return Path(self.data.dir or os.environ.get(DATA_DIR_ENV) or "data")

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe (includes, overrides and defaults applied)."""
        out: dict[str, Any] = {"name": self.name, "seed": self.seed}
        if self.description:
            out["description"] = self.description
        if self.requires:
            out["requires"] = list(self.requires)
        out["model"] = unstructure(self.model)
        out["data"] = unstructure(self.data)
        out["tasks"] = {
            name: {**unstructure(t.section), "input": t.input.to_toml(), "head": t.head.to_toml()}
            for name, t in self.tasks.items()
        }
        out["sampler"] = self.sampler.to_toml()
        out["loss_combiner"] = self.loss_combiner.to_toml()
        out["gradient_transforms"] = [c.to_toml() for c in self.gradient_transforms]
        out["regularizers"] = [c.to_toml() for c in self.regularizers]
        out["stages"] = [c.to_toml() for c in self.stages]
        if self.optimizer_groups:
            out["optimizer_groups"] = [c.to_toml() for c in self.optimizer_groups]
        if self.weight_average is not None:
            out["weight_average"] = self.weight_average.to_toml()
        out["optim"] = unstructure(self.optim)
        out["train"] = unstructure(self.train)
        return out

    def to_toml(self) -> str:
        header = "# Resolved by mtbert: includes, --set overrides and defaults applied.\n"
        return header + tomli_w.dumps(self.to_dict())
