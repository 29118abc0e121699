"""Plugin loading: entry points, isolation switches, broken and duplicate plugins, tracing."""

from __future__ import annotations

import json
import sys
import textwrap

import attrs
import pytest
from click.testing import CliRunner

from mtbert import hookimpl, hookspecs
from mtbert.cli import cli
from mtbert.errors import PluginError, RecipeError
from mtbert.plugins import KINDS, load_plugins, set_plugins
from mtbert.recipe import load_recipe
from mtbert.schema import option

BUILTIN_COMPONENTS = {
    "task": {"sst", "para", "sts", "cfimdb"},
    "checkpoint": {"minilm-l6", "random:tiny"},
    "input_format": {"single", "separate-pair", "concat-pair"},
    "head": {"linear", "mlp", "cosine", "pair-classifier"},
    "sampler": {"round-robin", "in-turn", "upsample", "loop", "random-subset", "proportional", "temperature"},
    "loss_combiner": {"sum", "mean", "weights", "uncertainty", "gradnorm"},
    "gradient_transform": {"clip-norm", "pcgrad"},
    "regularizer": {"smart", "mixout", "norm-penalty"},
    "stage": {"multitask", "mlm"},
}


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """Install a throwaway distribution (dist-info + module) on sys.path: a real entry point."""

    def make(dist: str, version: str, module: str, source: str, entry_name: str | None = None):
        root = tmp_path / f"site-{dist}"
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[mtbert]\n{entry_name or dist} = {module}\n")
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(root))
        monkeypatch.delitem(sys.modules, module, raising=False)
        return root

    return make


def test_builtins_load_through_the_entry_point_group(monkeypatch):
    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    plugins = load_plugins()
    for kind, names in BUILTIN_COMPONENTS.items():
        assert names <= set(plugins.registry.names(kind)), kind
        for name in names:
            component = plugins.registry.find(kind, name)
            assert component.distribution == "mtbert" and component.version == "0.1.0"
            assert component.plugin in {p.name for p in plugins.plugins}
    assert not plugins.registry.failures
    assert all(p.module.startswith("mtbert_plugins.") for p in plugins.plugins)


def test_every_hookspec_is_a_documented_registration_or_event_hook():
    specs = {n for n in dir(hookspecs) if n.startswith("mtbert_")}
    assert set(KINDS.values()) <= specs
    for name in specs:
        assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"


def test_select_and_disable_plugins(monkeypatch):
    monkeypatch.setenv("MTBERT_PLUGINS", "tasks-cs224n")
    plugins = load_plugins()
    assert [p.name for p in plugins.plugins] == ["tasks-cs224n"]
    assert plugins.registry.names("head") == []
    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    monkeypatch.setenv("MTBERT_DISABLE_PLUGINS", "head-linear")
    plugins = load_plugins()
    assert "head-linear" not in [p.name for p in plugins.plugins]
    assert "linear" not in plugins.registry.names("head") and "mlp" in plugins.registry.names("head")
    monkeypatch.setenv("MTBERT_PLUGINS", "")
    assert load_plugins().plugins == []


def test_broken_plugin_is_one_line_and_the_rest_work(fake_distribution, monkeypatch):
    fake_distribution("mtbert-broken", "0.2", "mtbert_broken", "import no_such_module_xyz\n")
    monkeypatch.setenv("MTBERT_PLUGINS", "builtin,mtbert-broken")
    warnings: list[str] = []
    plugins = load_plugins(warn=warnings.append)
    assert warnings == [
        "plugin mtbert-broken 0.2 (mtbert-broken) failed to load: ModuleNotFoundError: No module named 'no_such_module_xyz'"
    ]
    assert "linear" in plugins.registry.names("head")
    info = {p.name: p for p in plugins.plugins}["mtbert-broken"]
    assert info.error.startswith("ModuleNotFoundError")


