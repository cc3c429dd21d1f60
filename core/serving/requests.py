"""What the dynamic batcher queues: one :class:`Request` per call (its future, deadline and rows), the
:class:`Bucket` of requests that can share a batch, the batcher's errors and its :class:`BatcherStats`."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..plugin.errors import MotorpoolError


class QueueFull(MotorpoolError, RuntimeError):
    """The batcher's queue holds ``max_queue`` requests; the request was rejected at once, not queued."""

    def __init__(self, message: str, *, max_queue: int):
        super().__init__(message)
        self.max_queue = max_queue


class BatcherClosed(MotorpoolError, RuntimeError):
    """The batcher was closed: it takes no new request, and ``close(drain=False)`` cancelled the queued ones."""


class Request:
    """One request. ``submit`` hands out a Future; a blocking call waits on a bare lock instead (a Future's
    condition costs its waiter a second wake-up under contention, and the GIL a convoy)."""

    __slots__ = ("inputs", "rows", "future", "enqueued", "deadline", "latch", "outcome", "baton", "thread")

    def __init__(self, inputs: tuple, rows: int, enqueued: float, deadline: float | None, *, blocking: bool):
        self.inputs, self.rows = inputs, rows
        self.enqueued, self.deadline = enqueued, deadline
        self.future: Future | None = None if blocking else Future()
        self.latch: Any = None
        self.thread = threading.get_ident() if blocking else None
        if blocking:
            self.latch = threading.Lock()
            self.latch.acquire()  # released once, by whoever resolves the request
        self.outcome: tuple[bool, Any] | None = None
        #: the next blocked caller of the same batch, woken by this one once it wakes (see _run)
        self.baton: Request | None = None

    def start(self) -> bool:
        """Mark it running; False when its caller cancelled it meanwhile."""
        if self.future is None:
            return True
        try:
            return self.future.set_running_or_notify_cancel()
        except RuntimeError:  # someone else already resolved this future
            return False

    def resolve(self, ok: bool, value: Any) -> None:
        """Deliver the result (``ok``) or the exception. Each request is resolved by exactly one party: the
        one that took it off its queue under the lock."""
        if self.future is None:
            self.outcome = (ok, value)
            self.latch.release()
            return
        future = self.future
        try:
            if ok:
                future.set_result(value)
            # a queued request's future is still PENDING; move it on so a late cancel() cannot race this
            elif future.running() or future.set_running_or_notify_cancel():
                future.set_exception(value)
        except (InvalidStateError, RuntimeError):  # resolved (or cancelled) by someone else: nothing to do
            pass

    def wait(self) -> Any:
        self.latch.acquire()
        baton = self.baton
        if baton is not None:
            baton.latch.release()
        ok, value = self.outcome
        if ok:
            return value
        raise value


class Bucket:
    """The queue of one (non-batch shapes, dtypes) group, oldest first."""

    __slots__ = ("requests", "rows")

    def __init__(self):
        self.requests: deque[Request] = deque()
        self.rows = 0


@dataclass(frozen=True)
class BatcherStats:
    """A snapshot of a batcher's counters. Times are in milliseconds over the last ``window`` batches."""

    submitted: int
    completed: int
    failed: int
    rejected: int
    timed_out: int
    cancelled: int
    queued: int
    batches: int
    retried_batches: int
    #: rows per batch run -> how many batches had that many
    batch_sizes: dict[int, int] = field(default_factory=dict)
    #: how long requests waited in the queue: p50, p90, p99, max
    queue_delay_ms: dict[str, float] = field(default_factory=dict)
    #: how long each batch took to run: p50, p90, p99, max
    run_ms: dict[str, float] = field(default_factory=dict)

    @property
    def mean_batch_size(self) -> float:
        n = sum(self.batch_sizes.values())
        return sum(k * v for k, v in self.batch_sizes.items()) / n if n else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["batch_sizes"] = {str(k): v for k, v in sorted(self.batch_sizes.items())}
        d["mean_batch_size"] = round(self.mean_batch_size, 3)
        return d


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.fromiter(values, dtype=np.float64, count=len(values)) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a.max())}
