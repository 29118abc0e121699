"""The fault catalogue: every bad input, fault or interruption a user can meet, one row each.

Each row names the fault, the one line it must end in (a regular expression matched against
the last line of output), the exit status, and what must be left intact afterwards. A new fault
class gets a row here rather than a one-off test. Runs use the tiny random model (``random:tiny``)
on slices of the real data copied into the test's temporary folder (so rows can be damaged).

The concurrency, signal and file-size cases run ``mtbert`` (or a lock holder) in subprocesses;
the disk-full and read-only cases mount a small tmpfs, and are skipped with the reason where the
machine does not allow it (mounting needs root; under ``CI=true`` it is expected to work).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import attrs
import pytest
from click.testing import CliRunner

from mtbert import hookimpl
from mtbert.cli import cli
from mtbert.plugins import load_plugins, set_plugins

FILES = {
    "sst": ("ids-sst-train.csv", "ids-sst-dev.csv", "ids-sst-test-student.csv"),
    "sts": ("sts-train.csv", "sts-dev.csv", "sts-test-student.csv"),
}
ROWS = 60  # rows of each real file copied (the recipe slices fewer)

RECIPE = """\
name = "faults"
seed = 3

[model]
checkpoint = "random:tiny"

[data]
dir = {data!r}
max_length = 32
eval_batch_size = 16
cache = false

[tasks.sst]
train_limit = 24
dev_limit = 16
test_limit = 8

[tasks.sts]
train_limit = 24
dev_limit = 16
test_limit = 8

[optim]
lr = 1e-3
epochs = 2
batch_size = 4

