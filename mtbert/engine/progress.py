"""A small progress bar: step count, loss, rate and time left, on one terminal line.

On a terminal the line redraws in place; elsewhere (CI logs, files) a line is printed every
``log_every`` percent so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    def __init__(self, total: int, desc: str, *, enabled: bool = True, stream: TextIO | None = None, start: int = 0):
        self.total = max(total, 1)
        self.desc = desc
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.count = start
        self.start_count = start
        self.started = time.perf_counter()
        self.last_draw = 0.0
        self.next_report = 0.1
        self.postfix = ""

    def update(self, n: int = 1, **values: float) -> None:
        self.count += n
        if values:
            self.postfix = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        if not self.enabled:
            return
        now = time.perf_counter()
        fraction = self.count / self.total
        if self.tty:
            if now - self.last_draw >= 0.2 or self.count >= self.total:
                self.last_draw = now
                self.stream.write("\r" + self.line(now) + "\033[K")
                self.stream.flush()
        elif fraction >= self.next_report or self.count >= self.total:
            self.next_report = (int(fraction * 10) + 1) / 10
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = now - self.started
        done = self.count - self.start_count
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.count) / rate if rate > 0 else 0.0
        width = 20
        filled = int(width * min(self.count / self.total, 1.0))
        bar = "#" * filled + "-" * (width - filled)
        return (f"{self.desc} [{bar}] {self.count}/{self.total} {self.postfix} | "
                f"{rate:.2f} it/s | {_clock(elapsed)}<{_clock(left)}")

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
