"""How large SMART's penalty is against the task loss on a real model (the ``smart/ratio`` log).

    MTBERT_DATA_DIR=../shared/data python benchmarks/smart_ratio.py [regularizers.0.epsilon=0.05 ...]

Trains ``recipes/ablations/smart.toml`` on MiniLM for one short epoch on small slices (64
training rows per task, 16 per batch: 12 steps) and prints the mean, over the steps, of the
task loss, SMART's weighted penalty and their ratio. It is a check that the regularizer acts
(the literal reading of the paper's 1e-5 ball gives ~1e-5), not an ablation result.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from mtbert import hookimpl
from mtbert.engine.run import run_recipe
from mtbert.plugins import load_plugins
from mtbert.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent


class Collect:
    """An event plugin that keeps every optimizer step's logs."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    @hookimpl
    def mtbert_on_step_end(self, run, step, logs):
        self.steps.append(dict(logs))


def main(argv: list[str]) -> None:
    extra = [a for a in argv if a != "--set"]
    collect = Collect()
    plugins = load_plugins([("smart-ratio", collect)])
    overrides = [f"tasks.{t}.train_limit=64" for t in ("sst", "para", "sts")]
    overrides += [f"tasks.{t}.dev_limit=32" for t in ("sst", "para", "sts")]
    overrides += ["optim.epochs=1", "train.progress=false", "train.predict=false"]
    overrides += extra  # --set style: regularizers.0.epsilon=0.05
    recipe = load_recipe(ROOT / "recipes" / "ablations" / "smart.toml", overrides, plugins)
    with tempfile.TemporaryDirectory() as folder:
        run_recipe(recipe, plugins, out=Path(folder) / "run", say=lambda m: None, warn=lambda m: None)
    rows = [s for s in collect.steps if "smart/ratio" in s]
    def mean(key: str) -> float:
        values = [s[key] for s in rows if key in s]
        return sum(values) / len(values)
    task_losses = [v for s in rows for k, v in s.items() if k.startswith("loss/") and k != "loss/total"]
    print(f"steps {len(rows)}: task loss {sum(task_losses) / len(task_losses):.4f}, "
          f"weighted penalty {mean('smart/penalty'):.4f}, penalty / task loss {mean('smart/ratio'):.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
