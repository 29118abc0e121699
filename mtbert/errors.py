"""User-facing errors.

Every mistake a user can make (a bad recipe, a missing file, a broken plugin) raises a
subclass of :class:`MtbertError` whose message is one complete line naming the file, key or
plugin at fault. The CLI prints that line without a traceback; anything else is a bug.
"""

from __future__ import annotations


class MtbertError(Exception):
    """Base class for errors caused by user input rather than by mtbert itself."""


class RecipeError(MtbertError):
    """A recipe is malformed, or names something that does not exist.

    ``problems`` holds every problem found, one line each, so that all of them can be shown
    at once rather than one per run.
    """

    def __init__(self, problems: list[str] | str):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class DataError(MtbertError):
    """A data file is missing or (under ``data.strict``) holds rows that cannot be used."""


class PluginError(MtbertError):
    """A plugin failed to load, registered a duplicate name, or broke its contract."""


class CheckpointError(MtbertError):
    """A checkpoint folder or run folder cannot be read."""


class RunInterrupted(MtbertError):
    """Training stopped on request (Ctrl-C or a plugin); the state was saved for --resume."""
