"""The ``mlm`` stage: in-domain masked-language-model pretraining before multitask training.

Continued pretraining on the task's own text ("task-adaptive pretraining", Gururangan et al.
2020, "Don't Stop Pretraining: Adapt Language Models to Domains and Tasks") with BERT's
masked-LM objective (:mod:`mtbert.model.mlm`: the masking and the MLM head). A recipe chains
it before the multitask stage::

    [[stages]]
    name = "mlm"
    tasks = ["sst"]
    epochs = 2

    [[stages]]
    name = "multitask"

The text: every training sentence of the chosen tasks (``tasks``, default all of the recipe's),
both sentences of a pair as separate texts, after the recipe's ``train_limit`` slices, exactly
duplicated sentences kept once (Quora repeats its questions), each ``[CLS] s [SEP]`` truncated
to ``max_length`` (default ``data.max_length``).

The MLM head (:class:`~mtbert.model.mlm.MaskedLMHead`, the checkpoint's own when it carries
one) is trained with the encoder and discarded at the end of the stage; the encoder is trained
in place.

Optimisation: AdamW (``lr`` 5e-5, ``weight_decay`` 0.01, none on biases and LayerNorm
weights), linear warm-up over ``warmup`` (6%) of the steps then linear decay to 0, gradient
norm clipped to ``clip_norm`` (1.0); ``epochs`` 1 and ``batch_size`` 32 by default,
``max_steps`` stops earlier. Batches come from the stage's own seeded generator (length
bucketing as ``data.bucket`` says), which also draws the masks; dropout uses torch's global
generator. Everything (position, plan, optimizer, schedule, MLM head, generators) goes into
``checkpoints/last`` so ``--resume`` continues mid-stage exactly.

Logged: TensorBoard ``mlm/loss``, ``mlm/accuracy`` (masked-token accuracy), ``mlm/lr`` every
``train.log_every`` steps, ``mlm/dev_loss`` and ``mlm/dev_accuracy`` after each epoch on up to
``dev_sentences`` dev sentences of the same tasks (masked with a fixed seed, so epochs compare),
and one console line per epoch. Steps count in ``run.global_step`` like multitask steps.
"""

from __future__ import annotations

import math
import time
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mtbert.api import (
    IGNORE_INDEX, BertTokenizer, CheckpointError, MaskedLMHead, MtbertError, Progress, RunInterrupted, adamw, autocast,
    build_scheduler, decay_groups, derive_seed, hookimpl, mask_tokens, option, pack_batches, pad_batch, plan_batches,
    tokenize_unique, unpack_batches,
)

# --------------------------------------------------------------------------- data
def training_texts(run: Any, tasks: list[str], split: str = "train") -> list[str]:
    """Every sentence of the tasks' ``split`` (both of a pair), each distinct text once, in order."""
    seen: set[str] = set()
    texts: list[str] = []
    for name in tasks:
        task = run.tasks.get(name)
        if task is None:
            raise MtbertError(f"mlm stage: task '{name}' is not part of this run")
        data = task.splits.get(split)
        if data is None:
            if split == "train":
                raise MtbertError(f"mlm stage: task '{name}' has no training data loaded")
            continue
        for example in data.examples:
            for text in example.texts:
                if text not in seen:
                    seen.add(text)
                    texts.append(text)
    return texts


