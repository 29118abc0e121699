"""The fixes that make ablations measure their method: unused shared gradients, PCGrad's seed, GradNorm's rates."""

from __future__ import annotations

import pytest
import torch

from mtbert.testing import mtbert_plugin_modules, mtbert_plugins, mtbert_tiny_run  # noqa: F401,E402  (fixtures, used by name)


def test_shared_parameters_no_loss_reached_reach_adamw_without_a_gradient():
    from mtbert.engine.gradients import SharedGradients

    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))
    grads = SharedGradients([used, unused], torch.device("cpu"))
    optimizer = torch.optim.AdamW([used, unused], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        (used * torch.arange(3.0)).sum().backward()
        assert unused.grad is not None and float(unused.grad.abs().sum()) == 0.0  # bound to the zero buffer
        assert grads.release_unused() == [unused]
        assert unused.grad is None and used.grad is not None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        grads.rebind()
    assert torch.equal(unused.detach(), torch.ones(2, 2))  # neither decayed nor moved
    assert not torch.equal(used.detach(), torch.ones(3))
    # a parameter used in any micro-batch of the step keeps its gradient
    (unused.sum() * 0 + used.sum()).backward()
    assert grads.release_unused() == []
    grads.close()


def test_a_whole_run_leaves_the_unused_pooler_untouched(mtbert_plugins, mtbert_tiny_run):
    """Linear heads pool by mean: BERT's pooler takes part in no loss, so weight decay must not shrink it."""
    from safetensors.torch import load_file

    import mtbert

    folder, _ = mtbert_tiny_run(["optim.weight_decay=0.5", "optim.lr=1e-2", "optim.epochs=1"])
    trained = load_file(str(folder / "checkpoints" / "best.safetensors"))
    encoder, _ = mtbert.load_backbone("testing:tiny", seed=7)  # the tiny recipe's seed
    pooler = {k: v for k, v in encoder.state_dict().items() if "pooler" in k}
    assert pooler
    for key, value in pooler.items():
        saved = next(v for k, v in trained.items() if k.endswith(key))
        assert torch.equal(saved, value), key
    layer = next(k for k in encoder.state_dict() if "layers.0" in k and k.endswith("weight"))
    assert not torch.equal(next(v for k, v in trained.items() if k.endswith(layer)), encoder.state_dict()[layer])


def test_pcgrad_projection_order_follows_the_recipe_seed():
    from mtbert.engine.seeding import derive_seed
    from plugins.transform_pcgrad import PCGrad

    assert PCGrad().build([], seed=derive_seed(1, "transform", 0, 0)).seed == derive_seed(1, "transform", 0, 0)
    assert PCGrad(seed=3).build([], seed=99).seed == 3  # the option still fixes it when given
    orders = {}
    for seed in (1, 2):
        state = PCGrad().build([], seed=derive_seed(seed, "transform", 0, 0))
        orders[seed] = [torch.randperm(6, generator=state.generator).tolist() for _ in range(4)]
    assert orders[1] != orders[2]
    # through the engine: the trainer builds transforms with build_transform and the derived seed
    from mtbert.engine.trainer import build_transform

    assert build_transform(PCGrad(), [], seed=derive_seed(2, "transform", 0, 0)).seed == derive_seed(2, "transform", 0, 0)

    class NoSeed:  # a third-party transform whose build() takes no seed still works
        def build(self, shared):
            return "built"

    assert build_transform(NoSeed(), [], seed=5) == "built"


def test_gradnorm_rates_use_the_task_losses_without_regularizer_terms():
    from mtbert.testing import tiny_model
    from plugins.combiner_gradnorm import GradNorm

    model = tiny_model()
    combiner = GradNorm(layer="all-shared").build(["tiny_sentiment", "tiny_similarity"], model)
    params = [p for p in model.encoder.parameters() if p.requires_grad]

    def losses(scale: float) -> dict[str, torch.Tensor]:
        s = sum((p * p).sum() for p in params)
        return {"tiny_sentiment": scale * 1.0 * s / s.detach(), "tiny_similarity": scale * 2.0 * s / s.detach()}

    # step 1: task losses 1 and 2 (+ a regularizer term of 10 each in what combine() receives)
    combiner.observe_task_losses({"tiny_sentiment": 1.0, "tiny_similarity": 2.0})
    first = losses(1.0)
    combiner.combine({t: l + 10.0 for t, l in first.items()})
    assert combiner.initial == {"tiny_sentiment": 1.0, "tiny_similarity": 2.0}
    # step 2: sentiment's task loss halves, similarity's stays; the penalties are unchanged
    combiner.observe_task_losses({"tiny_sentiment": 0.5, "tiny_similarity": 2.0})
    second = losses(1.0)
    logs = combiner.combine({t: l + 10.0 for t, l in second.items()}).logs
    # Ltilde = (0.5, 1.0): r = Ltilde / mean = (2/3, 4/3); with the penalties in it would be ~(0.96, 1.04)
    assert logs["rate/tiny_sentiment"] == pytest.approx(2 / 3, rel=1e-5)
    assert logs["rate/tiny_similarity"] == pytest.approx(4 / 3, rel=1e-5)
    # without observe_task_losses (a caller outside the engine) the losses given are used, as before
    plain = GradNorm(layer="all-shared").build(["tiny_sentiment", "tiny_similarity"], model)
    plain.combine(losses(1.0))
    assert plain.initial == {"tiny_sentiment": pytest.approx(1.0), "tiny_similarity": pytest.approx(2.0)}


def test_plain_steps_without_the_flat_buffer_train_bit_for_bit_the_same(mtbert_plugins, mtbert_tiny_run, monkeypatch):
    """Without transforms (one process) gradients stay autograd's own: same weights as through the buffer."""
    from safetensors.torch import load_file

    from mtbert.engine.trainer import MultitaskTrainer

    built = []
    original = MultitaskTrainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self.grads)

    monkeypatch.setattr(MultitaskTrainer, "__init__", spy)
    plain, _ = mtbert_tiny_run(["optim.epochs=1"], name="plain")
    assert built == [None]
    monkeypatch.setattr(MultitaskTrainer, "_flat_gradients_needed", lambda self: True)
    flat, _ = mtbert_tiny_run(["optim.epochs=1"], name="flat")
    assert built[1] is not None
    a = load_file(str(plain / "checkpoints" / "best.safetensors"))
    b = load_file(str(flat / "checkpoints" / "best.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
