"""Run by tests/test_distributed.py under torchrun (not a test module itself).

``torchrun --nproc_per_node=2 tests/ddp_worker.py RECIPE OUT DATA_DIR STOP_STEP`` trains RECIPE
in OUT, has rank 0 request a stop after optimizer step STOP_STEP (through an event hook, which
only rank 0 calls, so the other process learns of it through the engine's agreement), then
resumes the run to its end in the same processes. Test-only instrumentation: every process
writes its final weights to ``OUT/../rank<r>.safetensors`` (taken where the engine hashes them
for run.json), so the test can compare the processes' weights itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist


def main() -> None:
    recipe_path, out, data_dir, stop_step = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    dist.init_process_group("gloo")  # the engine uses a group it finds and leaves it alone
    rank = dist.get_rank()

    import mtbert.engine.run as engine_run
    from mtbert import hookimpl
    from mtbert.engine.checkpoint import save_weights
    from mtbert.errors import RunInterrupted
    from mtbert.plugins import load_plugins
    from mtbert.recipe import load_recipe

    hash_weights = engine_run.weights_sha1

    def dump_and_hash(model):
        save_weights(out.parent / f"rank{rank}.safetensors", model.state_dict())
        return hash_weights(model)

    engine_run.weights_sha1 = dump_and_hash

    class StopAt:
        @hookimpl
        def mtbert_on_step_end(self, run, step, logs):
            if step == stop_step:
                run.request_stop("test stop")

    overrides = [f"data.dir={json.dumps(data_dir)}"]
    quiet = lambda message: None  # noqa: E731
    plugins = load_plugins([("stop-at", StopAt())])
    try:
        engine_run.run_recipe(load_recipe(recipe_path, overrides, plugins), plugins, out=out, say=quiet, warn=quiet)
    except RunInterrupted:
        pass
    else:
        raise SystemExit(f"rank {rank}: the run was not interrupted at step {stop_step}")
    plugins = load_plugins()
    engine_run.run_recipe(load_recipe(recipe_path, overrides, plugins), plugins, out=out, resume=True,
                          say=quiet, warn=quiet)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
