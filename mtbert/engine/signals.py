"""Ctrl-C and SIGTERM during a run: finish the step, save, stop.

SIGTERM is what ``timeout``, SLURM, ``docker stop`` and systemd send before they kill: it is
treated like Ctrl-C, so the run saves ``checkpoints/last``, is marked interrupted and prints
the command that resumes it. A second signal aborts at once (without saving this step).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any


class StopOnSignal:
    """Context manager turning the first SIGINT/SIGTERM into ``run.request_stop(...)``."""

    SIGNALS = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}

    def __init__(self, run: Any):
        self.run = run
        self.previous: dict[int, Any] = {}
        self.first = 0.0

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self.handle)
        return self

    def handle(self, signum: int, frame: Any) -> None:
        if self.run.stop_requested and self.run.failure is None:
            # Under torchrun a Ctrl-C reaches a worker twice (from the terminal and forwarded by
            # torchrun's agent): only a second Ctrl-C that comes later aborts.
            if self.run.distributed.enabled and time.monotonic() - self.first < 3.0:
                return
            raise KeyboardInterrupt
        self.first = time.monotonic()
        self.run.request_stop(self.SIGNALS.get(signum, "interrupted"))
        if self.run.distributed.is_main:
            name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
            print(f"\n{name}: finishing this step and saving state ({name} again to abort without saving)",
                  file=sys.stderr)

    def __exit__(self, *exc: Any) -> bool:
        for signum, previous in self.previous.items():
            if previous is not None:
                signal.signal(signum, previous)
        return False
