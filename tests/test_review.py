"""TensorBoard review: a real short run read back with TensorBoard's own event reader.

One run on ``random:tiny`` (sst, para, sts; 64 training rows each) with PCGrad, GradNorm and
SMART under an all-tasks sampler produces every tag the review promises; the event file is read
with ``tensorboard.backend.event_processing.event_accumulator.EventAccumulator`` and checked
tag by tag and against metrics.jsonl, the recipe, and the dev predictions. The image drawing
and the recipe flattening are checked against hand-made expectations.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch

from mtbert import hookimpl
from mtbert.metrics import confusion_matrix
from mtbert_plugins import review_tensorboard as review
from conftest import random_tiny_recipe

TASKS = ("sst", "para", "sts")

LIMITS = {"train_limit": 64, "dev_limit": 48}
RECIPE = random_tiny_recipe("review", 3, {task: LIMITS for task in TASKS}, optim={"lr": 3e-4, "epochs": 2},
                            train={"predict": False, "log_every": 1, "threads": 1}, middle="""
[sampler]
name = "round-robin"
step = "all-tasks"

[loss_combiner]
name = "gradnorm"
alpha = 1.0

[[gradient_transforms]]
name = "pcgrad"

[[regularizers]]
name = "smart"
weight = 1.0
""")


class Recorder:
    """Keeps every evaluation's predictions, to recompute the confusion images independently."""

    def __init__(self):
        self.evaluations: list[tuple[int, dict]] = []

    @hookimpl
    def mtbert_on_evaluate(self, stage, epoch, step, predictions):
        self.evaluations.append((step, {k: {kk: list(vv) for kk, vv in v.items()} for k, v in predictions.items()},
                                 f"{stage} epoch {epoch} (step {step})"))


def review_plugins(monkeypatch, *extra):
    from mtbert.plugins import load_plugins

    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    monkeypatch.setenv("MTBERT_DISABLE_PLUGINS", "review-tensorboard")  # loaded below, once
    monkeypatch.delenv("MTBERT_STRICT_PLUGINS", raising=False)
    plugins = load_plugins([("review-tensorboard", review), *extra])
    assert not plugins.registry.failures, plugins.registry.failures
    return plugins


def accumulator(folder: Path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(folder), size_guidance={
        ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0, ea.HISTOGRAMS: 0, ea.COMPRESSED_HISTOGRAMS: 0,
    })
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def reviewed_run(data_dir, tmp_path_factory):
    """Run the recipe once for the module; return (folder, summary, recorder, recipe)."""
    from mtbert.engine.run import run_recipe
    from mtbert.plugins import set_plugins
    from mtbert.recipe import load_recipe

    monkeypatch = pytest.MonkeyPatch()
    threads = torch.get_num_threads()
    recorder = Recorder()
    try:
        plugins = review_plugins(monkeypatch, ("recorder", recorder))
        set_plugins(plugins)
        root = tmp_path_factory.mktemp("review")
        path = root / "review.toml"
        path.write_text(RECIPE, encoding="utf-8")
        recipe = load_recipe(path, [f"data.dir={json.dumps(str(data_dir))}"], plugins)
        folder, summary = run_recipe(recipe, plugins, out=root / "run", say=lambda m: None, warn=lambda m: None)
        yield folder, summary, recorder, recipe
    finally:
        set_plugins(None)
        monkeypatch.undo()
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- the real run
def test_every_promised_scalar_tag_is_in_the_run_folders_own_event_file(reviewed_run):
    folder, _, _, _ = reviewed_run
    # the event files lie in the run folder itself (TensorBoard names the run after it), none below
    assert list(folder.glob("events.out.tfevents.*"))
    assert [p for p in folder.rglob("events.out.tfevents.*") if p.parent != folder] == []
    scalars = set(accumulator(folder).Tags()["scalars"])
    promised = {
        "train/loss/total", "train/lr", "train/pcgrad/conflict_rate",
        *(f"train/loss/{t}" for t in TASKS), *(f"train/weight/{t}" for t in TASKS),
        *(f"train/smart/{t}" for t in TASKS),
        "dev/sst_acc", "dev/para_acc", "dev/sts_pearson", "dev/mean",
        "dev_by_examples/sst_acc", "dev_by_examples/para_acc", "dev_by_examples/sts_pearson", "dev_by_examples/mean",
        "hparam/sst_acc", "hparam/para_acc", "hparam/sts_pearson", "hparam/mean",
    }
    assert promised <= scalars, sorted(promised - scalars)


