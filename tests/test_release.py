"""What a user of an installed mtbert meets: shipped recipes, --set on list items, validate --show,
plugins --kind, progress bars, the last line of mtbert run, keep_last, resume, the Python API.

(Export is tested in test_export.py; the wheel itself by .ci/run.)
"""

from __future__ import annotations

import io
import json
import tomllib
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

import mtbert
from mtbert.cli import cli
from mtbert.engine.progress import Progress
from mtbert.errors import RecipeError
from mtbert.recipe import load_recipe, parse_override
from mtbert.shipped import copy_recipe, resolve_recipe, shipped_recipes

REPO = Path(__file__).resolve().parent.parent

TINY = """\
name = "tiny"
seed = 7

[model]
checkpoint = "random:tiny"

[tasks.sst]
train_limit = 64
dev_limit = 32
test_limit = 16

[tasks.sts]
train_limit = 64
dev_limit = 32
test_limit = 16

[optim]
lr = 1e-3
epochs = 2
batch_size = 16

[train]
progress = false
threads = 1
"""


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# --------------------------------------------------------------------------- shipped recipes
def test_every_recipe_under_recipes_is_shipped_with_a_description():
    shipped = {r.name: r for r in shipped_recipes()}
    on_disk = {p.relative_to(REPO / "recipes").with_suffix("").as_posix() for p in (REPO / "recipes").rglob("*.toml")}
    assert set(shipped) == on_disk and "quickstart" in shipped
    for recipe in shipped.values():
        assert recipe.description and "\n" not in recipe.description, recipe.name
        assert recipe.description == tomllib.loads(recipe.path.read_text())["description"]


def test_mtbert_recipes_lists_names_and_descriptions(builtin_plugins):
    result = invoke("recipes")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    quick = next(line for line in lines if line.startswith("quickstart "))
    assert "First multitask run" in quick
    assert any(line.startswith("ablations/pcgrad ") for line in lines)


def test_a_shipped_name_runs_from_any_folder_and_a_path_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_recipe("quickstart") == REPO / "recipes" / "quickstart.toml"
    assert resolve_recipe("ablations/pcgrad.toml") == REPO / "recipes" / "ablations" / "pcgrad.toml"
    (tmp_path / "quickstart").write_text('name = "mine"\n')
    assert resolve_recipe("quickstart") == Path("quickstart")  # a file that exists wins over the name


def test_an_unknown_recipe_name_lists_the_shipped_ones(builtin_plugins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("validate", "quickstrat")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "recipe 'quickstrat'" in lines[0] and "did you mean 'quickstart'" in lines[0]
    assert "shipped recipes: " in lines[0] and "ablations/pcgrad" in lines[0]


def test_recipes_copy_writes_a_runnable_copy_with_its_includes(builtin_plugins, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("recipes", "copy", "ablations/pcgrad", "mine.toml")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mine.toml").read_text() == (REPO / "recipes" / "ablations" / "pcgrad.toml").read_text()
    assert (tmp_path / "base.toml").is_file()  # pcgrad.toml includes base.toml
    recipe = load_recipe(tmp_path / "mine.toml", [], builtin_plugins)
    assert recipe.gradient_transforms[0].name == "pcgrad"
    again = invoke("recipes", "copy", "ablations/pcgrad", "mine.toml")
    assert again.exit_code == 2 and "already exists" in again.output and "--force" in again.output
    (tmp_path / "out").mkdir()
    copied = copy_recipe("quickstart", tmp_path / "out")
    assert copied == [tmp_path / "out" / "quickstart.toml"]
    unknown = invoke("recipes", "copy", "nope")
    assert unknown.exit_code == 2 and "shipped recipes: " in unknown.output


# --------------------------------------------------------------------------- --set and --grid on list items
CLIP = TINY + '\n[[gradient_transforms]]\nname = "clip-norm"\nmax_norm = 1.0\n'


def test_set_reaches_list_items_by_the_names_compare_prints(builtin_plugins, write_recipe):
    assert parse_override("gradient_transforms[0].max_norm=0.2") == (["gradient_transforms", "0", "max_norm"], 0.2)
    assert parse_override("stages[1].epochs=2")[0] == ["stages", "1", "epochs"]
    path = write_recipe(CLIP)
    recipe = load_recipe(path, ["gradient_transforms[0].max_norm=0.2"], builtin_plugins)
    assert recipe.gradient_transforms[0].options.max_norm == 0.2
    recipe = load_recipe(path, ["gradient_transforms.0.max_norm=0.3"], builtin_plugins)  # bare index still works
    assert recipe.gradient_transforms[0].options.max_norm == 0.3


def test_an_error_caused_by_a_set_value_names_set_not_a_recipe_line(builtin_plugins, write_recipe):
    path = write_recipe(CLIP)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["gradient_transforms[0].max_norm=-1"], builtin_plugins)
    (line,) = info.value.problems
    assert line.startswith("--set gradient_transforms[0].max_norm:"), line
    assert str(path) not in line
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["gradient_transforms[3].max_norm=1"], builtin_plugins)
    assert info.value.problems[0].startswith("--set gradient_transforms[3].max_norm=1: gradient_transforms[3]: no such list item")
    with pytest.raises(RecipeError) as info:  # an error in the file still names the file and line
        load_recipe(write_recipe(CLIP.replace("max_norm = 1.0", "max_norm = -1.0"), name="bad.toml"), [], builtin_plugins)
    assert info.value.problems[0].startswith(f"{path.parent / 'bad.toml'}:")


