"""Dynamic batching: gather concurrent requests into batches in front of any engine, as Triton's dynamic
batcher does.

    >>> with motorpool.DynamicBatcher(engine, max_batch_size=32, max_delay_ms=2.0) as batcher:
    ...     future = batcher.submit(x)            # concurrent.futures.Future
    ...     y = batcher(x)                        # blocking
    ...     y = await batcher.infer(x)            # asyncio, from any event loop

Requests are checked against the engine's input spec when submitted (a bad one raises :class:`InputError`
there and then, and never reaches a batch), queued by their non-batch shapes and dtypes, and run together
when a queue holds a full batch or its oldest request has waited ``max_delay_ms``.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import time
import warnings
import weakref
from collections import Counter, deque
from concurrent.futures import Future
from typing import Any, Callable, Sequence

import torch

from ..engine.batching import BatchLayout, Unsplittable, concat, split_rows
from .requests import BatcherClosed, BatcherStats, Bucket, QueueFull, Request, percentiles

_UNSET: Any = object()


class DynamicBatcher:
    """Batch concurrent requests for ``engine`` (any object with ``input_spec`` that is called like the model).

    - ``max_batch_size``: most rows in one batch (a single request holding more runs alone). On an engine
      with a static batch it is that batch size, and every batch is padded up to it.
    - ``max_delay_ms``: how long the oldest request in a queue may wait for company before its batch goes.
    - ``max_queue``: most requests waiting; one more raises :class:`QueueFull` at once.
    - ``timeout_ms``: default per-request timeout; a request still queued past it fails with
      :class:`TimeoutError` and is not run (``submit(..., timeout_ms=...)`` overrides it).
    - ``pad``: optional function of one request's inputs (a tuple) returning them padded, e.g. a sequence
      length rounded up to a bucket size (see :func:`pad_to_buckets`); requests are grouped after padding.
    - ``workers``: threads running batches (more than one only helps an engine that leaves cores idle).

    A batch that fails is run again one request at a time, so only the bad request gets the error.
    Thread-safe; ``infer`` works from any number of asyncio loops. Close it (or use ``with``) to drain.
    """

    def __init__(self, engine: Any, max_batch_size: int = 32, max_delay_ms: float = 2.0, max_queue: int = 1024,
                 timeout_ms: float | None = None, *, pad: Callable[[tuple], Sequence[Any]] | None = None,
                 workers: int = 1, stats_window: int = 10_000, name: str | None = None):
        self.engine = engine
        self._layout = BatchLayout(engine.input_spec)
        if self._layout.static_batch is not None:
            if max_batch_size not in (32, self._layout.static_batch):  # 32: the default, left as is
                raise ValueError(f"max_batch_size={max_batch_size}: this engine's batch is fixed at "
                                 f"{self._layout.static_batch}")
            max_batch_size = self._layout.static_batch
        for label, value in (("max_batch_size", max_batch_size), ("max_queue", max_queue), ("workers", workers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{label}: expected a positive int, got {value!r}")
        if max_delay_ms < 0:
            raise ValueError(f"max_delay_ms: expected >= 0, got {max_delay_ms!r}")
        if timeout_ms is not None and timeout_ms <= 0:
            raise ValueError(f"timeout_ms: expected a positive number or None, got {timeout_ms!r}")
        self.max_batch_size = max_batch_size
        self.max_delay_ms = float(max_delay_ms)
        self.max_queue = max_queue
        self.timeout_ms = timeout_ms
        self.name = name or f"motorpool-batcher-{id(self):x}"
        self._delay = max_delay_ms / 1e3
        self._pad = pad
        self._cond = threading.Condition(threading.Lock())
        self._buckets: dict[tuple, Bucket] = {}
        self._queued = 0
        self._closed = False
        self._idle = 0                      # workers waiting on the condition
        self._slots = workers               # batches that may run at once (workers, or callers running inline)
        self._running = 0                   # batches running now
        self._slot_waits = 0                # idle workers that have a due batch but no free slot
        self._wake_at: float | None = None  # when an idle worker plans to look again (None: only when told)
        self._deadlines = 0                 # queued requests that carry a deadline
        self._next_deadline = float("inf")
        self._admitted: dict[tuple, tuple[int, tuple]] = {}  # request signatures already checked
        self._split_ok = True               # False once outputs proved unsplittable: then one request per run
        self._counts = Counter()
        self._sizes: Counter[int] = Counter()
        self._delays: deque[float] = deque(maxlen=stats_window)
        self._runs: deque[float] = deque(maxlen=stats_window)
        self._threads = [threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()
        _LIVE.add(self)

    # -- submitting ------------------------------------------------------------------------------------

    def submit(self, *inputs: Any, timeout_ms: float | None = _UNSET) -> Future:
        """Queue one request (inputs with the batch as dimension 0, any number of rows); return its Future.

        Raises at once: :class:`InputError` when the inputs do not fit the engine, :class:`QueueFull` when
        ``max_queue`` requests wait, :class:`BatcherClosed` after ``close()``. The Future's result has the
        model's output structure holding this request's rows only; it fails with :class:`TimeoutError` when
        the request waited past its timeout, or with the engine's error when this request's run failed.
        """
        request, key = self._prepare(inputs, timeout_ms, blocking=False)
        with self._cond:
            self._enqueue(request, key)
        return request.future

    def __call__(self, *inputs: Any, timeout_ms: float | None = _UNSET) -> Any:
        """Submit and wait for the result (blocking).

        When the batch would go at once anyway (``max_delay_ms=0`` or a request that fills a batch), nothing
        is queued and a run slot is free, the calling thread runs it itself: the same batch, two thread
        switches fewer.
        """
        request, key = self._prepare(inputs, timeout_ms, blocking=True)
        with self._cond:
            inline = (self._queued == 0 and self._running < self._slots and not self._closed
                      and (self._delay == 0 or request.rows >= self.max_batch_size))
            if inline:
                self._running += 1
                self._counts["submitted"] += 1
            else:
                self._enqueue(request, key)
        if inline:
            self._run([request])
        return request.wait()

    def _prepare(self, inputs: tuple, timeout_ms: float | None, *, blocking: bool) -> tuple[Request, tuple]:
        if self._closed:
            raise BatcherClosed(f"{self.name} is closed; it takes no new requests")
        if self._pad is not None:
            inputs = tuple(self._pad(inputs))
        rows, key = self._admit(inputs)
        timeout = self.timeout_ms if timeout_ms is _UNSET else timeout_ms
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout / 1e3
        return Request(inputs, rows, now, deadline, blocking=blocking), key

    def _admit(self, inputs: tuple) -> tuple[int, tuple]:
        """Check ``inputs`` against the spec; return (rows, the key of their queue).

        Validity depends only on each input's kind, dtype, shape and device, so signatures already checked
        are remembered and a steady stream of same-shaped requests skips the full check."""
        try:
            signature = tuple((type(x), x.dtype, x.shape, x.device if isinstance(x, torch.Tensor) else None)
                              for x in inputs)
        except AttributeError:  # not an array: the full check says what is wrong
            signature = None
        known = self._admitted.get(signature) if signature is not None else None
        if known is not None:
            return known
        rows = self._layout.check(inputs)
        key = tuple((kind, dtype, shape[1:], device) for kind, dtype, shape, device in signature)
        if len(self._admitted) < 4096:
            self._admitted[signature] = (rows, key)
        return rows, key

    def _enqueue(self, request: Request, key: tuple) -> None:
        """Under the lock: queue ``request`` or raise."""
        if self._closed:
            raise BatcherClosed(f"{self.name} is closed; it takes no new requests")
        if self._queued >= self.max_queue:
            self._counts["rejected"] += 1
            raise QueueFull(f"{self.name}: the queue is full ({self.max_queue} requests waiting); try again "
                            "later or raise max_queue", max_queue=self.max_queue)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket()
        bucket.requests.append(request)
        bucket.rows += request.rows
        self._queued += 1
        self._counts["submitted"] += 1
        deadline = request.deadline
        if deadline is not None:
            self._deadlines += 1
            self._next_deadline = min(self._next_deadline, deadline)
        # Wake a worker only when it would otherwise look too late: no busy waiting, no needless switches.
        # (A worker waiting for a run slot is woken by the batch that frees it.)
        if self._idle > self._slot_waits and (
                self._wake_at is None or bucket.rows >= self.max_batch_size
                or request.enqueued + self._delay < self._wake_at
                or (deadline is not None and deadline < self._wake_at)):
            self._cond.notify()

    async def infer(self, *inputs: Any, timeout_ms: float | None = _UNSET) -> Any:
        """Submit and await the result from the running asyncio loop (any loop, in any thread).

        Cancelling the awaiting task cancels the request if it has not started running.
        """
        return await asyncio.wrap_future(self.submit(*inputs, timeout_ms=timeout_ms))

    # -- closing ---------------------------------------------------------------------------------------

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests. With ``drain`` (the default) run every queued request first; without it fail
        the queued ones with :class:`BatcherClosed`. A batch already running always finishes. Waits up to
        ``timeout`` seconds for the workers; idempotent."""
        cancelled: list[Request] = []
        with self._cond:
            self._closed = True
            if not drain:
                for bucket in self._buckets.values():
                    cancelled.extend(bucket.requests)
                self._buckets.clear()
                self._queued = 0
                self._deadlines = 0
                self._counts["cancelled"] += len(cancelled)
            self._cond.notify_all()
        for r in cancelled:
            r.resolve(False, BatcherClosed(f"{self.name} was closed with drain=False before this request ran"))
        current = threading.current_thread()
        for t in self._threads:
            if t is not current:
                t.join(timeout)
        _LIVE.discard(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "DynamicBatcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(drain=True)

    def __repr__(self) -> str:
        return (f"<motorpool.DynamicBatcher {self.name} max_batch_size={self.max_batch_size} "
                f"max_delay_ms={self.max_delay_ms} queued={self._queued}{' closed' if self._closed else ''}>")

    # -- statistics ------------------------------------------------------------------------------------

    def stats(self) -> BatcherStats:
        with self._cond:
            c = self._counts
            delays, runs = list(self._delays), list(self._runs)
            snapshot = dict(submitted=c["submitted"], completed=c["completed"], failed=c["failed"],
                            rejected=c["rejected"], timed_out=c["timed_out"], cancelled=c["cancelled"],
                            queued=self._queued, batches=c["batches"], retried_batches=c["retried_batches"],
                            batch_sizes=dict(sorted(self._sizes.items())))
        return BatcherStats(**snapshot, queue_delay_ms=percentiles(delays), run_ms=percentiles(runs))

    # -- the workers -----------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                batch, expired = self._next_batch()
            for r in expired:
                r.resolve(False, TimeoutError(f"request waited {1e3 * (time.monotonic() - r.enqueued):.1f} ms in "
                                             f"{self.name}'s queue, past its timeout; it was not run"))
            if batch is None:
                return
            if batch:
                self._run(batch)

    def _next_batch(self) -> tuple[list[Request] | None, list[Request]]:
        """Under the lock: wait for a batch that is due. Returns (batch, expired); batch None means stop,
        an empty batch means only expired requests to fail."""
        while True:
            now = time.monotonic()
            expired = self._expire(now) if self._deadlines and now >= self._next_deadline else []
            if self._queued == 0:
                if expired:
                    return [], expired
                if self._closed:
                    self._cond.notify_all()  # let the other workers see it too
                    return None, expired
                self._sleep(None)
                continue
            best: Bucket | None = None
            best_key = None
            wake = self._next_deadline if self._deadlines else float("inf")
            for key, bucket in self._buckets.items():
                head = bucket.requests[0]
                due = head.enqueued + self._delay
                if bucket.rows >= self.max_batch_size or due <= now or self._closed:
                    if best is None or head.enqueued < best.requests[0].enqueued:
                        best, best_key = bucket, key
                elif due < wake:
                    wake = due
            if best is not None and self._running >= self._slots:
                if expired:
                    return [], expired
                self._slot_waits += 1  # a due batch, but every slot busy (a caller running inline)
                try:
                    self._sleep(self._next_deadline if self._deadlines else None)
                finally:
                    self._slot_waits -= 1
                continue
            if best is not None:
                batch = self._take(best_key, best)
                if batch:
                    self._running += 1
                return batch, expired
            if expired:
                return [], expired
            self._sleep(wake)

    def _sleep(self, wake: float | None) -> None:
        self._wake_at = wake
        self._idle += 1
        try:
            self._cond.wait(None if wake is None else max(0.0, wake - time.monotonic()))
        finally:
            self._idle -= 1
            self._wake_at = None if self._idle == 0 else self._wake_at

    def _take(self, key: tuple, bucket: Bucket) -> list[Request]:
        batch: list[Request] = []
        rows = 0
        limit = self.max_batch_size if self._split_ok else 1
        while bucket.requests:
            r = bucket.requests[0]
            if batch and (rows + r.rows > self.max_batch_size or len(batch) >= limit):
                break
            bucket.requests.popleft()
            bucket.rows -= r.rows
            self._queued -= 1
            if r.deadline is not None:
                self._deadlines -= 1
            if not r.start():
                self._counts["cancelled"] += 1  # cancelled by its caller while queued
                continue
            batch.append(r)
            rows += r.rows
        if not bucket.requests:
            del self._buckets[key]
        if self._deadlines == 0:
            self._next_deadline = float("inf")
        return batch

    def _expire(self, now: float) -> list[Request]:
        expired: list[Request] = []
        nearest = float("inf")
        for key in list(self._buckets):
            bucket = self._buckets[key]
            if not any(r.deadline is not None and r.deadline <= now for r in bucket.requests):
                nearest = min([nearest] + [r.deadline for r in bucket.requests if r.deadline is not None])
                continue
            keep: deque[Request] = deque()
            for r in bucket.requests:
                if r.deadline is not None and r.deadline <= now:
                    expired.append(r)
                    bucket.rows -= r.rows
                else:
                    keep.append(r)
                    if r.deadline is not None:
                        nearest = min(nearest, r.deadline)
            bucket.requests = keep
            if not keep:
                del self._buckets[key]
        self._queued -= len(expired)
        self._deadlines -= len(expired)
        self._next_deadline = nearest
        self._counts["timed_out"] += len(expired)
        return expired

    def _run(self, batch: list[Request]) -> None:
        start = time.monotonic()
        retried = False
        try:
            outcomes = [(r, True, value) for r, value in zip(batch, self._execute(batch))]
        except Unsplittable as exc:
            if self._split_ok:
                self._split_ok = False
                try:
                    warnings.warn(f"{self.name}: {exc}; running one request at a time from now on", stacklevel=2)
                except Exception:  # noqa: BLE001 - warnings turned into errors must not kill the worker
                    pass
            retried, outcomes = True, self._one_by_one(batch)
        except BaseException as exc:  # noqa: BLE001 - any engine failure goes to the requests, never kills us
            if len(batch) == 1:
                outcomes = [(batch[0], False, exc)]
            else:
                retried, outcomes = True, self._one_by_one(batch)
        elapsed = time.monotonic() - start
        failed = sum(not ok for _, ok, _ in outcomes)
        # Statistics first, results last: a caller who has its result sees its batch counted, and the
        # worker goes straight back to waiting after waking the callers (they need the GIL it holds).
        with self._cond:
            self._running -= 1
            if self._queued and self._idle:
                self._cond.notify()  # a worker may be waiting for the slot this batch held
            self._counts["batches"] += 1
            self._counts["retried_batches"] += retried
            self._counts["completed"] += len(batch) - failed
            self._counts["failed"] += failed
            self._sizes[sum(r.rows for r in batch)] += 1
            self._delays.extend(start - r.enqueued for r in batch)
            self._runs.append(elapsed)
        # Blocked callers are woken in a chain, each by the one before it: the worker wakes one thread and
        # goes back to the next batch instead of waking (and being preempted by) every caller in turn.
        # The main thread never joins a chain: a KeyboardInterrupt there would break it.
        chain: list[Request] = []
        main = threading.main_thread().ident
        for request, ok, value in outcomes:
            if request.latch is not None and request.thread != main:
                request.outcome = (ok, value)
                if chain:
                    chain[-1].baton = request
                chain.append(request)
            else:
                request.resolve(ok, value)
        if chain:
            chain[0].latch.release()

    def _execute(self, batch: list[Request]) -> list[Any]:
        sizes = [r.rows for r in batch]
        rows = sum(sizes)
        if len(batch) == 1 and self._layout.static_batch in (None, rows):
            return [self.engine(*batch[0].inputs)]
        columns = [concat([r.inputs[i] for r in batch]) for i in range(len(batch[0].inputs))]
        run = self._layout.padded(columns, rows)
        return split_rows(self.engine(*run), sizes, int(run[0].shape[0]))

    def _one_by_one(self, batch: list[Request]) -> list[tuple[Request, bool, Any]]:
        outcomes = []
        for r in batch:
            try:
                outcomes.append((r, True, self._execute([r])[0]))
            except BaseException as exc:  # noqa: BLE001 - this request's own error
                outcomes.append((r, False, exc))
        return outcomes


# Batchers still open when the interpreter exits are drained, so no queued request is silently dropped.
_LIVE: "weakref.WeakSet[DynamicBatcher]" = weakref.WeakSet()


@atexit.register
def _drain_live_batchers() -> None:
    for batcher in list(_LIVE):
        try:
            batcher.close(drain=True, timeout=30)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