def test_dev_scalars_equal_metrics_jsonl(reviewed_run):
    folder, summary, _, _ = reviewed_run
    acc = accumulator(folder)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for key in ("sst_acc", "para_acc", "sts_pearson", "mean"):
        events = acc.Scalars(f"dev/{key}")
        assert [e.step for e in events] == [r["step"] for r in records]
        assert [e.value for e in events] == pytest.approx([r["metrics"][key] for r in records], abs=1e-6)
        by_examples = acc.Scalars(f"dev_by_examples/{key}")
        assert [e.step for e in by_examples] == [r["examples"] for r in records]
        assert [e.value for e in by_examples] == pytest.approx([e.value for e in events], abs=1e-9)
    # all-tasks steps: 4 steps of 16 rows of each of the 3 tasks per epoch
    assert [r["examples"] for r in records] == [192, 384]
    # mean is the plain average of the three main scores
    for e_mean, r in zip(acc.Scalars("dev/mean"), records):
        m = r["metrics"]
        assert e_mean.value == pytest.approx((m["sst_acc"] + m["para_acc"] + m["sts_pearson"]) / 3, abs=1e-6)
    # the hparams metrics are the best evaluation's scores
    best = summary["best"]["dev"]
    for key in ("sst_acc", "para_acc", "sts_pearson", "mean"):
        assert acc.Scalars(f"hparam/{key}")[-1].value == pytest.approx(best[key], abs=1e-6)


def test_train_scalars_have_the_values_their_components_promise(reviewed_run):
    folder, _, _, recipe = reviewed_run
    acc = accumulator(folder)
    steps = 2 * 4  # 64 rows / batch 16 = 4 all-tasks steps per epoch, 2 epochs, logged every step
    assert [e.step for e in acc.Scalars("train/loss/total")] == list(range(1, steps + 1))
    # GradNorm renormalises its weights to sum to the number of tasks at every step
    weights = np.array([[e.value for e in acc.Scalars(f"train/weight/{t}")] for t in TASKS])
    assert weights.shape == (3, steps)
    assert weights.sum(axis=0) == pytest.approx(np.full(steps, 3.0), abs=1e-4)
    # the total is the weighted sum of the task losses plus SMART's terms (all logged)
    losses = np.array([[e.value for e in acc.Scalars(f"train/loss/{t}")] for t in TASKS])
    smart = np.array([[e.value for e in acc.Scalars(f"train/smart/{t}")] for t in TASKS])
    total = np.array([e.value for e in acc.Scalars("train/loss/total")])
    assert total == pytest.approx((weights * (losses + smart)).sum(axis=0), rel=1e-4, abs=1e-5)
    assert (smart >= 0).all()
    rates = [e.value for e in acc.Scalars("train/pcgrad/conflict_rate")]
    assert len(rates) == steps and all(0 <= r <= 1 for r in rates)
    assert all(abs(r * 3 - round(r * 3)) < 1e-6 for r in rates)  # a fraction of the 3 task pairs
    # linear warm-up over 10% of 8 steps (1 step), then linear decay to 0
    lrs = [e.value for e in acc.Scalars("train/lr")]
    total_steps, warmup = steps, 1
    expected = [recipe.optim.lr * max(0.0, (total_steps - s) / (total_steps - warmup)) for s in range(1, steps + 1)]
    assert lrs == pytest.approx(expected, rel=1e-5)


def test_hparams_are_the_recipe_values_written_into_the_run_itself(reviewed_run):
    from tensorboard.plugins.hparams import api_pb2, metadata

    folder, _, _, recipe = reviewed_run
    acc = accumulator(folder)
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    assert metadata.EXPERIMENT_TAG not in content  # TensorBoard builds the experiment from all runs
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    hp = start.hparams
    assert hp["optim.lr"].number_value == pytest.approx(3e-4)
    assert hp["optim.epochs"].number_value == 2
    assert hp["loss_combiner.name"].string_value == "gradnorm"
    assert hp["loss_combiner.alpha"].number_value == 1.0
    assert hp["gradient_transforms[0].name"].string_value == "pcgrad"
    assert hp["regularizers[0].name"].string_value == "smart"
    assert hp["sampler.step"].string_value == "all-tasks"
    assert hp["tasks.sst.head.name"].string_value == "linear"
    assert hp["optim.betas"].string_value == "[0.9, 0.999]"
    assert "model.hidden_dropout" not in hp  # unset values are left out
    # only what changes results: no name, threads, progress, device, logging, prediction or cache switches
    for key in ("name", "train.threads", "train.progress", "train.device", "train.log_every", "train.predict",
                "data.cache", "data.dir", "data.eval_batch_size"):
        assert key not in hp
    assert hp["gradient_transforms"].string_value == "pcgrad" and hp["regularizers"].string_value == "smart"
    assert hp["tasks"].string_value == "para, sst, sts" and hp["stages"].string_value == "multitask"
    assert set(hp) == set(review.result_hparams(recipe.to_dict()))
    assert set(hp) - {"gradient_transforms", "regularizers", "stages", "tasks"} == {
        k for k in review.recipe_hparams(recipe.to_dict()) if review.changes_results(k)}
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS


