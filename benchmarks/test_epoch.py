"""(e) One epoch of the baseline recipe on slices: fixed-length padding vs dynamic padding + buckets.

Both runs are ``recipes/baseline.toml`` (MiniLM-L6, linear heads, round-robin sampling
down-sampled to the smallest task, summed losses, fused AdamW) on random training slices of
64 rows per task with ``data.max_length = 64``; they differ only in batching:

* reference: ``data.padding = "max_length"``, ``data.bucket = false``, ``model.unpad = "never"``:
  every batch padded to 64 tokens and every position computed, as a fixed-length pipeline (the
  CS224N skeleton's ``padding="max_length"``) does;
* candidate: ``data.padding = "dynamic"``, ``data.bucket = true`` (the defaults): each batch
  padded to its longest sequence, examples of similar length batched together.

``test_padding_efficiency_of_a_baseline_epoch``: real tokens over the positions the encoder's
token-wise layers compute, over one epoch of ``recipes/baseline.toml`` on the FULL training
data (the sampler's plan: 378 batches of 16 per task), with the defaults (dynamic padding,
length buckets, ``model.unpad = "auto"``). Its "ratio" is computed positions per real token
(1.0 = no padding computed); **target: padding efficiency >= 90%**, ratio <= 1.11.
``batch_fill`` is the share of real tokens in the padded batches (bucketing, and for pairs the
stacking of both sentences into one encoder call). Both count the masks the encoder itself
receives in a training forward (each input format's ``encode`` called with a recorder in place
of the encoder).

One round is one full epoch of training steps (the sampler's plan: 4 batches of 16 per task,
12 steps), without the dev evaluation. **Target: >= 2x faster**, time ratio <= 0.5 (real
sentences fill about 40% of 64 tokens). bf16 autocast on CUDA. ``padding_fraction`` in
extra_info is the share of padded positions each variant fed the encoder.
"""

from __future__ import annotations

from pathlib import Path

import torch

import _engine
from _bench import measure

REPO_ROOT = Path(__file__).resolve().parent.parent

LIMIT = 64


def _overrides(data_dir, device: torch.device, fixed: bool) -> list[str]:
    out = [
        f'data.dir="{data_dir}"',
        "data.max_length=64",
        "data.cache=false",
        f"data.padding={'max_length' if fixed else 'dynamic'}",
        f"data.bucket={'false' if fixed else 'true'}",
        f"model.unpad={'never' if fixed else 'auto'}",
        "optim.epochs=1",
        f"train.device={device.type}",
        f"train.precision={'bf16' if device.type == 'cuda' else 'fp32'}",
        "train.progress=false",
        "train.predict=false",
    ]
    for task in ("sst", "para", "sts"):
        out += [f"tasks.{task}.train_limit={LIMIT}", f"tasks.{task}.dev_limit=8", f"tasks.{task}.test_limit=8"]
    return out


class _MaskRecorder(torch.nn.Module):
    """Stands in for the encoder: records the attention masks of every call, returns zeros.

    An input format's ``encode`` calls it exactly as training calls the real encoder (pairs
    stacked into one call when gradients are on), so the masks are the ones the encoder sees.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.masks: list[torch.Tensor] = []

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, *, inputs_embeds=None):
        from mtbert.model.bert import EncoderOutput

        self.masks.append(attention_mask)
        B, T = attention_mask.shape
        return EncoderOutput(last_hidden_state=torch.zeros(B, T, self.hidden), pooler_output=torch.zeros(B, self.hidden))


def _encoder_masks(trainer, batches) -> list[tuple[str, torch.Tensor]]:
    """(task, attention mask) of every encoder call a training forward makes on ``batches``,
    given as (task, batch) pairs."""
    recorder = _MaskRecorder(trainer.run.model.encoder.config.hidden_size)
    out: list[tuple[str, torch.Tensor]] = []
    with torch.enable_grad():
        for task, batch in batches:
            recorder.masks.clear()
            trainer.run.model.input_formats[task].encode(recorder, batch)
            out += [(task, mask) for mask in recorder.masks]
    return out


def _one_pass(trainer):
    """Every batch of one pass over each task's stream, the streams left where they were."""
    for name, stream in trainer.streams.items():
        state = stream.state_dict()
        for _ in range(len(stream)):
            yield name, stream.next_batch()
        stream.load_state_dict(state)


