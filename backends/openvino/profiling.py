"""OpenVINO's per-layer performance counters, as motorpool's operator table."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from motorpool.plugin import OperatorStat, operator_table


def summarize_openvino_counters(profiling_infos: Iterable[Iterable[Any]], *, top: int = 10) -> list[OperatorStat]:
    """OpenVINO per-layer counters (``InferRequest.profiling_info`` after each run, with the ``PERF_COUNT``
    property on) -> the layers that took the most time. ``kind`` is the node type and its executed kernel."""
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    kinds: dict[str, str] = {}
    for run in profiling_infos:
        for info in run:
            status = str(getattr(info, "status", ""))
            if "NOT_RUN" in status or "OPTIMIZED_OUT" in status:
                continue
            real = getattr(info, "real_time", None)
            ms = real.total_seconds() * 1e3 if hasattr(real, "total_seconds") else float(real or 0) / 1e3
            name = str(info.node_name)
            total[name] += ms
            count[name] += 1
            kinds[name] = f"{info.node_type}/{getattr(info, 'exec_type', '')}".rstrip("/")
    return operator_table(total, count, kinds, top)