def test_confusion_images_for_classification_tasks_only_and_they_show_the_dev_predictions(reviewed_run):
    from PIL import Image

    folder, _, recorder, recipe = reviewed_run
    acc = accumulator(folder)
    tags = set(acc.Tags()["images"])
    assert tags == {"confusion/sst", "confusion/para"}  # sts is a regression task
    assert len(recorder.evaluations) == 2
    for tag, task, classes in (("confusion/sst", "sst", 5), ("confusion/para", "para", 2)):
        events = acc.Images(tag)
        assert [e.step for e in events] == [step for step, _, _ in recorder.evaluations]
        names = recipe.tasks[task].spec.class_names
        for event, (_, predictions, when) in zip(events, recorder.evaluations):
            decoded = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
            output = predictions[task]
            matrix = confusion_matrix(output["predictions"], output["labels"], classes)
            assert int(matrix.sum()) == 48  # every dev row of the slice, in one cell
            assert decoded.shape == (event.height, event.width, 3)
            expected = review.confusion_picture(matrix, names, f"{task} dev, {when}")
            assert np.array_equal(decoded, expected.numpy())


def test_text_summaries_of_recipe_and_plugins(reviewed_run):
    folder, _, _, recipe = reviewed_run
    acc = accumulator(folder)
    tensors = set(acc.Tags()["tensors"])
    assert {"recipe/text_summary", "plugins/text_summary"} <= tensors
    recipe_text = acc.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert 'name = "pcgrad"' in recipe_text and "lr = 0.0003" in recipe_text
    plugins_text = acc.Tensors("plugins/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "review-tensorboard" in plugins_text


# --------------------------------------------------------------------------- drawing and flattening
def test_confusion_image_cells_are_coloured_by_row_fraction_and_carry_their_count():
    matrix = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    image = review.confusion_image(matrix, scale=2)
    classes = 3
    cell = 36  # the smallest cell; counts have one digit
    margin = cell // 2 + 4
    assert image.shape == (margin + classes * cell, margin + classes * cell, 3)
    assert image.dtype == torch.uint8
    fractions = [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.25, 0.25, 0.5]]
    for i in range(classes):
        for j in range(classes):
            top, left = margin + i * cell, margin + j * cell
            block = image[top + 1:top + cell, left + 1:left + cell]
            background = torch.tensor([255, 255, 255]) + (torch.tensor([8, 48, 107]) - 255) * fractions[i][j]
            assert torch.equal(block[1, 1], background.round().to(torch.uint8))  # a corner without ink
            ink = (block != block[1, 1]).any(dim=-1)
            glyph = review.text_mask(str(int(matrix[i, j])), 2)
            assert int(ink.sum()) == int(glyph.sum())  # the count is drawn, at scale 2
            rows, cols = ink.nonzero(as_tuple=True)
            drawn = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert torch.equal(drawn, glyph)  # every glyph inks its first and last row and column
    # dark cells get white digits, light ones black
    top, left = margin + 0 * cell, margin + 0 * cell
    digits = image[top + 1:top + cell, left + 1:left + cell]
    assert (digits == 255).all(dim=-1).any()


def test_digit_glyphs_are_distinct_and_wide_counts_fit_their_cell():
    masks = {d: review.text_mask(d, 1) for d in "0123456789"}
    assert len({m.numpy().tobytes() for m in masks.values()}) == 10
    assert review.text_mask("12", 3).shape == (15, 21)
    image = review.confusion_image(torch.tensor([[40000, 1], [2, 123456]]))
    cell = (4 * 6 - 1) * 2 + 8
    assert image.shape[0] == cell // 2 + 4 + 2 * cell


def test_recipe_hparams_gives_dashboard_values():
    flat = review.recipe_hparams({
        "name": "x", "seed": 3, "optim": {"lr": 1e-5, "betas": [0.9, 0.99]}, "model": {"hidden_dropout": None},
        "train": {"progress": False}, "regularizers": [{"name": "smart", "tasks": ["sst"]}], "gradient_transforms": [],
    })
    assert flat == {
        "name": "x", "seed": 3, "optim.lr": 1e-5, "optim.betas": "[0.9, 0.99]", "train.progress": "false",
        "regularizers[0].name": "smart", "regularizers[0].tasks": '["sst"]', "gradient_transforms": "[]",
    }
    from torch.utils.tensorboard.summary import hparams

    hparams(flat, {})  # every value is of a type the dashboard takes


