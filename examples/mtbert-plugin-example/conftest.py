"""Load mtbert's test kit: its fixtures (mtbert_plugins, mtbert_tiny_model, mtbert_tiny_batch,
mtbert_tiny_run) see this package's plugin through the override below."""

import pytest

pytest_plugins = ["mtbert.testing"]


@pytest.fixture
def mtbert_plugin_modules():
    """The plugin under test, loaded beside mtbert's builtins (the module itself: works installed or not)."""
    from mtbert_plugin_example import dwa

    return [("dwa", dwa)]
