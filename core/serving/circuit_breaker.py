"""A circuit breaker for a remote store: after a few failures in a row, stop asking for a while.

    closed --(failure_threshold failures in a row)--> open --(retry_after_s)--> half-open
    half-open --(the one probe succeeds)--> closed;  half-open --(it fails)--> open again

While open, :meth:`CircuitBreaker.allow` says no at once, so a Redis that accepts connections but never
answers costs the engine nothing per call instead of two socket timeouts. Counters (``failures``,
``skipped``, ``opened``) go into the store's stats.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class CircuitBreaker:
    """Thread-safe. ``clock`` (seconds, monotonic) can be replaced in tests."""

    def __init__(self, failure_threshold: int = 3, retry_after_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {retry_after_s}")
        self.failure_threshold = int(failure_threshold)
        self.retry_after_s = float(retry_after_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._in_a_row = 0
        self._opened_at: float | None = None
        self._probing = False
        self.failures = 0
        self.skipped = 0
        self.opened = 0

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.retry_after_s:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        """Whether to try the store now. While open: no (counted in ``skipped``); half-open: one probe."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "half-open" and not self._probing:
                self._probing = True
                return True
            self.skipped += 1
            return False

    def succeeded(self) -> None:
        with self._lock:
            self._in_a_row = 0
            self._opened_at = None
            self._probing = False

    def failed(self) -> bool:
        """Record a failure; True when this one opened the breaker."""
        with self._lock:
            self.failures += 1
            self._in_a_row += 1
            was_probe = self._probing
            self._probing = False
            if was_probe or self._in_a_row >= self.failure_threshold:
                self._opened_at = self._clock()
                self.opened += 1
                return True
            return False

    def stats(self) -> dict:
        with self._lock:
            return {"breaker": self._state(), "failures": self.failures, "skipped": self.skipped,
                    "opened": self.opened}
