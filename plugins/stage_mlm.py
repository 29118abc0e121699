"""The ``mlm`` stage: in-domain masked-language-model pretraining before multitask training.

Continued pretraining on the task's own text ("task-adaptive pretraining", Gururangan et al.
2020, "Don't Stop Pretraining: Adapt Language Models to Domains and Tasks") with BERT's
masked-LM objective (Devlin, Chang, Lee & Toutanova 2019, "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding", section 3.1 and appendix A.1). Seed
001 ran it on each task's training sentences (4 epochs, batch 32) before in-turn training and
got its best dev mean; seed 002 on SST's sentences only. A recipe chains it before the
multitask stage::

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

Masking (:func:`mask_tokens`): each token is selected with probability ``mask_prob`` (0.15),
never ``[CLS]``, ``[SEP]``, ``[PAD]``, ``[UNK]`` or ``[MASK]``; a selected token becomes
``[MASK]`` with probability ``mask_replace`` (0.8), a token drawn uniformly from the whole
vocabulary with probability ``random_replace`` (0.1, as in BERT's own data script), and
stays itself otherwise (0.1). The loss is the cross-entropy of the selected positions only
(labels are -100 elsewhere), averaged over them; the output layer runs on those positions
only, so the 30,522-way projection costs 15% of what a full-sequence head would.

The MLM head is BERT's: ``Linear(H, H) -> hidden_act (gelu) -> LayerNorm``, then a decoder
whose weight *is* the encoder's word-embedding matrix (tied, one tensor: the embedding also
learns from the output side), plus an output bias. A new head is initialised as BERT
initialises (weights N(0, initializer_range), zero biases, unit LayerNorm). When the checkpoint
carried its pre-training head (``cls.predictions.*`` in HF names, as ``bert-base-uncased``
does; MiniLM does not), that transform and bias are used instead, and the run says so. The
head is trained with the encoder and discarded at the end of the stage; the encoder is
trained in place.

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
    BertTokenizer, CheckpointError, MtbertError, Progress, RunInterrupted, autocast, derive_seed,
    hidden_activation, hookimpl, lr_lambda, option, pad_batch, use_fused_adamw,
)

IGNORE_INDEX = -100
#: How many batches a length-bucketing window spans (as the multitask streams).
BUCKET_WINDOW = 50


# --------------------------------------------------------------------------- masking
def mask_tokens(
    ids: torch.Tensor,
    special_mask: torch.Tensor,
    vocab_size: int,
    mask_id: int,
    prob: float,
    generator: torch.Generator | None = None,
    *,
    mask_replace: float = 0.8,
    random_replace: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of a batch of token ids: returns ``(inputs, labels)``.

    Each position whose ``special_mask`` is False is selected with probability ``prob``.
    ``labels`` holds the original id at selected positions and -100 everywhere else.
    ``inputs`` is ``ids`` with each selected position replaced by ``mask_id`` (probability
    ``mask_replace``), by a token drawn uniformly from ``[0, vocab_size)`` (probability
    ``random_replace``) or left unchanged (the rest). Pure: ``ids`` is not modified; all
    draws come from ``generator`` (on its device, then moved to ``ids``'s).
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    if mask_replace < 0 or random_replace < 0 or mask_replace + random_replace > 1.0 + 1e-9:
        raise ValueError("mask_replace and random_replace must be non-negative and sum to at most 1")
    draw_device = generator.device if generator is not None else ids.device
    shape = ids.shape
    select = torch.rand(shape, generator=generator, device=draw_device).to(ids.device)
    how = torch.rand(shape, generator=generator, device=draw_device).to(ids.device)
    random_ids = torch.randint(vocab_size, shape, generator=generator, device=draw_device).to(ids.device, ids.dtype)
    selected = (select < prob) & ~special_mask.to(device=ids.device, dtype=torch.bool)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    to_mask = selected & (how < mask_replace)
    to_random = selected & (how >= mask_replace) & (how < mask_replace + random_replace)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


# --------------------------------------------------------------------------- the MLM head
#: Our MLM head's tensors -> the checkpoint's names (``cls.`` stripped), in order of preference.
PRETRAINED_NAMES: dict[str, tuple[str, ...]] = {
    "dense.weight": ("predictions.transform.dense.weight",),
    "dense.bias": ("predictions.transform.dense.bias",),
    "norm.weight": ("predictions.transform.LayerNorm.weight",),
    "norm.bias": ("predictions.transform.LayerNorm.bias",),
    "bias": ("predictions.bias", "predictions.decoder.bias"),
}


class MaskedLMHead(nn.Module):
    """BERT's masked-LM head; the decoder weight is the encoder's word-embedding parameter."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        config = encoder.config
        embeddings = encoder.word_embeddings.weight
        hidden, vocab = embeddings.shape[1], embeddings.shape[0]
        self.dense = nn.Linear(hidden, hidden, device=embeddings.device)
        self.act = hidden_activation(config.hidden_act)  # BERT's MLM transform uses the encoder's activation
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps, device=embeddings.device)
        self.decoder = nn.Linear(hidden, vocab, bias=False, device="meta")
        self.decoder.weight = embeddings  # tied: the same Parameter, not a copy
        self.bias = nn.Parameter(torch.zeros(vocab, device=embeddings.device))
        self.reset_parameters(config.initializer_range)

    @torch.no_grad()
    def reset_parameters(self, std: float) -> None:
        """BERT's initialisation of the new layers (the tied decoder is left alone)."""
        self.dense.weight.normal_(0.0, std)
        self.dense.bias.zero_()
        self.norm.weight.fill_(1.0)
        self.norm.bias.zero_()
        self.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., H]`` hidden states -> ``[..., V]`` vocabulary logits."""
        return self.decoder(self.norm(self.act(self.dense(hidden)))) + self.bias

    def own_parameters(self) -> list[nn.Parameter]:
        """The head's parameters that are not the encoder's (the tied decoder excluded)."""
        return [self.dense.weight, self.dense.bias, self.norm.weight, self.norm.bias, self.bias]

    def own_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k != "decoder.weight"}

    def load_own_state(self, state: dict[str, torch.Tensor]) -> None:
        own = self.own_state()
        if set(state) != set(own):
            raise CheckpointError(f"mlm stage: saved MLM head has tensors {sorted(state)}, expected {sorted(own)}")
        with torch.no_grad():
            for key, value in state.items():
                own[key].copy_(value)

    @torch.no_grad()
    def load_pretrained(self, extra_state: dict[str, torch.Tensor]) -> str | None:
        """Use a checkpoint's pre-training MLM head if it has a complete one.

        Returns a line for the run to say when it was used or had to be refused, None when
        the checkpoint carries no MLM head at all.
        """
        found: dict[str, torch.Tensor] = {}
        for ours, names in PRETRAINED_NAMES.items():
            for name in names:
                if name in extra_state:
                    found[ours] = extra_state[name]
                    break
        if not found:
            return None
        own = self.own_state()
        missing = [k for k in own if k not in found]
        wrong = [k for k in found if tuple(found[k].shape) != tuple(own[k].shape)]
        if missing or wrong:
            problems = [f"missing {PRETRAINED_NAMES[k][0]}" for k in missing]
            problems += [f"{PRETRAINED_NAMES[k][0]} has shape {tuple(found[k].shape)}, expected {tuple(own[k].shape)}"
                         for k in wrong]
            return f"mlm: the checkpoint's MLM head is incomplete ({'; '.join(problems)}); using a new one"
        for key, value in found.items():
            own[key].copy_(value.to(own[key].dtype))
        note = ""
        decoder = extra_state.get("predictions.decoder.weight")
        if decoder is not None and (decoder.shape != self.decoder.weight.shape or not torch.equal(
                decoder.to(self.decoder.weight), self.decoder.weight)):
            note = " (its separate decoder weight is ignored: the decoder stays tied to the word embeddings)"
        return f"mlm: using the checkpoint's pretrained MLM head (transform and output bias){note}"


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


def tokenize_unique(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text; texts that tokenize identically kept once; texts with no token dropped."""
    seen: set[tuple[int, ...]] = set()
    out: list[list[int]] = []
    for ids in tokenizer.encode(texts, max_length=max_length):
        key = tuple(ids)
        if len(ids) > 2 and key not in seen:  # more than [CLS] [SEP]
            seen.add(key)
            out.append(ids)
    return out


