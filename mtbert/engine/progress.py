"""Progress bars (tqdm) for training, evaluation, prediction and tokenization.

On a terminal each bar is a tqdm bar on stderr (stdout stays for results, so
``mtbert run ... | tail -1`` is the run folder). Elsewhere (CI logs, files) no bar is drawn:
a training epoch prints one tqdm-formatted line every ``report_every`` of its length, and the
short jobs (evaluation, prediction, tokenization) print nothing, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """A bar of ``total`` units; ``update(n, loss=...)`` advances it and shows the values."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, stream: TextIO | None = None, start: int = 0,
                 unit: str = "step", leave: bool = True, report_every: float | None = 0.1):
        self.total = max(int(total), 1)
        self.desc = desc
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and _is_terminal(self.stream)
        self.count = start
        self.start_count = start
        self.unit = unit
        self.report_every = report_every
        self.reports = 0  # non-terminal lines printed so far; line k is due at k * report_every of the total
        self.max_reports = round(1 / report_every) if report_every else 0
        while self.reports < self.max_reports and self._due(self.reports + 1) <= start:
            self.reports += 1
        self.started = time.perf_counter()
        self.postfix = ""
        self.bar: Any = None
        if self.tty:
            self.bar = tqdm(total=self.total, initial=start, desc=desc, unit=unit, file=self.stream, leave=leave,
                            dynamic_ncols=True, mininterval=0.2)

    def update(self, n: int = 1, **values: float) -> None:
        self.count += n
        if values:
            self.postfix = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        if not self.enabled:
            return
        if self.bar is not None:
            if values:
                self.bar.set_postfix_str(self.postfix, refresh=False)
            self.bar.update(n)
            return
        if self.reports < self.max_reports and self.count >= self._due(self.reports + 1):
            while self.reports < self.max_reports and self._due(self.reports + 1) <= self.count:
                self.reports += 1
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def _due(self, k: int) -> int:
        return min(self.total, max(1, round(k * self.report_every * self.total)))

    def line(self) -> str:
        """The bar as one line of text (what non-terminal logs get)."""
        return tqdm.format_meter(self.count, self.total, time.perf_counter() - self.started, prefix=self.desc,
                                 unit=self.unit, postfix=self.postfix or None, ncols=100, ascii=True,
                                 initial=self.start_count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def track(items: Iterable[T], total: int, desc: str, *, enabled: bool, unit: str = "batch") -> Iterator[T]:
    """Iterate ``items`` under a transient bar (terminal only): evaluation, prediction, tokenization."""
    with Progress(total, desc, enabled=enabled, unit=unit, leave=False, report_every=None) as bar:
        for item in items:
            yield item
            bar.update(1)