# --------------------------------------------------------------------------- the trainer
class MaskedLMTrainer:
    """One ``mlm`` stage: trains ``run.model.encoder`` with a temporary MLM head."""

    def __init__(self, options: "MaskedLM", run: Any, index: int, label: str):
        self.options = options
        self.run = run
        self.stage_index = index
        self.stage_name = label
        self.device = run.device
        recipe = run.recipe
        self.encoder = run.model.encoder
        if not any(p.requires_grad for p in self.encoder.parameters()):
            raise MtbertError("mlm stage: the encoder is frozen (model.mode = \"pretrain\"); the mlm stage needs "
                              "model.mode = \"finetune\"")
        self.tokenizer: BertTokenizer = run.backbone.tokenizer
        self.tasks = list(options.tasks) if options.tasks else list(recipe.tasks)
        max_length = options.max_length or recipe.data.max_length
        self.sequences = tokenize_unique(self.tokenizer, training_texts(run, self.tasks), max_length)
        if not self.sequences:
            raise MtbertError(f"mlm stage: the training data of {', '.join(self.tasks)} has no sentence to mask")
        self.lengths = [len(s) for s in self.sequences]
        self.bucket = bool(recipe.data.bucket)
        self.dev_sequences = self._dev_sequences(max_length, derive_seed(recipe.seed, "mlm-dev-sample", index))
        self.dev_seed = derive_seed(recipe.seed, "mlm-dev-mask", index)
        self.vocab_size = int(self.encoder.word_embeddings.num_embeddings)
        self.special_ids = torch.tensor(sorted(self.tokenizer.special_ids), dtype=torch.long)

        self.head = MaskedLMHead(self.encoder)
        extra = getattr(run.backbone, "extra_state", None) or {}
        message = self.head.load_pretrained(extra)
        if message is None:
            message = "mlm: a new MLM head (transform initialised as BERT's), decoder tied to the word embeddings"
        run.say(message)
        self.head.to(self.device)

        self.generator = torch.Generator()
        self.generator.manual_seed(derive_seed(recipe.seed, "mlm", index))

        self.parameters = self._parameters()
        groups = decay_groups(self.parameters, options.lr, options.weight_decay, "mlm")
        self.optimizer = adamw(groups, self.device, recipe.optim.betas, recipe.optim.eps, lr=options.lr)
        self.steps_per_epoch = math.ceil(len(self.sequences) / options.batch_size)
        self.total_steps = self.steps_per_epoch * options.epochs
        if options.max_steps is not None:
            self.total_steps = min(self.total_steps, options.max_steps)
        self.scheduler = build_scheduler(self.optimizer, "linear-warmup", self.total_steps, options.warmup)

        self.epoch = 0
        self.position = 0
        self.step = 0
        self.plan: list[list[int]] | None = None
        self.done = False
        self.epoch_sums = {"loss": 0.0, "correct": 0.0, "masked": 0.0}
        self.log_sums = {"loss": 0.0, "correct": 0.0, "masked": 0.0}
        self.summary: dict[str, float] = {}

    # ----------------------------------------------------------------- set-up helpers
    def _dev_sequences(self, max_length: int, seed: int) -> list[list[int]]:
        limit = self.options.dev_sentences
        if not limit:
            return []
        texts = training_texts(self.run, self.tasks, split="dev")
        if len(texts) > limit:
            generator = torch.Generator()
            generator.manual_seed(seed)
            chosen = sorted(torch.randperm(len(texts), generator=generator)[:limit].tolist())
            texts = [texts[i] for i in chosen]
        return tokenize_unique(self.tokenizer, texts, max_length)

    def _parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Encoder and MLM head parameters, the tied decoder weight once."""
        named: list[tuple[str, nn.Parameter]] = []
        seen: set[int] = set()
        for prefix, module in (("encoder", self.encoder), ("mlm_head", self.head)):
            for name, p in module.named_parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    named.append((f"{prefix}.{name}", p))
        return named

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"stage_index": self.stage_index, "stage": "mlm", "done": self.done,
                                 "step": self.step, "epoch": self.epoch}
        if self.done:
            state["summary"] = dict(self.summary)
            return state
        state.update({
            "position": self.position,
            "plan": None if self.plan is None else dict(zip(("order", "sizes"), pack_batches(self.plan))),
            "sentences": len(self.sequences),
            "epoch_sums": dict(self.epoch_sums),
            "log_sums": dict(self.log_sums),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "head": self.head.own_state(),
            "generator": self.generator.get_state(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        })
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("stage") != "mlm":
            raise CheckpointError(f"mlm stage {self.stage_index}: the saved state is not an mlm stage's")
        if state["sentences"] != len(self.sequences):
            raise CheckpointError(f"mlm stage: the saved state has {state['sentences']} sentences, the data now "
                                  f"{len(self.sequences)}; the training data changed since the run started")
        self.step, self.epoch, self.position = int(state["step"]), int(state["epoch"]), int(state["position"])
        plan = state["plan"]
        self.plan = None if plan is None else unpack_batches(plan["order"], plan["sizes"])
        self.epoch_sums = {k: float(v) for k, v in state["epoch_sums"].items()}
        self.log_sums = {k: float(v) for k, v in state["log_sums"].items()}
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.head.load_own_state(state["head"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    # ----------------------------------------------------------------- one batch
    def _batch(self, sequences: list[list[int]], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        inputs = pad_batch(sequences, pad_id=self.tokenizer.pad_id)
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        special = torch.isin(ids, self.special_ids) | (attention == 0)
        masked, labels = mask_tokens(ids, special, self.vocab_size, self.tokenizer.mask_id, self.options.mask_prob,
                                     generator, mask_replace=self.options.mask_replace,
                                     random_replace=self.options.random_replace)
        non_blocking = self.device.type == "cuda"
        return (masked.to(self.device, non_blocking=non_blocking), attention.to(self.device, non_blocking=non_blocking),
                labels.to(self.device, non_blocking=non_blocking))

    def _loss(self, inputs: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor):
        """Summed cross-entropy over the masked positions, their correct predictions and count."""

        selected = labels != IGNORE_INDEX
        with autocast(self.device, self.run.precision.name):
            hidden = self.encoder(input_ids=inputs, attention_mask=attention).last_hidden_state
            logits = self.head(hidden[selected])
        target = labels[selected]
        logits = logits.float()
        loss_sum = F.cross_entropy(logits, target, reduction="sum")
        correct = (logits.detach().argmax(dim=-1) == target).sum()
        return loss_sum, correct, target.numel()

    @torch.no_grad()
    def evaluate_dev(self) -> dict[str, float]:
        """Masked-LM loss and accuracy on the dev sentences, masked the same way every time."""
        if not self.dev_sequences:
            return {}
        self.encoder.eval()
        self.head.eval()
        generator = torch.Generator()
        generator.manual_seed(self.dev_seed)
        size = self.run.recipe.data.eval_batch_size
        loss = correct = count = 0.0
        for start in range(0, len(self.dev_sequences), size):
            batch = self._batch(self.dev_sequences[start:start + size], generator)
            loss_sum, hits, n = self._loss(*batch)
            loss, correct, count = loss + float(loss_sum), correct + float(hits), count + n
        self.encoder.train()
        self.head.train()
        return {"dev_loss": loss / max(count, 1.0), "dev_accuracy": correct / max(count, 1.0)}

    # ----------------------------------------------------------------- the loop
    def _flush_logs(self) -> None:
        sums = self.log_sums
        if sums["masked"] and self.run.log is not None:
            self.run.log.scalars("mlm", {"loss": sums["loss"] / sums["masked"],
                                         "accuracy": sums["correct"] / sums["masked"],
                                         "lr": self.scheduler.get_last_lr()[0]}, self.run.global_step)
        self.log_sums = {"loss": 0.0, "correct": 0.0, "masked": 0.0}

    def _save_and_stop(self) -> None:
        self.run.save_last(self)
        raise RunInterrupted(self.run.interrupt_message())

    def train(self) -> dict[str, float]:
        run, options, recipe = self.run, self.options, self.run.recipe
        self.encoder.train()
        self.head.train()
        clip = options.clip_norm
        params = [p for _, p in self.parameters]
        while self.epoch < options.epochs and self.step < self.total_steps:
            if self.plan is None:
                self.plan = plan_batches(self.lengths, options.batch_size, self.generator, self.bucket)
                self.position = 0
                self.epoch_sums = {"loss": 0.0, "correct": 0.0, "masked": 0.0}
            steps = min(len(self.plan), self.position + self.total_steps - self.step)
            progress = Progress(steps, f"{self.stage_name} epoch {self.epoch + 1}/{options.epochs}",
                                enabled=recipe.train.progress, start=self.position)
            start_time = time.perf_counter()
            while self.position < len(self.plan) and self.step < self.total_steps:
                batch = self._batch([self.sequences[i] for i in self.plan[self.position]], self.generator)
                loss_sum, correct, count = self._loss(*batch)
                loss = loss_sum / max(count, 1)
                loss.backward()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                value, hits = float(loss_sum.detach()), float(correct)
                if not math.isfinite(value):
                    raise MtbertError(f"mlm stage: the loss became {value} at step {self.step + 1}; lower its lr")
                for sums in (self.epoch_sums, self.log_sums):
                    sums["loss"] += value
                    sums["correct"] += hits
                    sums["masked"] += count
                self.position += 1
                self.step += 1
                run.global_step += 1
                progress.update(1, loss=value / max(count, 1))
                logs = {"mlm/loss": value / max(count, 1), "mlm/accuracy": hits / max(count, 1),
                        "lr": self.scheduler.get_last_lr()[0]}
                run.hook.mtbert_on_step_end(run=run, step=run.global_step, logs=logs)
                if run.global_step % recipe.train.log_every == 0:
                    self._flush_logs()
                last_of_epoch = self.position >= len(self.plan) or self.step >= self.total_steps
                if not last_of_epoch:
                    if recipe.train.checkpoint_every and run.global_step % recipe.train.checkpoint_every == 0:
                        run.save_last(self)
                    if run.stop_requested:
                        progress.close()
                        self._save_and_stop()
            progress.close()
            self._flush_logs()
            self._end_epoch(time.perf_counter() - start_time)
            if run.stop_requested and self.epoch < options.epochs and self.step < self.total_steps:
                self._save_and_stop()
        return self._finish()

    def _end_epoch(self, seconds: float) -> None:
        run, sums = self.run, self.epoch_sums
        masked = max(sums["masked"], 1.0)
        metrics = {"loss": sums["loss"] / masked, "accuracy": sums["correct"] / masked}
        metrics.update(self.evaluate_dev())
        if run.log is not None:
            run.log.scalars("mlm", {k: v for k, v in metrics.items() if k.startswith("dev_")}, run.global_step)
        partial = "" if self.position >= len(self.plan) else f" (stopped at max_steps, {self.position}/{len(self.plan)} batches)"
        dev = (f"  dev loss {metrics['dev_loss']:.4f} acc {metrics['dev_accuracy']:.4f}"
               if "dev_loss" in metrics else "")
        run.say(f"[{self.stage_name} epoch {self.epoch + 1}] loss {metrics['loss']:.4f}  masked acc "
                f"{metrics['accuracy']:.4f}{dev}  ({len(self.sequences)} sentences, {int(sums['masked'])} masked "
                f"tokens, {seconds:.0f}s){partial}")
        self.summary = {f"mlm_{k}": v for k, v in metrics.items()}
        self.epoch += 1
        self.plan = None
        self.position = 0
        if self.epoch < self.options.epochs and self.step < self.total_steps and not run.stop_requested:
            run.save_last(self)  # (a requested stop saves in the loop, then raises)

    def _finish(self) -> dict[str, float]:
        """Discard the MLM head (the encoder keeps what it learnt) and record the stage as done."""
        self.done = True
        self.head = None
        self.optimizer = None
        self.scheduler = None
        self.run.save_last(self)
        return dict(self.summary)


# --------------------------------------------------------------------------- the options
@attrs.define
class MaskedLM:
    """In-domain masked-LM pretraining of the encoder on the tasks' training sentences (BERT's MLM)."""

    tasks: list[str] | None = option(None, help="tasks whose training sentences are used (default: every task of the recipe)")
    epochs: int = option(1, help="passes over the sentences", min=1)
    lr: float = option(5e-5, help="peak AdamW learning rate", min=0, min_exclusive=True)
    batch_size: int = option(32, help="sentences per step", min=1)
    max_length: int | None = option(None, help="longest token sequence kept (default: data.max_length)", min=8, max=512)
    mask_prob: float = option(0.15, help="probability that a token is selected for prediction", min=0, max=1,
                              min_exclusive=True)
    mask_replace: float = option(0.8, help="share of selected tokens replaced by [MASK]", min=0, max=1)
    random_replace: float = option(0.1, help="share of selected tokens replaced by a random token (the rest stay)",
                                   min=0, max=1)
    warmup: float = option(0.06, help="fraction of the steps with linear warm-up (then linear decay to 0)", min=0, max=1)
    weight_decay: float = option(0.01, help="AdamW weight decay (none on biases and LayerNorm)", min=0)
    clip_norm: float | None = option(1.0, help="clip the gradient norm to this (none: no clipping)", min=0,
                                     min_exclusive=True)
    max_steps: int | None = option(None, help="stop the stage after this many steps", min=1)
    dev_sentences: int = option(1000, help="dev sentences of the same tasks scored after each epoch (0: none)", min=0)

    def __attrs_post_init__(self) -> None:
        if self.mask_replace + self.random_replace > 1.0 + 1e-9:
            raise ValueError(f"mask_replace + random_replace must be at most 1, got "
                             f"{self.mask_replace} + {self.random_replace}")

    def run(self, run: Any, index: int, name: str, resume: dict[str, Any] | None) -> dict[str, float]:
        recipe = run.recipe
        label = name if len(recipe.stages) == 1 else f"{name}[{index}]"
        if resume is not None and resume.get("done"):
            run.say(f"{label}: finished before the interruption; the encoder's weights were restored")
            return dict(resume.get("summary") or {})
        trainer = MaskedLMTrainer(self, run, index, label)
        if resume is not None:
            trainer.load_state_dict(resume)
        return trainer.train()


@hookimpl
def mtbert_register_stages(register):
    register("mlm", MaskedLM)
