"""Task data: reading the CS224N files into examples, and the :class:`TaskSpec` that describes a task.

Importing this package stays cheap (no torch): metrics are imported when scores are computed.
"""

from __future__ import annotations

from mtbert.data.readers import Example, ReadResult, SkippedRow, parse_label, print_warning, read_examples
from mtbert.data.tasks import SPLITS, TaskSpec

__all__ = [
    "SPLITS",
    "Example",
    "ReadResult",
    "SkippedRow",
    "TaskSpec",
    "parse_label",
    "print_warning",
    "read_examples",
]