def test_broken_plugin_is_fatal_in_strict_mode(fake_distribution, monkeypatch):
    fake_distribution("mtbert-broken", "0.2", "mtbert_broken", "raise RuntimeError('boom')\n")
    monkeypatch.setenv("MTBERT_PLUGINS", "builtin,mtbert-broken")
    monkeypatch.setenv("MTBERT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"plugin mtbert-broken 0.2 \(mtbert-broken\) failed to load: RuntimeError: boom"):
        load_plugins()


def test_recipe_needing_a_broken_plugin_fails_with_its_line(fake_distribution, monkeypatch, write_recipe):
    fake_distribution("mtbert-broken", "0.2", "mtbert_broken", "raise RuntimeError('boom')\n")
    monkeypatch.setenv("MTBERT_PLUGINS", "builtin,mtbert-broken")
    plugins = load_plugins()
    path = write_recipe('[tasks.sst]\nhead = "gradvac-head"\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(path, [], plugins)
    (line,) = info.value.problems
    assert "unknown head 'gradvac-head'" in line
    assert "plugin mtbert-broken 0.2 (mtbert-broken) failed to load: RuntimeError: boom" in line
    path = write_recipe('requires = ["mtbert-broken"]\n[tasks.sst]\n', name="r2.toml")
    with pytest.raises(RecipeError, match="plugin mtbert-broken is required but failed to load: RuntimeError: boom"):
        load_recipe(path, [], plugins)


def test_third_party_component_is_found_and_recorded(fake_distribution, monkeypatch, write_recipe):
    fake_distribution("mtbert-extra", "1.3", "mtbert_extra", """
        import attrs
        from mtbert import hookimpl
        from mtbert.schema import option

        @attrs.define
        class Halve:
            '''Halve every loss (a test combiner).'''
            factor: float = option(0.5, help="scale")
            requires_step_mode = None
            def build(self, task_names, shared):
                raise NotImplementedError

        @hookimpl
        def mtbert_register_loss_combiners(register):
            register("halve", Halve)
    """)
    monkeypatch.setenv("MTBERT_PLUGINS", "builtin,mtbert-extra")
    plugins = load_plugins()
    component = plugins.registry.find("loss_combiner", "halve")
    assert (component.distribution, component.version, component.plugin) == ("mtbert-extra", "1.3", "mtbert-extra")
    recipe = load_recipe(write_recipe('requires = ["mtbert-extra>=1.0"]\nloss_combiner = { name = "halve", factor = 0.25 }\n[tasks.sst]\n'), [], plugins)
    assert recipe.loss_combiner.options.factor == 0.25
    record = {p["name"]: p for p in plugins.record()}["mtbert-extra"]
    assert record["components"] == ["loss_combiner:halve"] and record["hooks"] == ["mtbert_register_loss_combiners"]


def test_duplicate_name_names_both_providers(monkeypatch):
    @attrs.define
    class OtherLinear:
        """Another head called linear."""

        width: int = option(1, help="unused")

    class Clash:
        @hookimpl
        def mtbert_register_heads(self, register):
            register("linear", OtherLinear)

    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    warnings: list[str] = []
    plugins = load_plugins([("clash", Clash())], warn=warnings.append)
    assert len(warnings) == 1
    assert "duplicate head 'linear': registered by plugin 'head-linear' (mtbert 0.1.0) and by plugin 'clash'" in warnings[0]
    assert plugins.registry.find("head", "linear").plugin == "head-linear"  # the first keeps it, no silent rename
    monkeypatch.setenv("MTBERT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="duplicate head 'linear'"):
        load_plugins([("clash", Clash())])


def test_misspelled_hook_is_rejected_with_a_suggestion(monkeypatch):
    class Typo:
        @hookimpl
        def mtbert_register_head(self, register):  # missing the final s
            register("x", object)

    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    warnings: list[str] = []
    load_plugins([("typo", Typo())], warn=warnings.append)
    assert warnings == ["plugin typo - ((in-process)) implements unknown hook mtbert_register_head — did you mean 'mtbert_register_heads'?"]


def test_tracing_prints_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("MTBERT_PLUGINS", "builtin")
    monkeypatch.setenv("MTBERT_TRACE_HOOKS", "1")
    load_plugins()
    assert "mtbert_register_heads" in capsys.readouterr().err


def test_plugins_command_lists_components_with_options(builtin_plugins):
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    heads = {c["name"]: c for c in report["components"]["head"]}
    options = {o["name"]: o for o in heads["linear"]["options"]}
    assert options["pooling"]["default"] == "mean" and options["pooling"]["help"]
    assert heads["linear"]["distribution"] == "mtbert"
    assert {p["name"] for p in report["plugins"]} >= {"head-linear", "tasks-cs224n"}
    text = CliRunner().invoke(cli, ["plugins"])
    assert "heads:" in text.output and "linear  [mtbert 0.1.0]" in text.output and "pooling:" in text.output


def test_importing_mtbert_loads_no_plugin():
    import subprocess

    code = "import mtbert, sys; print(any(m.startswith('mtbert_plugins') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