def test_plugin_registers_its_event_hooks_and_a_failing_writer_only_warns(monkeypatch):
    plugins = review_plugins(monkeypatch)
    info = next(p for p in plugins.plugins if p.name == "review-tensorboard")
    assert info.hooks == ["mtbert_on_evaluate", "mtbert_on_run_end", "mtbert_on_run_start"]
    assert info.error is None

    class BrokenWriter:
        def add_image(self, *a, **k):
            raise OSError("disk full")

    class Spec:
        label_kind, num_classes = "binary", 2

    class Run:
        log = type("Log", (), {"writer": BrokenWriter()})()
        tasks = {"para": type("Task", (), {"spec": Spec()})()}
        warnings: list[str] = []

        def warn(self, message):
            self.warnings.append(message)

    run = Run()
    plugins.hook.mtbert_on_evaluate(run=run, stage="multitask", epoch=1, step=4, metrics={},
                                    predictions={"para": {"ids": ["a", "b"], "predictions": [0, 1], "labels": [1, 1]}})
    assert run.warnings == ["review-tensorboard: confusion/para not written: OSError: disk full"]


# --------------------------------------------------------------------------- what TensorBoard shows
def tensorboard_experiment(logdir: Path):
    """The runs and the HParams experiment TensorBoard's own backend builds for ``--logdir logdir``."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), data_provider=provider,
                                                            multiplexer=multiplexer))
    request = context.RequestContext()
    experiment = backend.experiment_from_metadata(
        request, "", True, backend.hparams_metadata(request, ""),
        backend.hparams_from_data_provider(request, "", limit=None), None)
    return set(multiplexer.Runs()), experiment


def test_tensorboard_names_runs_by_folder_and_lists_the_differing_hparams_first(reviewed_run, data_dir, monkeypatch):
    """A second run beside the fixture's (no PCGrad, GradNorm, SMART; one-task steps) in one logdir."""
    from mtbert.engine.run import run_recipe
    from mtbert.recipe import load_recipe

    folder, _, _, _ = reviewed_run
    plugins = review_plugins(monkeypatch)
    plain = RECIPE.split("[loss_combiner]")[0].replace('step = "all-tasks"', 'step = "one-task"')
    plain += "[optim]\nlr = 3e-4\nepochs = 1\nbatch_size = 16\n[train]\nprogress = false\nthreads = 1\nlog_every = 3\n"
    path = folder.parent / "plain.toml"
    path.write_text(plain, encoding="utf-8")
    recipe = load_recipe(path, [f"data.dir={json.dumps(str(data_dir))}", "train.predict=false"], plugins)
    run_recipe(recipe, plugins, out=folder.parent / "plain", say=lambda m: None, warn=lambda m: None)

    runs, experiment = tensorboard_experiment(folder.parent)
    assert runs == {"run", "plain"}  # the folders' names: no "run/tb"
    infos = {h.name: h for h in experiment.hparam_infos}
    for key in ("gradient_transforms", "regularizers", "loss_combiner.name", "sampler.step", "optim.epochs"):
        assert infos[key].differs, key
    assert {v.string_value for v in infos["gradient_transforms"].domain_discrete.values} == {"pcgrad", "none"}
    assert not infos["optim.lr"].differs and not infos["tasks.sst.head.name"].differs
    for key in ("name", "train.threads", "train.progress", "train.log_every", "train.predict", "data.dir",
                "data.cache", "data.eval_batch_size", "train.device"):
        assert key not in infos, key
    differing = [h.differs for h in experiment.hparam_infos]
    assert differing == sorted(differing, reverse=True)  # TensorBoard lists the differing columns first
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"hparam/mean", "hparam/sst_acc", "hparam/para_acc", "hparam/sts_pearson"} <= metrics


def test_confusion_figure_has_axis_titles_class_names_and_counts():
    matrix = torch.tensor([[3, 1], [0, 5]])
    fig = review.confusion_figure(matrix, ("not paraphrase", "paraphrase"), "para dev")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert ax.get_title() == "para dev"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0 not paraphrase", "1 paraphrase"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0 not paraphrase", "1 paraphrase"]
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "3", "5"]
    pixels = review.figure_pixels(fig)
    assert pixels.dtype == torch.uint8 and pixels.shape[2] == 3 and pixels.shape[0] > 200
    # without names the ticks are the class ids
    ax = review.confusion_figure(torch.eye(3, dtype=torch.long)).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]


def test_without_matplotlib_the_confusion_picture_is_the_built_in_heat_map(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    matrix = torch.tensor([[3, 1], [2, 4]])
    assert torch.equal(review.confusion_picture(matrix, ("a", "b"), "t"), review.confusion_image(matrix))


def test_class_names_must_match_the_number_of_classes():
    from mtbert_plugins.tasks_cs224n import PARA, SST

    assert SST.class_names[0] == "very negative" and len(SST.class_names) == 5
    assert PARA.class_names == ("not paraphrase", "paraphrase")
    with pytest.raises(ValueError, match="class_names needs one name per class"):
        attrs.evolve(PARA, class_names=("only one",))
