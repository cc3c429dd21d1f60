"""Known gaps, ibis style: ``@pytest.mark.notimpl`` / ``@pytest.mark.notyet`` with the backends they apply to
and a required reason; and the check that every motorpool marker names something that exists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from .targets import all_capability_names, device_kinds, known_backend_names

GAP_MARKERS = ("notimpl", "notyet")


# -- markers -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gap:
    kind: str  # "notimpl" or "notyet"
    backends: tuple[str, ...]
    reason: str
    models: tuple[str, ...] | None = None
    raises: Any = None
    strict: bool = True
    #: names of the test functions (conformance checks) it applies to; None: every test it marks
    checks: tuple[str, ...] | None = None

    def describe(self) -> str:
        what = "not implemented in motorpool's backend" if self.kind == "notimpl" else \
            "not yet supported by the runtime"
        return f"{self.kind} ({what}): {self.reason}"


def _gap_from_marker(mark: pytest.Mark) -> Gap:
    if not mark.args:
        raise ValueError(f"@pytest.mark.{mark.name} needs the backend names it applies to, e.g. "
                         f"@pytest.mark.{mark.name}(['torchscript'], reason='...')")
    names = mark.args[0]
    if isinstance(names, str):
        names = [names]
    reason = mark.kwargs.get("reason") or (mark.args[1] if len(mark.args) > 1 else "")
    if not reason:
        raise ValueError(f"@pytest.mark.{mark.name}({list(names)!r}) must carry a reason=... saying why")
    models = mark.kwargs.get("models")
    if isinstance(models, str):
        models = [models]
    checks = mark.kwargs.get("checks")
    if isinstance(checks, str):
        checks = [checks]
    return Gap(mark.name, tuple(names), str(reason), tuple(models) if models else None,
               mark.kwargs.get("raises"), bool(mark.kwargs.get("strict", True)), tuple(checks) if checks else None)


def gaps(node: Any) -> list[Gap]:
    return [_gap_from_marker(m) for kind in GAP_MARKERS for m in node.iter_markers(kind)]


def known_gap(node: Any, backend: str, model: str | None, *, per_model_only: bool) -> Gap | None:
    """The gap declared on ``node`` for this backend (and zoo model), if any.

    A gap naming models applies only to parameters with one of those models (``per_model_only`` asks for
    gaps that name ``model`` explicitly: the per-backend save/load check skips such models in its loop).
    """
    test = getattr(node, "originalname", None) or getattr(node, "name", "")
    for gap in gaps(node):
        if backend not in gap.backends or (gap.checks is not None and test not in gap.checks):
            continue
        if gap.models is None:
            if per_model_only:
                continue
            return gap
        if model is not None and model in gap.models:
            return gap
    return None


def validate_markers(node: Any) -> None:
    """Unknown names in motorpool's markers are collection errors, not silent no-ops."""
    known = None
    problems = []
    for mark in node.iter_markers():
        if mark.name == "backend" or mark.name in GAP_MARKERS:
            if known is None:
                known = known_backend_names()
            try:
                names = list(mark.args) if mark.name == "backend" else list(_gap_from_marker(mark).backends)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if not names:
                problems.append("@pytest.mark.backend() names no backend")
            unknown = sorted(set(names) - known)
            if unknown:
                problems.append(f"@pytest.mark.{mark.name} names unknown backend(s) {unknown}; known: "
                                f"{', '.join(sorted(known))}")
        elif mark.name == "device":
            kinds = device_kinds()
            bad = sorted(d for d in mark.args if d.split(":")[0] not in kinds)
            if bad or not mark.args:
                problems.append(f"@pytest.mark.device names unknown device(s) {bad}; choose from "
                                f"{', '.join(sorted(kinds))}")
        elif mark.name == "capability":
            bad = sorted(set(mark.args) - all_capability_names())
            if bad or not mark.args:
                problems.append(f"@pytest.mark.capability names unknown capabilities {bad}; choose from "
                                f"{', '.join(sorted(all_capability_names()))}")
    if problems:
        raise MarkerError(f"{node.nodeid}: " + "; ".join(problems))


class MarkerError(Exception):
    """A motorpool marker names something unknown; raised during collection, so pytest reports an ERROR."""
