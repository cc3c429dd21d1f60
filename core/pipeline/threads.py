"""How many threads an engine runs on: the options that size a backend's own pool, and the pool an engine says
it has. One place, so that ``fastest``'s candidates, the benchmarks and a server size runtimes alike."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..plugin.errors import UnknownBackendError
from ..plugin.registry import get_registry

#: the options through which backends take a thread count
THREAD_OPTIONS = ("intra_op_num_threads", "num_threads")


def thread_options(backend: str, threads: int | None) -> dict[str, int]:
    """The options that run ``backend`` on ``threads`` threads: those of :data:`THREAD_OPTIONS` it declares."""
    if not threads:
        return {}
    try:
        declared = get_registry().get(backend).declared_options()
    except UnknownBackendError:
        return {}
    return {k: threads for k in THREAD_OPTIONS if k in declared}


def with_threads(backend: str, options: Mapping[str, Any], threads: int) -> dict[str, Any]:
    """``options`` with ``backend``'s own pool sized to ``threads``, unless the caller already sized it: a runtime
    left to its default picks its own count (ONNX Runtime: every physical core), whatever torch was told."""
    if any(k in options for k in THREAD_OPTIONS):
        return dict(options)
    return {**thread_options(backend, threads), **options}


def engine_threads(engine: Any) -> int:
    """The threads ``engine``'s runtime runs with: what its runner reports as ``info["threads"]`` (ONNX Runtime's
    intra-op pool, OpenVINO's INFERENCE_NUM_THREADS), else torch's."""
    info = getattr(engine.runner, "info", {}) or {}
    return int(info.get("threads") or torch.get_num_threads())


def use_threads(threads: int, interop: int) -> None:
    """Run torch on the caller's pools (a child process starts with torch's defaults, not what its parent set).
    The inter-op pool can be sized only before its first use: a child that already used it keeps its own."""
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != interop:
        try:
            torch.set_num_interop_threads(interop)
        except RuntimeError:
            pass


__all__ = ["THREAD_OPTIONS", "thread_options", "with_threads", "engine_threads", "use_threads"]
