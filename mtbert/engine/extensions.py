"""The engine's side of two extension points: optimizer parameter groups and weight averages.

* ``[[optimizer_groups]]`` components rewrite the AdamW parameter groups
  :func:`mtbert.engine.trainer.build_optimizer` makes (layer-wise learning-rate decay splits the
  encoder's groups by layer). :func:`apply_groups` runs them in order and checks that every
  trainable parameter is still in exactly one group, so a rule cannot silently drop or train a
  parameter twice.
* A ``weight_average`` component keeps an average of the weights (an exponential moving
  average); :func:`averaged_weights` puts it into the model for an evaluation, so the dev
  scores, the best checkpoint and the predictions are the averaged model's, and puts the
  trained weights back afterwards, so training and ``--resume`` continue from them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from mtbert.errors import MtbertError


def apply_groups(model: Any, groups: list[dict[str, Any]], specs: list[Any]) -> list[dict[str, Any]]:
    """The groups after every ``[[optimizer_groups]]`` rule; an error naming the rule that broke them."""
    before = [p for g in groups for p in g["params"]]
    for index, spec in enumerate(specs):
        groups = spec.options.build().apply(model, [dict(g) for g in groups])
        after = [p for g in groups for p in g["params"]]
        if len(after) != len(before) or {id(p) for p in after} != {id(p) for p in before}:
            raise MtbertError(f"optimizer_groups[{index}] '{spec.name}' ({spec.component.provider}) returned groups that "
                              "do not hold every trainable parameter exactly once")
        for group in groups:
            if not group["params"]:
                raise MtbertError(f"optimizer_groups[{index}] '{spec.name}' returned an empty parameter group")
    return groups


@contextlib.contextmanager
def averaged_weights(model: torch.nn.Module, average: Any | None) -> Iterator[None]:
    """Within the block the model holds the averaged weights; the trained ones are restored after."""
    if average is None:
        yield
        return
    params = dict(model.named_parameters())
    weights = average.weights()
    unknown = [n for n in weights if n not in params]
    if unknown:
        raise MtbertError(f"weight_average: weights() names parameters the model does not have: {', '.join(unknown[:3])}")
    trained = {n: params[n].detach().clone() for n in weights}
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in trained.items():
                params[name].copy_(value)