def test_set_include_is_refused_in_one_line(builtin_plugins, write_recipe):
    path = write_recipe(TINY)
    result = invoke("validate", str(path), "--set", "include=other.toml")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --set include=other.toml: include cannot be overridden")


def test_grid_reaches_list_items(builtin_plugins, write_recipe, tmp_path):
    from mtbert.sweep import _load, grid_variants, parse_grid

    grid = parse_grid(["gradient_transforms[0].max_norm=0.5,2.0"])
    assert grid == [("gradient_transforms[0].max_norm", ["0.5", "2.0"])]
    variants = grid_variants("tiny", grid, tmp_path)
    path = write_recipe(CLIP)
    values = [_load(path, [], v.overrides, builtin_plugins).gradient_transforms[0].options.max_norm for v in variants]
    assert values == [0.5, 2.0]
    with pytest.raises(RecipeError) as info:
        _load(path, [], ["gradient_transforms[0].max_norm=-2"], builtin_plugins)
    assert info.value.problems[0].startswith("--grid gradient_transforms[0].max_norm:")


# --------------------------------------------------------------------------- validate --show
def test_validate_show_prints_every_key_unset_ones_as_comments(builtin_plugins, data_dir, tmp_path, monkeypatch):
    from mtbert.recipe import DataSection, ModelSection, OptimSection, TaskSection, TrainSection

    monkeypatch.chdir(tmp_path)  # a shipped recipe's name, from a folder without recipes/
    result = invoke("validate", "ablations/mlm", "--show", "--set", f"data.dir={json.dumps(str(data_dir))}")
    assert result.exit_code == 0, result.output
    text = result.stdout.rsplit("\n", 2)[0]
    resolved = tomllib.loads(text)  # the comments keep it valid TOML
    assert resolved["name"] == "ablation-mlm"
    tables: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        tables.setdefault(current, []).append(line)
    sections = {"model": ModelSection, "data": DataSection, "optim": OptimSection, "train": TrainSection,
                "tasks.sst": TaskSection}
    for table, cls in sections.items():
        body = "\n".join(tables[table])
        for field in attrs.fields(cls):
            if field.name in ("input", "head") and table.startswith("tasks"):
                continue
            assert f"\n{field.name} = " in body or f"\n# {field.name} = <unset>" in body, (table, field.name)
    assert "# patience = <unset>  # stop after N evaluations" in "\n".join(tables["train"])
    assert "# hidden_dropout = <unset>" in "\n".join(tables["model"])
    assert "# max_steps = <unset>" in "\n".join(tables["stages"])  # the mlm stage's own unset option


# --------------------------------------------------------------------------- plugins --kind
def test_plugins_kind_filters_and_shows_step_modes(builtin_plugins):
    result = invoke("plugins", "--kind", "gradient-transforms")
    assert result.exit_code == 0
    assert "plugins:" not in result.stdout and "samplers:" not in result.stdout
    assert "pcgrad  [mtbert" in result.stdout and "(step mode: requires all-tasks)" in result.stdout
    assert "(step mode: requires any)" in result.stdout  # clip-norm
    sampler = invoke("plugins", "--kind", "sampler").stdout
    assert "(step mode: gives one-task or all-tasks" in sampler
    bad = invoke("plugins", "--kind", "heds")
    assert bad.exit_code == 2 and "did you mean 'head'" in bad.output


