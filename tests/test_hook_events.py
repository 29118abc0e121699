"""Event hooks: when mtbert calls each one during a run, and with what arguments.

Runs are mtbert.testing's tiny runs (a random tiny BERT on three in-memory tasks), so these tests
need neither the CS224N data nor MiniLM. A recording plugin keeps every call in order.
"""

from __future__ import annotations

import json

import pytest

from mtbert import hookimpl
from mtbert.errors import RunInterrupted
from mtbert.testing import TINY_TASK_NAMES, run_tiny_recipe, tiny_examples, tiny_plugins, tiny_recipe_table


class Recorder:
    """Records each event hook call: its name and a copy of its arguments."""

    def __init__(self, stop_at: int | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.stop_at = stop_at

    @hookimpl
    def mtbert_on_run_start(self, run):
        self.calls.append(("run_start", {"step": run.global_step, "tasks": sorted(run.tasks), "folder": run.folder,
                                         "has_model": run.model is not None, "recipe": run.recipe.name}))

    @hookimpl
    def mtbert_on_step_end(self, run, step, logs):
        self.calls.append(("step_end", {"step": step, "global_step": run.global_step, "logs": dict(logs)}))
        if step == self.stop_at:
            run.request_stop("test stop")

    @hookimpl
    def mtbert_on_evaluate(self, run, stage, epoch, step, metrics, predictions):
        self.calls.append(("evaluate", {"stage": stage, "epoch": epoch, "step": step, "metrics": dict(metrics),
                                        "predictions": json.loads(json.dumps(predictions))}))

    @hookimpl
    def mtbert_on_run_end(self, run, summary):
        self.calls.append(("run_end", {"summary": json.loads(json.dumps(summary)), "step": run.global_step}))

    def named(self, name: str) -> list[dict]:
        return [args for call, args in self.calls if call == name]


def test_event_hooks_are_called_in_order_with_their_arguments(tmp_path):
    record = Recorder()
    folder, summary = run_tiny_recipe(tiny_plugins(("record", record)), tmp_path / "run", overrides=["optim.epochs=2"])
    names = [name for name, _ in record.calls]
    assert names[0] == "run_start" and names[-1] == "run_end"
    assert names.count("run_start") == 1 and names.count("run_end") == 1

    (start,) = record.named("run_start")
    assert start == {"step": 0, "tasks": sorted(TINY_TASK_NAMES), "folder": folder, "has_model": True, "recipe": "tiny"}

    steps = record.named("step_end")
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))  # every optimizer step, once
    assert all(s["global_step"] == s["step"] for s in steps)
    assert all({"loss/total", "lr"} <= set(s["logs"]) for s in steps)
    assert all(any(k.startswith("weight/") for k in s["logs"]) for s in steps)

    evaluations = record.named("evaluate")
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in evaluations] == [1, 2] and [e["stage"] for e in evaluations] == ["multitask"] * 2
    assert [e["step"] for e in evaluations] == [line["step"] for line in lines] == [len(steps) // 2, len(steps)]
    assert [e["metrics"] for e in evaluations] == [line["metrics"] for line in lines]
    # Each evaluation comes right after the last step of its epoch.
    positions = [i for i, (name, _) in enumerate(record.calls) if name == "evaluate"]
    assert [record.calls[i - 1][1]["step"] for i in positions] == [e["step"] for e in evaluations]
    for task in TINY_TASK_NAMES:
        dev = tiny_examples(task, "dev")
        got = evaluations[-1]["predictions"][task]
        assert got["ids"] == [e.id for e in dev] and got["labels"] == [e.label for e in dev]
        assert len(got["predictions"]) == len(dev)
    assert set(evaluations[-1]["predictions"]["tiny_sentiment"]["predictions"]) <= {0, 1, 2}

    (end,) = record.named("run_end")
    assert end["summary"] == summary == json.loads((folder / "metrics.json").read_text())
    assert end["step"] == len(steps) and end["summary"]["last"]["epoch"] == 2


def test_a_stopped_run_starts_but_does_not_end(tmp_path):
    record = Recorder(stop_at=3)
    with pytest.raises(RunInterrupted, match="test stop: stopped at step 3"):
        run_tiny_recipe(tiny_plugins(("record", record)), tmp_path / "run")
    assert [name for name, _ in record.calls] == ["run_start", "step_end", "step_end", "step_end"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "interrupted"


def test_hooks_may_take_only_the_arguments_they_use_and_see_every_stage(tmp_path):
    seen = []

    class MetricsOnly:
        @hookimpl
        def mtbert_on_evaluate(self, stage, metrics):
            seen.append((stage, sorted(metrics)))

    stages = [{"name": "multitask", "tasks": ["tiny_paraphrase"], "epochs": 1}, {"name": "multitask"}]
    run_tiny_recipe(tiny_plugins(("metrics-only", MetricsOnly())), tmp_path / "run", table=tiny_recipe_table(stages=stages))
    assert [stage for stage, _ in seen] == ["multitask[0]", "multitask[1]"]
    assert all({"mean", "tiny_sentiment_acc", "tiny_paraphrase_acc", "tiny_similarity_pearson"} <= set(keys)
               for _, keys in seen)
