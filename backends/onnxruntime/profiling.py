"""ONNX Runtime's session profile, as motorpool's operator table."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from motorpool.plugin import OperatorStat, operator_table


def summarize_ort_profile(path: str | Path, *, top: int = 10) -> list[OperatorStat]:
    """ONNX Runtime's profile JSON (``SessionOptions.enable_profiling``; ``session.end_profiling()`` returns its
    path) -> the nodes that took the most time, grouped by node name. ``kind`` is the node's op type."""
    events = json.loads(Path(path).read_text())
    if isinstance(events, dict):  # newer runtimes wrap the trace events
        events = events.get("traceEvents", [])
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    kinds: dict[str, str] = {}
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        name = ev["name"][: -len("_kernel_time")]
        total[name] += float(ev.get("dur", 0)) / 1e3  # microseconds
        count[name] += 1
        kinds[name] = str(ev.get("args", {}).get("op_name", ""))
    return operator_table(total, count, kinds, top)