def test_third_party_components_come_before_the_builtins(monkeypatch):
    from mtbert import hookimpl
    from mtbert.cli import plugin_report
    from mtbert.plugins import load_plugins, set_plugins

    @attrs.define
    class Zero:
        """A third-party combiner for this test."""

        requires_step_mode = None

        def build(self, tasks, model=None):
            raise NotImplementedError

    class ThirdParty:
        @hookimpl
        def mtbert_register_loss_combiners(self, register):
            register("zz-third-party", Zero)

    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    set_plugins(load_plugins([("third-party", ThirdParty())]))
    try:
        entries = plugin_report("loss_combiner")["components"]["loss_combiner"]
    finally:
        set_plugins(None)
    assert entries[0]["name"] == "zz-third-party" and not entries[0]["builtin"]
    assert all(e["builtin"] for e in entries[1:]) and len(entries) > 1


# --------------------------------------------------------------------------- progress
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_tqdm_bar_on_a_terminal_and_ten_lines_at_most_elsewhere():
    log = io.StringIO()
    bar = Progress(1000, "multitask epoch 1/1", stream=log)
    for _ in range(1000):
        bar.update(1, loss=0.5)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in log.getvalue()
    assert lines[-1].startswith("multitask epoch 1/1: 100%") and "1000/1000" in lines[-1] and "loss=0.5" in lines[-1]
    resumed = io.StringIO()
    bar = Progress(10, "x", stream=resumed, start=7)
    for _ in range(3):
        bar.update(1)
    assert len(resumed.getvalue().splitlines()) == 3  # 80%, 90%, 100%: no line for the part done before
    terminal = _Terminal()
    bar = Progress(50, "eval", stream=terminal)
    assert bar.bar is not None and type(bar.bar).__module__.startswith("tqdm")
    for _ in range(50):
        bar.update(1)
    bar.close()
    assert "50/50" in terminal.getvalue()


def test_chunked_tokenization_equals_one_call(builtin_plugins, data_dir, minilm_dir, monkeypatch):
    import sys

    from mtbert.engine import cache
    from mtbert.engine.data import TaskData
    from mtbert.model.backbone import load_backbone

    spec = builtin_plugins.registry.find("task", "para").factory
    pair = builtin_plugins.registry.find("input_format", "separate-pair").factory()
    task = TaskData(name="para", spec=spec, input_format=pair, input_format_name="separate-pair")
    examples = spec.read(data_dir / "quora-dev.csv", "dev", strict=False, warn=lambda m: None, key="k").examples[:300]
    tokenizer = load_backbone("minilm-l6").tokenizer
    monkeypatch.setattr(cache, "CHUNK", 64)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    chunked = cache.encode_in_chunks(task, "dev", examples, tokenizer, 128, progress=True)
    assert "tokenize para dev" in sys.stderr.getvalue()
    whole = pair.encode_examples(tokenizer, examples, 128)
    assert chunked == whole


# --------------------------------------------------------------------------- runs: last line, keep_last, resume, API
def _data_set(data_dir: Path) -> str:
    return f"data.dir={json.dumps(str(data_dir))}"


def test_run_prints_the_folder_last_and_drops_checkpoints_last(builtin_plugins, write_recipe, data_dir, minilm_dir, tmp_path):
    path = write_recipe(TINY)
    out = tmp_path / "run"
    result = invoke("run", str(path), "--out", str(out), "--set", _data_set(data_dir))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == str(out)
    assert (out / "checkpoints" / "best.safetensors").is_file()
    assert not (out / "checkpoints" / "last").exists()
    assert (out / "checkpoints" / "encoder-config" / "vocab.txt").is_file()
    assert not (out / "checkpoints" / "encoder").exists()  # no folder that looks like a model without weights
    kept = tmp_path / "kept"
    result = invoke("run", str(path), "--out", str(kept), "--set", _data_set(data_dir), "--set", "train.keep_last=true")
    assert (kept / "checkpoints" / "last" / "state.json").is_file()
    finished = invoke("resume", str(kept))
    assert finished.exit_code == 2 and "has finished" in finished.output


