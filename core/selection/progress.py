"""A progress display for ``fastest``: which candidate, and whether it is compiling, verifying or timing.

It writes to stderr, and only when stdout and stderr are both terminals: a script whose output is piped
or redirected, a CI log or a test run sees nothing. ``progress=True``/``False`` forces it on or off.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO


def wanted(setting: bool | None) -> bool:
    if setting is not None:
        return bool(setting)
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


class Progress:
    """One status line per candidate, rewritten in place as it moves through its stages."""

    def __init__(self, total: int, *, enabled: bool | None = None, stream: IO[str] | None = None,
                 title: str = "fastest"):
        self.total = total
        self.title = title
        self.enabled = wanted(enabled)
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._index = 0
        self._name = ""
        self._started = time.perf_counter()

    def _write(self, text: str, *, final: bool = False) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
            self.stream.flush()

    def candidate(self, name: str, how: str = "") -> None:
        self._index += 1
        self._name = name
        self._started = time.perf_counter()
        self.stage("start" + (f" ({how})" if how else ""))

    def stage(self, stage: str) -> None:
        elapsed = time.perf_counter() - self._started
        self._write(f"motorpool {self.title} [{self._index}/{self.total}] {self._name}: {stage} ... {elapsed:.1f}s")

    def done(self, outcome: str) -> None:
        elapsed = time.perf_counter() - self._started
        self._write(f"motorpool {self.title} [{self._index}/{self.total}] {self._name}: {outcome} ({elapsed:.1f}s)",
                    final=True)

    def note(self, text: str) -> None:
        self._write(f"motorpool {self.title}: {text}", final=True)
