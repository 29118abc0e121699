"""The ``llrd`` optimizer-groups rule: layer-wise learning-rate decay.

Howard and Ruder (2018, "discriminative fine-tuning", ULMFiT) and Clark et al. (2020, ELECTRA),
studied for BERT fine-tuning by Sun et al. (2019, "How to Fine-Tune BERT for Text
Classification") and Zhang et al. (2021, "Revisiting Few-sample BERT Fine-tuning"): lower
layers hold general features that fine-tuning should move less, so each layer's learning rate
is the one above it times ``decay``. With ``L`` encoder layers, layer ``l`` (0 = the lowest)
trains at ``lr * decay ** (L - l)``, the embeddings at ``lr * decay ** (L + 1)``, and the top —
BERT's pooler and everything outside the encoder (heads, a loss combiner's weights) — at its
own rate, unchanged. The engine's learning-rate schedule (warm-up, decay) scales every group's
rate, so the ratios hold throughout training. Weight decay and the no-decay split of biases and
LayerNorm weights are kept: each encoder group is split by layer, nothing else changes.

Options: ``decay`` (default 0.9; Sun et al. found 0.95 best for BERT-base's 12 layers, ELECTRA
used 0.8 for base models; MiniLM-L6 has 6 layers, so 0.9 gives its embeddings 0.48x the top
rate, about what 0.95 gives a 12-layer model).
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from mtbert import hookimpl
from mtbert.schema import option

_LAYER = re.compile(r"^layers\.(\d+)\.")


def layer_id(name: str, layers: int) -> int:
    """0 for the embeddings, l + 1 for encoder layer l, layers + 1 for the pooler (and the top)."""
    match = _LAYER.match(name)
    if match:
        return int(match.group(1)) + 1
    if name.startswith("pooler"):
        return layers + 1
    return 0


class LayerwiseDecay:
    def __init__(self, options: "Llrd"):
        self.options = options

    def apply(self, model: Any, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Split every group of encoder parameters by layer; rates ``lr * decay ** (L + 1 - id)``."""
        encoder = model.encoder
        layers = len(encoder.layers)
        names = {id(p): n for n, p in encoder.named_parameters()}
        out: list[dict[str, Any]] = []
        for group in groups:
            inside = [p for p in group["params"] if id(p) in names]
            if not inside:
                out.append(group)
                continue
            by_layer: dict[int, list[Any]] = {}
            for p in inside:
                by_layer.setdefault(layer_id(names[id(p)], layers), []).append(p)
            outside = [p for p in group["params"] if id(p) not in names]
            if outside:  # a group mixing encoder and other parameters: the others keep the group's rate
                out.append({**group, "params": outside})
            for layer in sorted(by_layer, reverse=True):  # the top first: param_groups[0] keeps the base rate
                scale = self.options.decay ** (layers + 1 - layer)
                out.append({**group, "params": by_layer[layer], "lr": float(group["lr"]) * scale,
                            "name": f"{group.get('name', 'group')}-layer{layer}"})
        return out


@attrs.define
class Llrd:
    """Layer-wise learning-rate decay: each encoder layer trains at decay x the rate of the layer above."""

    decay: float = option(0.9, help="factor per layer from the top down (the embeddings get decay ** (layers + 1))",
                          min=0, max=1, min_exclusive=True)

    def build(self) -> LayerwiseDecay:
        return LayerwiseDecay(self)


@hookimpl
def mtbert_register_optimizer_groups(register):
    register("llrd", Llrd)
