"""The multitask model: one shared encoder, one head per task.

The engine owns the partition of parameters: ``shared_parameters()`` are the encoder's (what
gradient transforms such as PCGrad see); everything else (the heads) is task-specific.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from mtbert.engine.components import Batch, Features


class MultitaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, heads: dict[str, nn.Module], input_formats: dict[str, Any]):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)
        self.input_formats = dict(input_formats)  # plain objects, not modules

    def features(self, batch: Batch, inputs_embeds: tuple[torch.Tensor, ...] | None = None) -> Features:
        return self.input_formats[batch.task].encode(self.encoder, batch, inputs_embeds=inputs_embeds)

    def forward(self, batch: Batch, inputs_embeds: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """Predictions of the batch's task head (logits or scores).

        ``inputs_embeds`` gives, per encoded sequence of the batch, word embeddings to use
        instead of the lookup (position and segment embeddings are still added once).
        """
        return self.heads[batch.task](self.features(batch, inputs_embeds))

    def sequences(self, batch: Batch) -> list[dict[str, torch.Tensor]]:
        """The encoder inputs of each sequence of the batch (one, or two for separate pairs)."""
        return self.input_formats[batch.task].sequences(batch)

    def word_embeddings(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """Word-embedding lookups of each sequence (what SMART perturbs)."""
        return tuple(self.encoder.embed_words(s["input_ids"]) for s in self.sequences(batch))

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def freeze_encoder(self) -> None:
        """``pretrain`` mode: the encoder is fixed, only heads learn (dropout still applies)."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)


def weights_sha1(model: nn.Module) -> str:
    """A hash of a model's parameters and buffers (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def build_model(recipe: Any, encoder: Any) -> MultitaskModel:
    """The recipe's model: ``encoder`` and a head per task, each task with its input format."""
    heads = {
        name: task_recipe.head.options.build(encoder.config.hidden_size, task_recipe.spec, task_recipe.input.options)
        for name, task_recipe in recipe.tasks.items()
    }
    formats = {name: task_recipe.input.options for name, task_recipe in recipe.tasks.items()}
    return MultitaskModel(encoder, heads, formats)
