#!/usr/bin/env python
"""Turn a pytest JUnit XML of the backend suite into a backend x device table (markdown).

    python scripts/ci_summary.py junit.xml [more.xml ...] [--doctor doctor.json] [--title "Linux CPU"] [--out FILE]

Each cell of the table counts the checks that passed, were skipped, xfailed (known gaps) and failed; below
it every distinct skip reason and every failure is listed. Writes to ``--out``, else to
``$GITHUB_STEP_SUMMARY`` when set (GitHub shows it on the job page), else to stdout. Exits 0: the test step
itself carries the verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

DEVICE_KINDS = {"cpu", "cuda", "mps", "ane", "xpu", "gpu", "npu", "all", "auto"}
OUTCOMES = ("passed", "skipped", "xfailed", "failed")


def cell_of(test_name: str, backends: set[str]) -> str | None:
    """'eager-cpu' from 'test_compile_and_run[mlp-eager-cpu]'; 'coreml' from a device-less parameter."""
    m = re.search(r"\[(.*)\]$", test_name)
    if not m:
        return None
    parts = m.group(1).split("-")
    for i, part in enumerate(parts):
        known = part in backends if backends else (i + 1 < len(parts) and parts[i + 1] in DEVICE_KINDS)
        if known:
            if i + 1 < len(parts) and parts[i + 1] in DEVICE_KINDS:
                return f"{part}-{parts[i + 1]}"
            return part
    return None


def outcome_of(case: ET.Element) -> tuple[str, str]:
    for child in case:
        if child.tag in ("failure", "error"):
            return "failed", (child.get("message") or "").strip()
        if child.tag == "skipped":
            kind = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
            message = (child.get("message") or "").strip()
            return kind, re.sub(r"^(xfail|Skipped): ", "", message)
    return "passed", ""


def summarize(junits: list[Path], backends: set[str]) -> tuple[dict, dict, list]:
    cells: dict[str, Counter] = defaultdict(Counter)
    reasons: dict[str, Counter] = defaultdict(Counter)
    failures: list[tuple[str, str, str]] = []
    cases = [case for junit in junits for case in ET.parse(junit).getroot().iter("testcase")]
    for case in cases:
        name = case.get("name", "")
        cell = cell_of(name, backends)
        if cell is None:
            continue
        kind, message = outcome_of(case)
        cells[cell][kind] += 1
        if kind in ("skipped", "xfailed"):
            reasons[cell][message.splitlines()[0][:300] if message else "(no reason given)"] += 1
        elif kind == "failed":
            failures.append((cell, f"{case.get('classname', '')}::{name}", message.splitlines()[0][:300]
                             if message else ""))
    return cells, reasons, failures


def render(title: str, cells: dict, reasons: dict, failures: list, doctor: dict | None) -> str:
    lines = [f"## {title}", ""]
    if doctor:
        hw = doctor.get("hardware", {})
        cpu = hw.get("cpu", {})
        lines += [f"Hardware: {cpu.get('model', '?')} ({cpu.get('cores', '?')} cores), class "
                  f"`{hw.get('hardware_class', '?')}`", ""]
    lines += ["| backend-device | " + " | ".join(OUTCOMES) + " | verdict |",
              "|---|" + "---:|" * len(OUTCOMES) + "---|"]
    for cell in sorted(cells):
        c = cells[cell]
        verdict = "FAILED" if c["failed"] else ("passed" if c["passed"] else "skipped")
        lines.append(f"| `{cell}` | " + " | ".join(str(c[k]) for k in OUTCOMES) + f" | {verdict} |")
    if not cells:
        lines.append("| (no backend checks in this report) |" + " |" * (len(OUTCOMES) + 1))
    if failures:
        lines += ["", "### Failed", ""]
        lines += [f"- `{cell}` {test}: {msg}" for cell, test, msg in failures]
    if reasons:
        lines += ["", "### Skipped and known gaps, with reasons", ""]
        for cell in sorted(reasons):
            for reason, n in reasons[cell].most_common():
                lines.append(f"- `{cell}` ({n}): {reason}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit", type=Path, nargs="+")
    parser.add_argument("--doctor", type=Path, help="`motorpool doctor --json` output: backend names, hardware")
    parser.add_argument("--title", default="motorpool backends")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    doctor = json.loads(args.doctor.read_text()) if args.doctor and args.doctor.exists() else None
    backends = {b["name"] for b in doctor.get("backends", [])} if doctor else set()
    if doctor:
        backends |= {s["plugin"] for s in doctor.get("skipped_plugins", [])}
    present = [j for j in args.junit if j.exists()]
    missing = [str(j) for j in args.junit if not j.exists()]
    text = render(args.title, *summarize(present, backends), doctor)
    if missing:
        text += f"\nNo test report at {', '.join(missing)}: that test step did not get to write one.\n"
    target = args.out or (Path(os.environ["GITHUB_STEP_SUMMARY"]) if os.environ.get("GITHUB_STEP_SUMMARY") else None)
    if target is None:
        sys.stdout.write(text)
    else:
        with open(target, "a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