def test_resume_continues_from_the_run_folder_alone(builtin_plugins, write_recipe, data_dir, minilm_dir, tmp_path, monkeypatch):
    from mtbert import hookimpl
    from mtbert.engine.run import run_recipe
    from mtbert.engine.trainer import RunInterrupted
    from mtbert.plugins import load_plugins, set_plugins

    class StopAt:
        @hookimpl
        def mtbert_on_step_end(self, run, step, logs):
            if step == 5:
                run.request_stop("test interruption")

    path = write_recipe(TINY)
    overrides = [_data_set(data_dir), "train.checkpoint_every=2"]
    whole, expected = run_recipe(load_recipe(path, overrides, builtin_plugins), builtin_plugins,
                                 out=tmp_path / "whole", say=lambda m: None, warn=lambda m: None)
    stopping = load_plugins([("stop", StopAt())])
    with pytest.raises(RunInterrupted) as info:
        run_recipe(load_recipe(path, overrides, stopping), stopping, out=tmp_path / "cut", say=lambda m: None,
                   warn=lambda m: None)
    assert f"mtbert resume {tmp_path / 'cut'}" in str(info.value)
    monkeypatch.chdir(tmp_path)  # no recipe path: the folder is all resume needs (data.dir from run.json)
    monkeypatch.delenv("MTBERT_DATA_DIR", raising=False)
    set_plugins(builtin_plugins)
    result = invoke("resume", str(tmp_path / "cut"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == str(tmp_path / "cut")
    summary = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert summary["best"]["dev"] == pytest.approx(expected["best"]["dev"], abs=1e-6)
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "finished"
    assert invoke("resume", str(tmp_path)).output.startswith("error: resume: ")  # not a run folder


def test_python_api_runs_a_file_a_name_or_a_dict(builtin_plugins, data_dir, minilm_dir, tmp_path, write_recipe):
    table = tomllib.loads(TINY)
    table["data"] = {"dir": str(data_dir)}
    result = mtbert.run(table, overrides=["optim.epochs=1"], out=tmp_path / "dict", say=None)
    folder, metrics = result
    assert folder == tmp_path / "dict" and metrics["best"]["epoch"] == 1
    assert set(result.best) >= {"sst_acc", "sts_pearson", "mean"}
    assert metrics == json.loads((folder / "metrics.json").read_text())
    path = write_recipe(TINY)
    again = mtbert.run(path, ["optim.epochs=1", _data_set(data_dir)], out=tmp_path / "file", say=None)
    assert again.metrics["best"]["dev"] == metrics["best"]["dev"]  # same recipe, same seed
    with pytest.raises(RecipeError) as info:
        mtbert.run("quickstart", ["optim.lr=-1"], out=tmp_path / "bad", say=None)  # a shipped name
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith("--set optim.lr:")
    with pytest.raises(RecipeError) as info:
        mtbert.run({**table, "optim": {"lr": "fast"}}, out=tmp_path / "bad2", say=None)
    assert info.value.problems[0].startswith("recipe dict: optim.lr:")


# --------------------------------------------------------------------------- a plugin ships its task data
def test_a_plugin_task_reads_its_own_data_folder(tmp_path):
    from mtbert import hookimpl
    from mtbert.engine.data import missing_data_files
    from mtbert.testing import TINY_SENTIMENT, run_tiny_recipe, tiny_data_dir, tiny_plugins, tiny_recipe_table

    shipped = tmp_path / "plugin_package" / "data"  # what Path(__file__).parent / "data" is in a plugin
    shipped.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        source = tiny_data_dir() / TINY_SENTIMENT.files[split]
        (shipped / f"own-{split}.csv").write_text(source.read_text())
    own = attrs.evolve(TINY_SENTIMENT, name="own_sentiment", files={s: f"own-{s}.csv" for s in ("train", "dev", "test")},
                       metric_key="own_sentiment_acc", data_folder=lambda: shipped)

    class OwnData:
        @hookimpl
        def mtbert_register_tasks(self, register):
            register("own_sentiment", own)

    plugins = tiny_plugins(("own-data", OwnData()))
    empty = tmp_path / "no-data-here"
    empty.mkdir()
    table = tiny_recipe_table(tasks={"own_sentiment": {}, "tiny_similarity": {}})
    table["data"]["dir"] = str(empty)  # the recipe's data.dir lacks the task's files: its own folder serves them
    from mtbert.recipe import validate

    recipe = validate(table, plugins)
    missing = missing_data_files(recipe)
    assert all("own_sentiment" not in line for line in missing) and any("tiny_similarity" in line for line in missing)
    table["data"]["dir"] = str(tiny_data_dir())
    folder, summary = run_tiny_recipe(plugins, tmp_path / "run", table=table)
    assert "own_sentiment_acc" in summary["best"]["dev"]
    files = json.loads((folder / "run.json").read_text())["data"]["own_sentiment"]
    assert Path(files["train"]) == (shipped / "own-train.csv").resolve()