def plan_epoch(lengths: list[int], batch_size: int, generator: torch.Generator, bucket: bool) -> list[list[int]]:
    """One epoch's batches: a seeded shuffle, optionally sorted by length inside windows."""
    n = len(lengths)
    order = torch.randperm(n, generator=generator).tolist()
    if not bucket:
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    window = batch_size * BUCKET_WINDOW
    ordered: list[int] = []
    for start in range(0, n, window):
        ordered.extend(sorted(order[start:start + window], key=lambda i: lengths[i]))
    batches = [ordered[i:i + batch_size] for i in range(0, n, batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


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
        self.optimizer = self._optimizer(use_fused_adamw(self.device))
        self.steps_per_epoch = math.ceil(len(self.sequences) / options.batch_size)
        self.total_steps = self.steps_per_epoch * options.epochs
        if options.max_steps is not None:
            self.total_steps = min(self.total_steps, options.max_steps)
        warmup = int(round(options.warmup * self.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lr_lambda("linear-warmup", self.total_steps, warmup))

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

    def _optimizer(self, fused: bool) -> torch.optim.Optimizer:
        options, optim = self.options, self.run.recipe.optim

        def decays(name: str, p: nn.Parameter) -> bool:
            return p.ndim >= 2 and "norm" not in name.lower()

        groups = [
            {"params": [p for n, p in self.parameters if decays(n, p)], "weight_decay": options.weight_decay},
            {"params": [p for n, p in self.parameters if not decays(n, p)], "weight_decay": 0.0},
        ]
        kwargs = {"lr": options.lr, "betas": tuple(optim.betas), "eps": optim.eps}
        if fused:
            try:
                return torch.optim.AdamW(groups, fused=True, **kwargs)
            except (RuntimeError, TypeError, ValueError):
                pass
        return torch.optim.AdamW(groups, foreach=self.device.type != "cpu", **kwargs)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"stage_index": self.stage_index, "stage": "mlm", "done": self.done,
                                 "step": self.step, "epoch": self.epoch}
        if self.done:
            state["summary"] = dict(self.summary)
            return state
        state.update({
            "position": self.position,
            "plan": None if self.plan is None else {
                "order": torch.tensor([i for b in self.plan for i in b], dtype=torch.long),
                "sizes": torch.tensor([len(b) for b in self.plan], dtype=torch.long),
            },
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
        if plan is None:
            self.plan = None
        else:
            order, sizes = plan["order"].tolist(), plan["sizes"].tolist()
            offsets = [0]
            for size in sizes:
                offsets.append(offsets[-1] + size)
            self.plan = [order[offsets[i]:offsets[i + 1]] for i in range(len(sizes))]
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
        with autocast(self.device, self.run.recipe.train.precision):
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
                self.plan = plan_epoch(self.lengths, options.batch_size, self.generator, self.bucket)
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
