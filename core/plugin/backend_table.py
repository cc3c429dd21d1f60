"""What :func:`motorpool.list_backends` returns: a list of ``BackendInfo`` rows that prints as a table."""

from __future__ import annotations

from typing import Any


def _cut(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


class BackendTable(list):
    """A plain ``list`` of :class:`~motorpool.plugin.registry.BackendInfo` (index it, filter it, compare it
    with a list) whose ``str()`` is a table: name, status, version, devices and why not/how to fix."""

    def __str__(self) -> str:
        head = ("backend", "status", "version", "devices", "notes")
        body = []
        for r in self:
            status = "available" if r.available else str(r.status) + (" (export)" if r.can_export else "")
            notes = "" if r.available else (r.reason or "") + (f"; fix: {r.fix}" if r.fix else "")
            body.append((r.name, status, _cut(r.version or "-", 16), ",".join(r.devices) or "-", _cut(notes, 110)))
        widths = [max([len(h)] + [len(row[i]) for row in body]) for i, h in enumerate(head[:-1])]

        def line(cells: Any) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths)) + "  " + cells[-1]

        return "\n".join([line(head)] + [line(row).rstrip() for row in body])

    def __repr__(self) -> str:  # the REPL shows the table too
        return str(self)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self]
