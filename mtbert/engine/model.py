"""The multitask model: one shared encoder, one head per task.

The engine owns the partition of parameters: ``shared_parameters()`` are the encoder's (what
gradient transforms such as PCGrad see), ``head_parameters()`` the task-specific heads'.
"""

from __future__ import annotations

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

    def head_parameters(self, task: str | None = None) -> list[nn.Parameter]:
        heads = [self.heads[task]] if task is not None else list(self.heads.values())
        return [p for head in heads for p in head.parameters() if p.requires_grad]

    def freeze_encoder(self) -> None:
        """``pretrain`` mode: the encoder is fixed, only heads learn (dropout still applies)."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)
