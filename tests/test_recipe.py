"""Recipe reading and validation: every kind of mistake gives its own precise line."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from mtbert import hookimpl
from mtbert.errors import RecipeError
from mtbert.plugins import load_plugins
from mtbert.recipe import load_recipe, parse_override
from mtbert.schema import option

REPO = Path(__file__).resolve().parent.parent

BASE = """\
name = "t"

[tasks.sst]

[tasks.sts]
"""


def problems(path, plugins, overrides=()):
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides), plugins)
    return info.value.problems


def test_minimal_recipe_gets_defaults(write_recipe, builtin_plugins):
    recipe = load_recipe(write_recipe(BASE), [], builtin_plugins)
    assert list(recipe.tasks) == ["sst", "sts"]
    assert recipe.tasks["sst"].input.name == "single"
    assert recipe.tasks["sts"].input.name == "separate-pair"
    assert recipe.tasks["sts"].head.name == "linear"
    assert recipe.sampler.name == "round-robin" and recipe.loss_combiner.name == "sum"
    assert [s.name for s in recipe.stages] == ["multitask"]
    assert recipe.optim.lr == 2e-5 and recipe.seed == 11711


def test_unknown_top_level_key_suggests(write_recipe, builtin_plugins):
    found = problems(write_recipe(BASE + "\n[optm]\nlr = 1\n"), builtin_plugins)
    assert len(found) == 1
    assert "optm: unknown key — did you mean 'optim'?" in found[0]
    assert "recipe.toml:" in found[0]


def test_unknown_section_key_names_path_line_and_suggestion(write_recipe, builtin_plugins):
    path = write_recipe(BASE + "\n[optim]\nlrr = 3e-5\n")
    (line,) = problems(path, builtin_plugins)
    assert line.startswith(f"{path}:8: optim.lrr: unknown key — did you mean 'lr'?")
    assert "allowed: lr, head_lr" in line


def test_wrong_type(write_recipe, builtin_plugins):
    (line,) = problems(write_recipe(BASE + '\n[optim]\nlr = "fast"\n'), builtin_plugins)
    assert line.endswith("optim.lr: 'fast' is not a number")


def test_out_of_range(write_recipe, builtin_plugins):
    (line,) = problems(write_recipe(BASE + "\n[model]\nhidden_dropout = 1.5\n"), builtin_plugins)
    assert line.endswith("model.hidden_dropout: 1.5 must be at most 1")


def test_choice_not_allowed(write_recipe, builtin_plugins):
    (line,) = problems(write_recipe(BASE + '\n[optim]\nschedule = "linear"\n'), builtin_plugins)
    assert "optim.schedule: 'linear' is not allowed; choose one of 'linear-warmup', 'constant'" in line
    assert "did you mean 'linear-warmup'?" in line


def test_unknown_component_lists_installed_and_suggests(write_recipe, builtin_plugins):
    text = BASE.replace("[tasks.sts]", '[tasks.sts]\nhead = { name = "linaer" }')
    (line,) = problems(write_recipe(text), builtin_plugins)
    assert "tasks.sts.head.name: unknown head 'linaer' for task sts; installed: " in line
    assert "linear" in line.split("installed: ")[1] and line.endswith("— did you mean 'linear'?")


def test_unknown_component_option(write_recipe, builtin_plugins):
    text = BASE.replace("[tasks.sts]", '[tasks.sts]\nhead = { name = "linear", poolng = "mean" }')
    (line,) = problems(write_recipe(text), builtin_plugins)
    assert "tasks.sts.head.poolng: unknown key — did you mean 'pooling'?" in line


def test_component_option_choice(write_recipe, builtin_plugins):
    text = BASE.replace("[tasks.sts]", '[tasks.sts]\nhead = { name = "linear", pooling = "max" }')
    (line,) = problems(write_recipe(text), builtin_plugins)
    assert "tasks.sts.head.pooling: 'max' is not allowed; choose one of 'pooler', 'cls', 'mean'" in line


def test_unknown_task(write_recipe, builtin_plugins):
    (line,) = problems(write_recipe(BASE + "\n[tasks.sstt]\n"), builtin_plugins)
    assert "tasks.sstt: unknown task 'sstt'; installed: cfimdb, para, sst, sts — did you mean 'sst'?" in line


def test_input_format_must_fit_the_task(write_recipe, builtin_plugins):
    text = BASE.replace("[tasks.sst]", '[tasks.sst]\ninput = "separate-pair"')
    (line,) = problems(write_recipe(text), builtin_plugins)
    assert "tasks.sst.input: 'separate-pair' cannot serve task sst: the task has single sentences" in line


def test_head_option_checked_against_task(write_recipe, builtin_plugins):
    text = BASE.replace("[tasks.sst]", "[tasks.sst]\nhead = { name = \"linear\", class_weights = [1.0, 2.0] }")
    (line,) = problems(write_recipe(text), builtin_plugins)
    assert "class_weights needs 5 numbers, got 2" in line


def test_all_problems_reported_at_once(write_recipe, builtin_plugins):
    text = BASE + '\n[optim]\nlr = "x"\nepochs = 0\n\n[train]\nprecision = "fp8"\n'
    found = problems(write_recipe(text), builtin_plugins)
    assert len(found) == 3
    assert any("optim.lr" in p for p in found)
    assert any("optim.epochs: 0 must be at least 1" in p for p in found)
    assert any("train.precision" in p for p in found)


def test_invalid_toml_names_file_and_line(write_recipe, builtin_plugins):
    path = write_recipe(BASE + "\n[optim\nlr = 1\n")
    (line,) = problems(path, builtin_plugins)
    assert line.startswith(f"{path}: invalid TOML:") and "line 7" in line


def test_missing_recipe_file(tmp_path, builtin_plugins):
    (line,) = problems(tmp_path / "nope.toml", builtin_plugins)
    assert "recipe file not found" in line and "nope.toml" in line


def test_include_merges_and_child_wins(write_recipe, builtin_plugins):
    write_recipe(BASE + "\n[optim]\nlr = 1e-5\nepochs = 4\n", name="base.toml")
    child = write_recipe('include = "base.toml"\nname = "child"\n\n[optim]\nlr = 3e-5\n', name="child.toml")
    recipe = load_recipe(child, [], builtin_plugins)
    assert recipe.name == "child" and recipe.optim.lr == 3e-5 and recipe.optim.epochs == 4
    assert list(recipe.tasks) == ["sst", "sts"]


def test_include_a_component_whose_name_changes_replaces_the_included_one(write_recipe, builtin_plugins):
    # linear's pair option must not leak into cosine (which has none: "pair: unknown key" at a
    # line holding no pair), and a same-named table still merges its options.
    write_recipe(BASE + '\n[tasks.sts.head]\nname = "linear"\npair = ["u", "v"]\ndropout = 0.3\n'
                 '\n[tasks.sst.head]\nname = "linear"\ndropout = 0.3\n', name="base.toml")
    child = write_recipe('include = "base.toml"\n\n[tasks.sts.head]\nname = "cosine"\n'
                         '\n[tasks.sst.head]\nname = "linear"\npooling = "cls"\n', name="child.toml")
    recipe = load_recipe(child, [], builtin_plugins)
    sts, sst = recipe.tasks["sts"].head, recipe.tasks["sst"].head
    assert sts.name == "cosine" and sts.options == type(sts.options)()  # cosine with its own defaults
    assert sst.name == "linear" and sst.options.pooling == "cls" and sst.options.dropout == 0.3  # merged


def test_a_recipe_under_its_old_folder_still_loads_with_a_warning(builtin_plugins, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.warns(FutureWarning, match=r"recipes/seeds/ is now recipes/reports/"):
        recipe = load_recipe(Path("recipes/seeds/000-chan-rr-cosine.toml"), [], builtin_plugins)
    assert recipe.source == str(Path("recipes/reports/000-chan-rr-cosine.toml"))
    from mtbert.shipped import resolve_recipe

    with pytest.warns(FutureWarning, match=r"recipes/seeds/ is now recipes/reports/"):  # a shipped recipe's old name
        assert resolve_recipe("seeds/000-chan-rr-cosine") == REPO / "recipes" / "reports" / "000-chan-rr-cosine.toml"


def test_include_cycle_and_missing_include(write_recipe, builtin_plugins):
    write_recipe('include = "b.toml"\n' + BASE, name="a.toml")
    b = write_recipe('include = "a.toml"\n', name="b.toml")
    (line,) = problems(b, builtin_plugins)
    assert "include cycle" in line
    missing = write_recipe('include = "absent.toml"\n' + BASE, name="m.toml")
    (line,) = problems(missing, builtin_plugins)
    assert "include: file not found" in line and "absent.toml" in line


def test_error_in_included_file_points_there(write_recipe, builtin_plugins):
    base = write_recipe(BASE + "\n[optim]\nepochs = -1\n", name="base.toml")
    child = write_recipe('include = "base.toml"\n', name="child.toml")
    (line,) = problems(child, builtin_plugins)
    assert line.startswith(f"{base}:8: optim.epochs")


def test_overrides_apply_and_are_type_checked(write_recipe, builtin_plugins):
    path = write_recipe(BASE)
    recipe = load_recipe(path, ["optim.lr=3e-5", "tasks.sts.head.pooling=mean", "sampler.shuffle_order=true",
                                'tasks.sts.head.pair=["u","v","abs-diff"]'], builtin_plugins)
    assert recipe.optim.lr == 3e-5
    assert recipe.tasks["sts"].head.options.pooling == "mean"
    assert recipe.tasks["sts"].head.options.pair == ["u", "v", "abs-diff"]
    assert recipe.sampler.options.shuffle_order is True
    (line,) = problems(path, builtin_plugins, ["optim.lr=abc"])
    assert line == "--set optim.lr: 'abc' is not a number"


def test_override_syntax_errors():
    with pytest.raises(RecipeError, match="expected KEY.PATH=VALUE"):
        parse_override("optim.lr")
    with pytest.raises(RecipeError, match="empty key"):
        parse_override("optim..lr=1")
    assert parse_override("sampler.name=loop") == (["sampler", "name"], "loop")
    assert parse_override("optim.betas=[0.9, 0.98]") == (["optim", "betas"], [0.9, 0.98])


def test_requires_unsatisfied(write_recipe, builtin_plugins):
    path = write_recipe('requires = ["mtbert-gradvac>=0.2"]\n' + BASE)
    (line,) = problems(path, builtin_plugins)
    assert "requires: plugin mtbert-gradvac is required but not installed (pip install 'mtbert-gradvac>=0.2')" in line
    path = write_recipe('requires = ["mtbert>=99"]\n' + BASE)
    (line,) = problems(path, builtin_plugins)
    assert "is installed but 'mtbert>=99' is required" in line


def test_step_mode_incompatibility_rejected(write_recipe, monkeypatch):
    @attrs.define
    class NeedsAllTasks:
        """A transform that compares tasks within a step."""

        requires_step_mode = "all-tasks"
        needs = "per-task"
        reduction: str = option("sum", help="unused")

        def build(self, shared):  # pragma: no cover - never built: the recipe is rejected
            raise AssertionError

    class Plugin:
        @hookimpl
        def mtbert_register_gradient_transforms(self, register):
            register("needs-all", NeedsAllTasks)

    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    plugins = load_plugins([("test-plugin", Plugin())])
    path = write_recipe(BASE + '\n[[gradient_transforms]]\nname = "needs-all"\n')
    (line,) = problems(path, plugins)
    assert "gradient_transforms[0]: 'needs-all' needs a batch of every task per step" in line
    assert 'set sampler.step = "all-tasks"' in line
    load_recipe(path, ["sampler.step=all-tasks"], plugins)  # and the fix is accepted


def test_unknown_checkpoint_name(write_recipe, builtin_plugins):
    (line,) = problems(write_recipe(BASE + '\n[model]\ncheckpoint = "minilm-l12"\n'), builtin_plugins)
    assert "unknown checkpoint 'minilm-l12'" in line and "did you mean 'minilm-l6'?" in line
    (line,) = problems(write_recipe(BASE + '\n[model]\ncheckpoint = "./no/such/folder"\n'), builtin_plugins)
    assert "model.checkpoint: folder not found: ./no/such/folder" in line


def test_selection_metric_must_exist(write_recipe, builtin_plugins):
    (line,) = problems(write_recipe(BASE + '\n[train]\nselect = "para_acc"\n'), builtin_plugins)
    assert "train.select: 'para_acc' is not a dev metric of this recipe" in line


def test_stage_tasks_must_be_configured(write_recipe, builtin_plugins):
    text = BASE + '\n[[stages]]\nname = "multitask"\ntasks = ["para"]\n\n[[stages]]\nname = "multitask"\n'
    (line,) = problems(write_recipe(text), builtin_plugins)
    assert "stages[0].tasks: task 'para' is not configured under [tasks]" in line


def test_resolved_recipe_round_trips(write_recipe, builtin_plugins, tmp_path):
    recipe = load_recipe(write_recipe(BASE), ["tasks.sts.head.pooling=mean"], builtin_plugins)
    resolved = tmp_path / "resolved.toml"
    resolved.write_text(recipe.to_toml(), encoding="utf-8")
    again = load_recipe(resolved, [], builtin_plugins)
    assert again.to_dict() == recipe.to_dict()


@pytest.mark.parametrize("path", sorted((REPO / "recipes").rglob("*.toml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_recipe_validates_and_says_how_to_run_it(path, monkeypatch):
    monkeypatch.delenv("MTBERT_PLUGINS", raising=False)  # shipped recipes may use any installed plugin
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# Run: ") and "mtbert run recipes/" in first, f"{path} must begin with its run command"
    load_recipe(path, [], load_plugins())


def test_best_recipe_is_full_proportional_as_an_ensemble_of_three(monkeypatch):
    """recipes/best.toml promotes the measured recipe unchanged (RESULTS.md): only its labels
    and ``train.ensemble`` differ from full-proportional.toml, so its runs pool with that recipe's."""
    from mtbert.recipe import changed_keys

    monkeypatch.delenv("MTBERT_PLUGINS", raising=False)
    plugins = load_plugins()
    best = load_recipe(REPO / "recipes" / "best.toml", [], plugins)
    promoted = load_recipe(REPO / "recipes" / "full-proportional.toml", [], plugins)
    assert best.train.ensemble == 3
    assert changed_keys(promoted.to_dict(), best.to_dict()) == ["description", "name", "train.ensemble"]