def _padding_fraction(trainer) -> float:
    """Share of padding among the positions the encoder sees in one pass over each task."""
    masks = [mask for _, mask in _encoder_masks(trainer, _one_pass(trainer))]
    return 1.0 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def test_epoch_dynamic_vs_fixed_padding(benchmark, device, plugins, data_dir, minilm_dir, tmp_path):
    recipe_path = REPO_ROOT / "recipes" / "baseline.toml"
    fixed = _engine.build_trainer(_engine.recipe_file(recipe_path, plugins, _overrides(data_dir, device, True)),
                                  plugins, tmp_path / "fixed")
    dynamic = _engine.build_trainer(_engine.recipe_file(recipe_path, plugins, _overrides(data_dir, device, False)),
                                    plugins, tmp_path / "dynamic")
    assert fixed.steps_per_epoch == dynamic.steps_per_epoch
    info = {"train_rows_per_task": LIMIT, "max_length": 64, "steps_per_epoch": dynamic.steps_per_epoch,
            "padding_fraction_fixed": _padding_fraction(fixed), "padding_fraction_dynamic": _padding_fraction(dynamic)}
    epochs = {"fixed": 0, "dynamic": 0}

    def epoch(trainer, name):
        def fn():
            _engine.one_epoch(trainer, epochs[name])
            epochs[name] += 1
        return fn

    measure(benchmark, epoch(dynamic, "dynamic"), device=device, reference=epoch(fixed, "fixed"),
            reference_name="fixed-length padding to 64, no buckets", target_max_ratio=0.5,
            target="dynamic + buckets >= 2x faster (time ratio <= 0.5)", group="epoch-padding", info=info)


def test_padding_efficiency_of_a_baseline_epoch(benchmark, plugins, data_dir, minilm_dir, tmp_path):
    overrides = [f'data.dir="{data_dir}"', "train.device=cpu", "train.progress=false", "train.predict=false"]
    recipe = _engine.recipe_file(REPO_ROOT / "recipes" / "baseline.toml", plugins, overrides)
    trainer = _engine.build_trainer(recipe, plugins, tmp_path / "baseline")
    encoder = trainer.run.model.encoder
    counts: dict[str, dict[str, int]] = {}

    def count() -> None:
        counts.clear()
        plan = trainer.sampler.epoch(0)[: trainer.steps_per_epoch]
        batches = ((task, trainer.streams[task].next_batch()) for tasks in plan for task in tasks)
        for task, mask in _encoder_masks(trainer, batches):
            packing = encoder.packing(mask)
            row = counts.setdefault(task, {"real": 0, "positions": 0, "computed": 0})
            row["real"] += int(mask.sum())
            row["positions"] += mask.numel()
            row["computed"] += packing.index.numel() if packing is not None else mask.numel()

    benchmark.group = "epoch-padding"
    benchmark.pedantic(count, rounds=1, iterations=1)
    real = sum(r["real"] for r in counts.values())
    computed = sum(r["computed"] for r in counts.values())
    positions = sum(r["positions"] for r in counts.values())
    ratio = computed / real
    benchmark.extra_info.update(
        device="cpu", ratio=ratio, ratio_vs="real tokens (computed positions per real token)",
        target_max_ratio=1 / 0.9, target="padding efficiency >= 90% (ratio <= 1.11)", target_met=ratio <= 1 / 0.9,
        padding_efficiency=real / computed, batch_fill=real / positions, unpad=recipe.model.unpad,
        per_task={t: {**r, "padding_efficiency": r["real"] / r["computed"], "batch_fill": r["real"] / r["positions"]}
                  for t, r in counts.items()},
        steps=trainer.steps_per_epoch,
    )
    _engine.release(trainer)
