"""Plugin event hooks that cannot wreck a run.

A hook that raises in the middle of training used to end the run with a traceback and no
``checkpoints/last``, so it could not be resumed; one raising in ``mtbert_on_run_end`` turned
a finished run into a failure. :class:`GuardedHooks` calls the hooks through pluggy as before
and, when one raises, finds which plugin's implementation did it and:

* ``mtbert_on_run_start``: fails the run at once with one line (nothing was trained yet);
* ``mtbert_on_step_end`` / ``mtbert_on_evaluate``: records the failure and asks the loop to
  stop, so the loop saves ``checkpoints/last`` at its next save point; the run then fails with
  one line naming the plugin and hook and how to resume;
* ``mtbert_on_run_end``: warns with one line; the run stays finished.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable

from mtbert.errors import PluginError


def failing_plugin(hook: Any, exc: BaseException) -> str | None:
    """The name of the plugin whose implementation of ``hook`` raised ``exc`` (None if unknown)."""
    codes = {}
    for impl in hook.get_hookimpls():
        function = getattr(impl.function, "__func__", impl.function)
        code = getattr(function, "__code__", None)
        if code is not None:
            codes[code] = impl.plugin_name
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if frame.f_code in codes:
            return codes[frame.f_code]
    return None


def describe_plugin(run: Any, name: str | None) -> str:
    if name is None:
        return "a plugin"
    for info in run.plugins.plugins:
        if info.name == name:
            return f"plugin '{name}' ({info.distribution} {info.version})"
    return f"plugin '{name}'"


class GuardedHooks:
    """Stands in for ``plugins.hook`` during a run (see the module docstring)."""

    def __init__(self, run: Any):
        self._run = run

    def __getattr__(self, name: str) -> Callable[..., list[Any]]:
        hook = getattr(self._run.plugins.hook, name)
        if not name.startswith("mtbert_on_"):
            return hook

        def call(**kwargs: Any) -> list[Any]:
            try:
                return hook(**kwargs)
            except Exception as exc:  # a plugin's bug: report it as the plugin's, keep the run's state
                self._failed(name, hook, exc)
                return []

        return call

    def _failed(self, name: str, hook: Any, exc: Exception) -> None:
        run = self._run
        plugin = failing_plugin(hook, exc)
        what = f"{type(exc).__name__}: {exc}".splitlines()[0]
        message = f"{describe_plugin(run, plugin)} failed in {name} at step {run.global_step}: {what}"
        disable = f"MTBERT_DISABLE_PLUGINS={plugin}" if plugin else "MTBERT_DISABLE_PLUGINS"
        if name == "mtbert_on_run_end":
            run.warn(f"warning: {message}; the run itself finished and its files are complete")
            return
        if name == "mtbert_on_run_start":
            raise PluginError(f"{message}; nothing was trained (fix or disable it: {disable})")
        if run.failure is None:
            run.failure = f"{message}; fix or disable it ({disable}) and continue with: {run.resume_command()}"
            run.warn(f"warning: {message}; saving the state and stopping")
        run.request_stop("plugin failure")