[train]
progress = false
device = "cpu"
threads = 1
"""


# --------------------------------------------------------------------------- the workbench
class Bench:
    """One case's folder: a copy of the data, a recipe, and ways to run mtbert on them."""

    def __init__(self, tmp: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch):
        self.tmp = tmp
        self.monkeypatch = monkeypatch
        self.data = tmp / "data"
        self.data.mkdir()
        for names in FILES.values():
            for name in names:
                lines = (data_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)
                (self.data / name).write_text("".join(lines[: ROWS + 1]), encoding="utf-8")
        self.recipe = tmp / "recipe.toml"
        self.recipe.write_text(RECIPE.format(data=str(self.data)), encoding="utf-8")
        self.run_dir = tmp / "run"
        self.extra_plugins: list[tuple[str, Any]] = []
        self.snapshot: dict[str, bytes] = {}
        self.state: dict[str, Any] = {}

    # ----------------------------------------------------------------- in-process
    def plugins(self, *extra: tuple[str, Any], names: str = "builtin") -> None:
        """Install the plugin set the CLI will use: the builtins (or ``names``) and ``extra``."""
        self.monkeypatch.setenv("MTBERT_PLUGINS", names)
        set_plugins(load_plugins(list(extra)))

    def cli(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, [str(a) for a in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a traceback: the catalogue's first failure
        return result.exit_code, result.output

    def run(self, *extra: str, out: Path | None = None) -> tuple[int, str]:
        return self.cli("run", self.recipe, "--out", out or self.run_dir, *extra)

    def interrupted_run(self, at_step: int = 3, epochs: int = 2) -> None:
        """A run stopped at ``at_step`` (as Ctrl-C would), its state saved for --resume."""
        self.plugins(("stopper", StopAt(at_step)))
        code, output = self.run("--set", f"optim.epochs={epochs}")
        assert code == 130, output
        self.plugins()

    def finished_run(self) -> None:
        self.plugins()
        code, output = self.run("--set", "optim.epochs=1")
        assert code == 0, output

    def remember(self, *relative: str) -> None:
        """Record files whose bytes must survive the fault."""
        for name in relative:
            self.snapshot[name] = (self.run_dir / name).read_bytes()

    def unchanged(self) -> None:
        for name, data in self.snapshot.items():
            assert (self.run_dir / name).read_bytes() == data, f"{name} changed"

    def status(self, folder: Path | None = None) -> str:
        return json.loads(((folder or self.run_dir) / "run.json").read_text())["status"]

    # ----------------------------------------------------------------- subprocesses
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"MTBERT_PLUGINS": "builtin", "PYTHONUNBUFFERED": "1"})
        env.pop("MTBERT_DISABLE_PLUGINS", None)
        env.pop("MTBERT_STRICT_PLUGINS", None)
        return env

    def mtbert(self, *args: str, preexec: Callable[[], None] | None = None, timeout: float = 300) -> tuple[int, str]:
        done = subprocess.run([sys.executable, "-c", "from mtbert.cli import main; main()", *map(str, args)],
                              capture_output=True, text=True, env=self.env(), timeout=timeout, preexec_fn=preexec)
        return done.returncode, done.stdout + done.stderr

    def hold_lock(self, folder: Path) -> subprocess.Popen:
        """Another process holding the run folder's lock, as a running mtbert does."""
        code = ("import sys, time; from pathlib import Path; from mtbert.engine.runfolder import RunLock; "
                "RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(600)")
        holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                                  env=self.env())
        assert holder.stdout.readline().strip() == "locked"
        self.state["holder"] = holder
        return holder

    # ----------------------------------------------------------------- small file systems
    def mount(self, size: str = "8m") -> Path:
        """A fresh tmpfs of ``size`` (skips the case with the reason where mounting is refused)."""
        point = self.tmp / f"mnt-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            reason = f"cannot mount a tmpfs here ({(done.stderr or done.stdout).strip() or 'not root'})"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"{reason}; CI=true runs as root and must allow it")
            pytest.skip(reason)
        self.state.setdefault("mounts", []).append(point)
        return point

    def remount_read_only(self, point: Path) -> None:
        done = subprocess.run(["mount", "-o", "remount,ro", str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount {point} read-only ({done.stderr.strip()})")

    def close(self) -> None:
        holder = self.state.get("holder")
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        for point in reversed(self.state.get("mounts", [])):
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


class StopAt:
    """Interrupts training at a step, as Ctrl-C would."""

    def __init__(self, step: int):
        self.step = step

    @hookimpl
    def mtbert_on_step_end(self, run, step, logs):
        if step == self.step:
            run.request_stop("test interruption")


class RaiseIn:
    """A plugin whose hook raises (a bug in a third-party plugin)."""

    def __init__(self, hook: str, step: int = 3, error: type[BaseException] = ValueError, epoch: int = 0):
        self.hook, self.step, self.error, self.epoch = hook, step, error, epoch

    @hookimpl
    def mtbert_on_step_end(self, run, step, logs):
        if self.hook == "mtbert_on_step_end" and step == self.step:
            raise self.error("boom")

    @hookimpl
    def mtbert_on_evaluate(self, run, stage, epoch, step, metrics, predictions):
        if self.hook == "mtbert_on_evaluate" and epoch == self.epoch:
            raise self.error("boom")

    @hookimpl
    def mtbert_on_run_end(self, run, summary):
        if self.hook == "mtbert_on_run_end":
            raise self.error("boom")


def fake_distribution(root: Path, dist: str, entry: str, module: str, source: str) -> None:
    """An installed third-party plugin package (dist-info and module) under ``root``."""
    (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[mtbert]\n{entry} = {module}\n", encoding="utf-8")


def install_fake(bench: Bench, dist: str, entry: str, source: str) -> None:
    root = bench.tmp / "site"
    root.mkdir(exist_ok=True)
    module = f"fake_{uuid.uuid4().hex[:8]}"
    fake_distribution(root, dist, entry, module, source)
    bench.monkeypatch.syspath_prepend(str(root))
    bench.monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))


def rewrite_rows(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(edit(lines)), encoding="utf-8")


# --------------------------------------------------------------------------- the cases
@attrs.frozen
class Fault:
    """One row: how to cause the fault, the line it must end in, what must stay intact."""

    id: str
    act: Callable[[Bench], tuple[int, str]]
    line: str  # regular expression, searched in the last line of output
    code: int = 2
    intact: Callable[[Bench], None] = lambda bench: None
    setup: Callable[[Bench], None] = lambda bench: None


def _second_run(b: Bench) -> tuple[int, str]:
    b.run_dir.mkdir()
    b.hold_lock(b.run_dir)
    return b.run()


def _second_run_intact(b: Bench) -> None:
    assert [p.name for p in b.run_dir.iterdir()] == [".lock"]  # the second run wrote nothing


def _resume_while_running(b: Bench) -> tuple[int, str]:
    b.hold_lock(b.run_dir)
    return b.run("--resume")


def _stale_lock_never_blocks(b: Bench) -> None:
    b.unchanged()
    holder = b.state["holder"]
    holder.send_signal(signal.SIGKILL)  # the holder dies; the kernel drops its lock
    holder.wait()
    code, output = b.run("--resume")
    assert code == 0, output
    assert b.status() == "finished"


def _resume_changed_data(b: Bench) -> tuple[int, str]:
    rewrite_rows(b.data / "ids-sst-dev.csv", lambda lines: lines[:1] + lines[2:])
    return b.run("--resume")


def _changed_data_opt_in(b: Bench) -> None:
    b.unchanged()
    assert b.status() == "interrupted"
    # Fewer rows in the training file too: the opt-in resumes without an IndexError, recorded in run.json.
    rewrite_rows(b.data / "ids-sst-train.csv", lambda lines: lines[:10])
    code, output = b.run("--resume", "--allow-data-change")
    assert code == 0, output
    info = json.loads((b.run_dir / "run.json").read_text())
    assert info["status"] == "finished"
    assert {(c["task"], c["split"]) for c in info["data_changes"]} == {("sst", "dev"), ("sst", "train")}


def _kill_after_evaluation(b: Bench) -> tuple[int, str]:
    # Ctrl-C twice (abort without saving) right after epoch 2's evaluation was logged.
    b.plugins(("killer", RaiseIn("mtbert_on_evaluate", error=KeyboardInterrupt, epoch=2)))
    code, output = b.run()
    assert code == 130, output
    b.state["logged"] = [json.loads(line)["step"] for line in (b.run_dir / "metrics.jsonl").read_text().splitlines()]
    b.plugins()
    return b.run("--resume")


def _evaluations_once(b: Bench) -> None:
    steps = [json.loads(line)["step"] for line in (b.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert b.state["logged"] == steps == sorted(set(steps)), (b.state["logged"], steps)
    assert len(steps) == 2


def _stale_temporaries(b: Bench) -> tuple[int, str]:
    junk = b.run_dir / "checkpoints" / ".last.k2j4x9"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"\0" * 1000)
    (b.run_dir / "checkpoints" / ".best.safetensors.a8d7").write_bytes(b"\0" * 10)
    code, output = b.run("--resume")
    assert code == 0, output
    return code, output.splitlines()[0]


def _no_temporaries(b: Bench) -> None:
    assert not [p for p in (b.run_dir / "checkpoints").iterdir() if p.name.startswith(".")]


def _sigterm(b: Bench) -> tuple[int, str]:
    args = ["run", b.recipe, "--out", b.run_dir, "--set", "tasks.sst.train_limit=60", "--set", "tasks.sts.train_limit=60",
            "--set", "optim.epochs=50"]
    proc = subprocess.Popen([sys.executable, "-c", "from mtbert.cli import main; main()", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=b.env())
    deadline = time.monotonic() + 240
    while not (b.run_dir / "metrics.jsonl").is_file():  # training has started: one epoch is done
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "slow"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    return proc.returncode, output.strip()


def _sigterm_saved(b: Bench) -> None:
    assert b.status() == "interrupted"
    assert (b.run_dir / "checkpoints" / "last" / "state.json").is_file()


def _validate(*sets: str) -> Callable[[Bench], tuple[int, str]]:
    def act(b: Bench) -> tuple[int, str]:
        b.plugins()
        return b.cli("validate", b.recipe, *sum((["--set", s] for s in sets), []))
    return act


def _cuda_without_cuda(b: Bench) -> tuple[int, str]:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: train.device = 'cuda' is valid here")
    return _validate('train.device="cuda"')(b)


def _dirty(file: str, edit: Callable[[list[str]], list[str]] | None, *args: str) -> Callable[[Bench], tuple[int, str]]:
    def act(b: Bench) -> tuple[int, str]:
        if edit is not None:
            rewrite_rows(b.data / file, edit)
        b.plugins()
        code, output = b.run(*args)
        warnings = [line for line in output.splitlines() if line.startswith(("warning:", "error:"))]
        return code, warnings[-1] if warnings else output
    return act


def _duplicate_ids(lines: list[str]) -> list[str]:
    return lines[:5] + [lines[2]] + lines[5:]


def _unclosed_quote(lines: list[str]) -> list[str]:
    row = lines[5].split("\t")
    row[2] = '"' + row[2]  # the sentence column opens a quote nothing closes
    return lines[:5] + ["\t".join(row)] + lines[6:]


def _bad_byte_file(b: Bench) -> None:
    path = b.data / "ids-sst-dev.csv"
    raw = path.read_bytes().split(b"\n")
    raw[50] = raw[50].replace(b" ", b" \xff", 1)  # physical line 51
    path.write_bytes(b"\n".join(raw))


def _folder_for_file(b: Bench) -> tuple[int, str]:
    (b.tmp / "a-folder").mkdir()
    return _validate(f'tasks.sst.dev_file="{b.tmp / "a-folder"}"')(b)


IMPOSTOR = """
from mtbert import hookimpl
from mtbert_plugins.head_linear import LinearHead

@hookimpl
def mtbert_register_heads(register):
    register("linear", LinearHead)
"""


def _load_from(b: Bench, names: str, strict: bool = False) -> None:
    """Let the CLI load the plugins itself (printing their warnings), from the environment."""
    b.monkeypatch.setenv("MTBERT_PLUGINS", names)
    if strict:
        b.monkeypatch.setenv("MTBERT_STRICT_PLUGINS", "1")
    set_plugins(None)


def _impostor(b: Bench) -> tuple[int, str]:
    install_fake(b, "aaa-impostor", "a-impostor", IMPOSTOR)
    _load_from(b, "builtin,a-impostor")
    code, output = b.cli("validate", b.recipe)
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    return code, warnings[-1] if warnings else output


def _builtin_kept(b: Bench) -> None:
    from mtbert.plugins import get_plugins

    assert get_plugins().registry.find("head", "linear").distribution == "mtbert"


def _exits_on_import(code_: str, strict: bool = False) -> Callable[[Bench], tuple[int, str]]:
    def act(b: Bench) -> tuple[int, str]:
        install_fake(b, "exiting-plugin", "exiting", f"import sys\nsys.exit({code_})\n")
        _load_from(b, "builtin,exiting", strict)
        code, output = b.cli("validate", b.recipe)
        lines = [line for line in output.splitlines() if line.startswith(("warning:", "error:"))]
        return code, lines[0] if lines else output
    return act


def _hook_raises_in_training(b: Bench) -> tuple[int, str]:
    b.plugins(("buggy", RaiseIn("mtbert_on_step_end", step=3)))
    return b.run()


def _saved_then_resumable(b: Bench) -> None:
    assert b.status() == "failed"
    state = json.loads((b.run_dir / "checkpoints" / "last" / "state.json").read_text())
    assert state  # the state of step 3 is there
    b.plugins()
    code, output = b.run("--resume")
    assert code == 0, output
    assert "resuming" in output and "at step 3" in output


def _hook_raises_at_end(b: Bench) -> tuple[int, str]:
    b.plugins(("buggy", RaiseIn("mtbert_on_run_end")))
    code, output = b.run()
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    return code, warnings[-1] if warnings else output


def _env_typo(variable: str, value: str, strict: bool = False) -> Callable[[Bench], tuple[int, str]]:
    def act(b: Bench) -> tuple[int, str]:
        b.monkeypatch.setenv(variable, value)
        if variable != "MTBERT_PLUGINS":
            b.monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
        if strict:
            b.monkeypatch.setenv("MTBERT_STRICT_PLUGINS", "1")
        set_plugins(None)
        code, output = b.cli("validate", b.recipe)
        lines = [line for line in output.splitlines() if line.startswith(("warning:", "error:"))]
        return code, lines[0] if lines else output
    return act


def _collapse(b: Bench) -> tuple[int, str]:
    b.plugins()
    code, output = b.run("--set", "optim.lr=1e2", "--set", "optim.head_lr=1e2")
    warnings = [line for line in output.splitlines() if "MODEL COLLAPSE" in line]
    assert len(warnings) == 2, output  # at each evaluation
    return code, warnings[-1]


def _disk_full(b: Bench) -> tuple[int, str]:
    # 24 MB hold epoch 1's best (4 MB) and last (12 MB), not epoch 2's new last beside the old.
    b.run_dir = b.mount("24m") / "run"
    b.plugins()
    return b.run()


def _last_survives(b: Bench) -> None:
    state = json.loads((b.run_dir / "checkpoints" / "last" / "state.json").read_text())
    assert state and not [p for p in (b.run_dir / "checkpoints").iterdir() if p.name.startswith(".last.")]
    assert b.status() == "failed"


def _read_only_out(b: Bench) -> tuple[int, str]:
    point = b.mount("1m")
    b.remount_read_only(point)
    b.plugins()
    return b.run(out=point / "run")


def _file_size_limit(b: Bench) -> tuple[int, str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # 1 MB: less than best.safetensors

    code, output = b.mtbert("run", b.recipe, "--out", b.run_dir, preexec=limit)
    return code, output.strip()


def _out_under_file(b: Bench) -> tuple[int, str]:
    (b.tmp / "a-file").write_text("x")
    b.plugins()
    return b.run(out=b.tmp / "a-file" / "run")


def _eval_read_only(b: Bench) -> tuple[int, str]:
    point = b.mount("40m")
    shutil.copytree(b.run_dir, point / "run")
    b.remount_read_only(point)
    b.run_dir = point / "run"
    b.remember("metrics.json", "checkpoints/best.safetensors")
    return b.cli("eval", b.run_dir)


def _truncated_recipe_only(b: Bench) -> None:
    text = (b.run_dir / "recipe.toml").read_text()
    (b.run_dir / "recipe.toml").write_text(text[: text.index("[tasks") + 8])


def _truncated_recipe(b: Bench) -> tuple[int, str]:
    text = (b.run_dir / "recipe.toml").read_text()
    (b.run_dir / "recipe.toml").write_text(text[: text.index("[tasks") + 8])
    return b.run("--resume")


def _empty_state(b: Bench) -> tuple[int, str]:
    (b.run_dir / "checkpoints" / "last" / "state.json").write_text("{}\n")
    return b.run("--resume")


def _damaged_run_json(b: Bench) -> tuple[int, str]:
    (b.run_dir / "run.json").write_text('{"status": "runn')
    code, output = b.run("--resume")
    return code, [line for line in output.splitlines() if line.startswith("warning:")][0]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _truncated_last_weights(b: Bench) -> tuple[int, str]:
    _truncate(b.run_dir / "checkpoints" / "last" / "model.safetensors")
    return b.run("--resume")


def _truncated_best(b: Bench) -> tuple[int, str]:
    _truncate(b.run_dir / "checkpoints" / "best.safetensors")
    return b.cli("eval", b.run_dir)


def _interrupted(b: Bench) -> None:
    b.interrupted_run()
    b.remember("checkpoints/last/model.safetensors", "checkpoints/last/state.json")


def _finished(b: Bench) -> None:
    b.finished_run()


def _intact_last(b: Bench) -> None:
    b.unchanged()


FAULTS = [
    # ----------------------------------------------------------------- lost or mixed data
    Fault("second run into a running run's folder", _second_run,
          r"^error: --out: .*/run is in use by a running mtbert \(pid \d+\); wait for it to end", intact=_second_run_intact),
    Fault("resume while the run is still going", _resume_while_running,
          r"^error: --resume: .*/run is in use by a running mtbert \(pid \d+\)", setup=_interrupted,
          intact=_stale_lock_never_blocks),
    Fault("mtbert resume while the run is still going", lambda b: (b.hold_lock(b.run_dir), b.cli("resume", b.run_dir))[1],
          r"^error: --resume: .*/run is in use by a running mtbert \(pid \d+\)", setup=_interrupted, intact=_intact_last),
    Fault("mtbert resume with a changed data file",
          lambda b: (rewrite_rows(b.data / "sts-train.csv", lambda lines: lines[:-1]), b.cli("resume", b.run_dir))[1],
          r"^error: --resume: data file .*sts-train\.csv \(sts train\) changed since ", setup=_interrupted,
          intact=_intact_last),
    Fault("resume with a changed data file", _resume_changed_data,
          r"^error: --resume: data file .*ids-sst-dev\.csv \(sst dev\) changed since .* add --allow-data-change",
          setup=_interrupted, intact=_changed_data_opt_in),
    Fault("kill right after an evaluation, then resume", _kill_after_evaluation, r"/run$", code=0,
          setup=lambda b: b.plugins(), intact=_evaluations_once),
    Fault("temporary checkpoint folders left by a crash", _stale_temporaries,
          r"^removed 2 temporary file\(s\) left by an interrupted write in .*/run$", code=0, setup=_interrupted,
          intact=_no_temporaries),
    # ----------------------------------------------------------------- signals
    Fault("SIGTERM (timeout, SLURM, docker stop)", _sigterm,
          r"^interrupted: terminated \(SIGTERM\): stopped at step \d+; state saved in .*/checkpoints/last; "
          r"continue with: mtbert resume .*/run$", code=130, intact=_sigterm_saved),
    # ----------------------------------------------------------------- validation before any work
    Fault("optim.lr = nan in the recipe file", _validate(),
          r"^error: .*recipe\.toml:\d+: optim\.lr: nan is not a finite number$",
          setup=lambda b: b.recipe.write_text(b.recipe.read_text().replace("lr = 1e-3", "lr = nan"))),
    Fault("optim.warmup = inf", _validate("optim.warmup=inf"), r"^error: --set optim\.warmup: inf is not a finite number$"),
    Fault("optim.eps = -inf", _validate("optim.eps=-inf"), r"^error: --set optim\.eps: -inf is not a finite number$"),
    Fault("optim.betas = [2.0, -1.0]", _validate("optim.betas=[2.0, -1.0]"),
          r"^error: --set optim\.betas\[1\]: -1\.0 must be at least 0$"),
    Fault("optim.betas = [0.9, 1.0]", _validate("optim.betas=[0.9, 1.0]"), r"^error: --set optim\.betas\[1\]: 1\.0 must be less than 1$"),
    Fault("model.hidden_dropout = 1.0", _validate("model.hidden_dropout=1.0"),
          r"^error: --set model\.hidden_dropout: 1\.0 must be less than 1$"),
    Fault("train.device = 'cuda' without CUDA", _cuda_without_cuda,
          r"^error: train\.device: 'cuda' asked for, but CUDA is not available on this machine"),
    Fault("duplicate ids in a data file", _dirty("ids-sst-train.csv", _duplicate_ids),
          r"^warning: .*ids-sst-train\.csv: 1 of \d+ rows repeat an earlier row's id \(id '.+' on lines 3 and 6\)", code=0),
    Fault("duplicate ids under data.strict", _dirty("ids-sst-train.csv", _duplicate_ids, "--set", "data.strict=true"),
          r"^error: .*ids-sst-train\.csv: 1 of \d+ rows repeat an earlier row's id .*set data\.strict = false"),
    Fault("a folder where a data file belongs", _folder_for_file,
          r"^error: data file for tasks\.sst\.dev_file \(sst dev\) is a directory, not a file: .*a-folder$"),
    Fault("a byte that is not UTF-8 on line 51", _dirty("ids-sst-dev.csv", None),
          r"^error: .*ids-sst-dev\.csv: not valid UTF-8 at line 51 ", setup=_bad_byte_file),
    Fault("an unclosed quote swallowing the file", _dirty("ids-sst-train.csv", _unclosed_quote),
          r"^warning: .*ids-sst-train\.csv: skipped 56 of 60 rows \(line 6: a quote opened on this line is not closed: "
          r"the field runs to line 61 and swallowed 55 rows", code=0),
    # ----------------------------------------------------------------- plugins
    Fault("a third-party plugin registering a builtin's name", _impostor,
          r"^warning: plugin a-impostor 0\.1 \(aaa-impostor\): duplicate head 'linear': registered by plugin "
          r"'head-linear' \(mtbert .*\) and by plugin 'a-impostor' \(aaa-impostor 0\.1\)$", code=0, intact=_builtin_kept),
    Fault("a plugin calling sys.exit(0) at import", _exits_on_import("0"),
          r"^warning: plugin exiting 0\.1 \(exiting-plugin\) failed to load: it called sys\.exit\(0\) while loading$", code=0),
    Fault("a plugin calling sys.exit('msg') at import, strict", _exits_on_import("'bye'", strict=True),
          r"^error: plugin exiting 0\.1 \(exiting-plugin\) failed to load: it called sys\.exit\('bye'\) while loading$"),
    Fault("a hook raising during training", _hook_raises_in_training,
          r"^error: plugin 'buggy' \(\(in-process\) -\) failed in mtbert_on_step_end at step 3: ValueError: boom; fix or "
          r"disable it \(MTBERT_DISABLE_PLUGINS=buggy\) and continue with: mtbert resume .*/run; state saved in "
          r".*/checkpoints/last at step 3$", intact=_saved_then_resumable),
    Fault("a hook raising in mtbert_on_run_end", _hook_raises_at_end,
          r"^warning: plugin 'buggy' .* failed in mtbert_on_run_end at step \d+: ValueError: boom; the run itself finished",
          code=0, intact=lambda b: (b.status() == "finished") or pytest.fail("not finished")),
    Fault("a typo in MTBERT_DISABLE_PLUGINS", _env_typo("MTBERT_DISABLE_PLUGINS", "head-linaer"),
          r"^warning: MTBERT_DISABLE_PLUGINS: no installed plugin is named 'head-linaer' — did you mean 'head-linear'\?",
          code=0),
    Fault("a typo in MTBERT_PLUGINS, strict", _env_typo("MTBERT_PLUGINS", "builtin,mtbert-plugin-exampel", strict=True),
          r"^error: MTBERT_PLUGINS: no installed plugin is named 'mtbert-plugin-exampel'"),
    Fault("a loss that becomes NaN", lambda b: (b.plugins(), b.run("--set", "optim.lr=1e30"))[1],
          r"^error: training diverged: the loss of task \w+ \(head 'linear'\) became nan at step \d+; lower optim\.lr"),
    # ----------------------------------------------------------------- numerics
    Fault("a learning rate that destroys the model", _collapse,
          r"^warning: MODEL COLLAPSE at step \d+ \(multitask epoch 2\): .*weight norm .*lower optim\.lr$", code=0),
    # ----------------------------------------------------------------- files and disks
    Fault("disk full while saving", _disk_full,
          r"^error: cannot write .*/checkpoints/last: No space left on device; the disk is full", intact=_last_survives),
    Fault("a read-only folder for --out", _read_only_out,
          r"^error: --out: cannot create the run folder .*/run: Read-only file system; the file system is read-only"),
    Fault("a file-size limit (ulimit -f)", _file_size_limit,
          r"^error: cannot write .*best\.safetensors: File too large; .*\(ulimit -f\): raise the limit$"),
    Fault("--out under a regular file", _out_under_file,
          r"^error: --out: cannot create the run folder .*a-file/run: Not a directory; a path component is a file"),
    Fault("eval on a read-only run folder", _eval_read_only,
          r"^error: cannot write .*/run/eval\.json: Read-only file system; .* the metrics above were not saved in",
          setup=_finished, intact=_intact_last),
    Fault("a truncated recipe.toml on --resume", _truncated_recipe,
          r"^error: --resume: .*/run/recipe\.toml is damaged \(", setup=_interrupted, intact=_intact_last),
    Fault("a truncated recipe.toml on mtbert resume",
          lambda b: (_truncated_recipe_only(b), b.cli("resume", b.run_dir))[1],
          r"^error: resume: .*/run/recipe\.toml is damaged \(", setup=_interrupted, intact=_intact_last),
    Fault("state.json holding {} on --resume", _empty_state,
          r"^error: .*/checkpoints/last/state\.json is damaged \(", setup=_interrupted),
    Fault("a damaged run.json on --resume", _damaged_run_json,
          r"^warning: --resume: .*/run/run\.json is (missing or )?damaged", code=0, setup=_interrupted),
    Fault("a truncated checkpoints/last/model.safetensors on --resume", _truncated_last_weights,
          r"^error: .*/checkpoints/last: unreadable training state \(", setup=_interrupted),
    Fault("a truncated best.safetensors on eval", _truncated_best,
          r"^error: .*/checkpoints/best\.safetensors: unreadable checkpoint \(", setup=_finished),
    Fault("an empty data file", _dirty("sts-dev.csv", lambda lines: []),
          r"^error: .*sts-dev\.csv: the file is empty \(expected a header row\)$"),
    Fault("--allow-data-change without --resume", lambda b: (b.plugins(), b.run("--allow-data-change"))[1],
          r"^error: --allow-data-change only applies with --resume$"),
]


@pytest.fixture
def bench(tmp_path, data_dir, monkeypatch, minilm_dir):
    monkeypatch.delenv("MTBERT_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("MTBERT_STRICT_PLUGINS", raising=False)
    made = Bench(tmp_path, data_dir, monkeypatch)
    yield made
    made.close()
    set_plugins(None)


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_fault(fault: Fault, bench: Bench) -> None:
    fault.setup(bench)
    code, output = fault.act(bench)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert "Traceback" not in output, output
    assert lines, "no output"
    assert re.search(fault.line, lines[-1]), f"last line {lines[-1]!r} does not match {fault.line!r}\n{output}"
    assert code == fault.code, output
    fault.intact(bench)


def test_every_fault_has_its_own_row():
    ids = [f.id for f in FAULTS]
    assert len(ids) == len(set(ids))
