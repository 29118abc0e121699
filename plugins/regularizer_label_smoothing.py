"""The ``label-smoothing`` regularizer: train classification heads on smoothed targets.

Szegedy, Vanhoucke, Ioffe, Shlens and Wojna (2016), "Rethinking the Inception Architecture"
(section 7); Müller, Kornblith and Hinton (2019), "When Does Label Smoothing Help?". The
one-hot target becomes ``(1 - epsilon) * onehot + epsilon / C``; cross-entropy is linear in
the target, so the smoothed loss is the plain one plus a term, which this regularizer adds:

    multiclass:  CE_smooth = (1 - eps) CE + eps * mean_c(-log p_c)
                 penalty   = eps * (mean_c(-log p_c) - CE)
    binary:      BCE with target (1 - eps) y + eps / 2
                 penalty   = eps * (BCE(z, 1/2) - BCE(z, y))

(``CE`` is the head's own loss, ``context.loss``), so ``loss + penalty`` equals
``torch.nn.functional.cross_entropy(..., label_smoothing=eps)`` exactly for unweighted heads.
SST's five classes are ordinal and noisy (neighbouring classes are often confused by
annotators), the setting where smoothing is reported to help calibration and accuracy.
Regression tasks are left alone.

Options: ``epsilon`` (default 0.1, the usual value), ``tasks`` (default: every classification task).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F

from mtbert.api import hookimpl, option, unconfigured_task


def smoothing_term(label_kind: str, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss against the uniform target: mean_c(-log p_c) (multiclass) or BCE(z, 1/2) (binary)."""
    z = predictions.float()
    if label_kind == "multiclass":
        return -F.log_softmax(z, dim=-1).mean(dim=-1).mean()
    return F.binary_cross_entropy_with_logits(z.reshape(-1), torch.full_like(z.reshape(-1), 0.5))


class LabelSmoothingState:
    def __init__(self, options: "LabelSmoothing"):
        self.options = options

    def setup(self, model: Any) -> None:
        pass

    def penalty(self, context: Any) -> torch.Tensor | None:
        opts = self.options
        head = context.model.heads[context.task]
        if head.label_kind not in ("multiclass", "binary") or (opts.tasks is not None and context.task not in opts.tasks):
            return None
        with torch.autocast(device_type=context.predictions.device.type, enabled=False):
            uniform = smoothing_term(head.label_kind, context.predictions, context.batch.labels)
            term = opts.epsilon * (uniform - context.loss.float())
        return term

    def logs(self) -> dict[str, float]:
        return {}  # the engine logs each task's term as train/<name>/<task>


@attrs.define
class LabelSmoothing:
    """Label smoothing for classification tasks: targets (1 - eps) onehot + eps / C (Szegedy et al. 2016)."""

    epsilon: float = option(0.1, help="probability mass spread uniformly over the classes", min=0, max=1)
    tasks: list[str] | None = option(None, help="classification tasks to smooth (default: every classification task)")

    def check_tasks(self, task_names: list[str]) -> str | None:
        return unconfigured_task(self.tasks, task_names)

    def build(self) -> LabelSmoothingState:
        return LabelSmoothingState(self)


@hookimpl
def mtbert_register_regularizers(register):
    register("label-smoothing", LabelSmoothing)
