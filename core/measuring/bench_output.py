"""Writing a :class:`~motorpool.measuring.benchmark.BenchSuite`: a terminal table (rich), JSON, Markdown, and a PNG chart
of latency and throughput against batch size, one line per backend and precision (matplotlib)."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

from ..engine.artifact_cache import format_size
from .benchmark import BenchResult, BenchSuite
from .cost import COST_KEY, PRICE_KEY

COLUMNS = ("backend", "precision", "batch", "p50 ms", "p90 ms", "p99 ms", "stable", "offline /s", "server /s",
           "compile s", "load s", "1st call s", "peak RSS MiB", "artifact")
#: the column a LoadGen-driven run adds: LoadGen's verdicts on the row's runs (Server's on an engine's first row)
VERDICT_COLUMN = "LoadGen"
#: the column a priced run adds (``motorpool bench --price-per-hour``): offline cost per 1000 inferences
COST_COLUMN = "$/1000 offline"
#: a narrow terminal (under WIDE columns) gets two tables: the figures per batch size, then per engine
WIDE = 130
NARROW_FIGURES = {"backend": "backend", "precision": "prec", "batch": "batch", "p50 ms": "p50 ms",
                  "p99 ms": "p99 ms", "offline /s": "offline/s", "server /s": "server/s"}
NARROW_COST = {COST_COLUMN: "$/1k off"}
NARROW_VERDICT = {VERDICT_COLUMN: "LoadGen"}
NARROW_ENGINE = {"backend": "backend", "precision": "prec", "compile s": "compile s", "load s": "load s",
                 "1st call s": "1st call s", "peak RSS MiB": "RSS MiB", "artifact": "artifact"}
#: the mark on a latency whose median had not settled when the time budget ran out
UNSETTLED = "~"
UNSETTLED_NOTE = (f"{UNSETTLED}: did not settle: the median still moved when the time budget ran out; a rough "
                  "figure, not a result (raise --time-budget, quiet the machine)")


def _ms(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.3f}" if x < 100 else f"{x:.1f}"


def _lat(ss: dict[str, Any], key: str) -> str:
    text = _ms(ss.get(key))
    return text if ss.get("stable", True) or text == "-" else UNSETTLED + text


def _server_rate(r: BenchResult) -> str:
    s = r.server or {}
    return f"{s['max_rate_per_s']:.0f}" if s.get("max_rate_per_s") is not None else "-"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return format_size(n)


def priced(suite: BenchSuite) -> float | None:
    """The machine's price per hour (USD) the run was given, or None."""
    return (suite.config or {}).get(PRICE_KEY)


def by_loadgen(suite: BenchSuite) -> bool:
    """Whether MLPerf LoadGen ran any engine's scenarios (so there are verdicts to show)."""
    return any(r.driver == "loadgen" for r in suite.results)


def columns(suite: BenchSuite) -> tuple[str, ...]:
    """The table's columns: :data:`COLUMNS`, plus LoadGen's verdicts when it ran, plus the offline cost per
    1000 inferences when priced."""
    return (COLUMNS + ((VERDICT_COLUMN,) if by_loadgen(suite) else ())
            + ((COST_COLUMN,) if priced(suite) else ()))


def _runs(r: BenchResult, b) -> list[tuple[str, dict[str, Any]]]:
    """(scenario, figures) of the LoadGen runs on ``b``'s row: its SingleStream and Offline, and on an engine's
    first row its Server."""
    pairs = [("SingleStream", b.single_stream), ("Offline", b.offline)]
    if r.batches and b is r.batches[0]:
        pairs.append(("Server", r.server))
    return [(name, fig) for name, fig in pairs if fig and "verdict" in fig]


def _verdict_cell(r: BenchResult, b) -> str:
    runs = _runs(r, b)
    invalid = [name for name, fig in runs if fig["verdict"] != "VALID"]
    if not runs:
        return "-"
    return f"INVALID: {', '.join(invalid)}" if invalid else "VALID"


def _cost(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3g}"  # tiny models cost fractions of a cent


def rows(suite: BenchSuite) -> list[list[str]]:
    """The table's rows as strings: one per engine and batch size; engine-wide figures on its first row."""
    out = []
    with_cost, with_verdict = bool(priced(suite)), by_loadgen(suite)
    for r in suite.results:
        if r.status != "ok":
            out.append([r.backend, r.precision, "-", r.status, "", "", "", "", "", "", "", "", "", _short(r.reason)]
                       + [""] * (with_verdict + with_cost))
            continue
        for i, b in enumerate(r.batches):
            ss, off = b.single_stream or {}, b.offline or {}
            first = i == 0
            out.append([
                r.backend if first else "", r.precision if first else "", str(b.batch),
                _lat(ss, "p50_ms"), _lat(ss, "p90_ms"), _lat(ss, "p99_ms"),
                ("yes" if ss["stable"] else "no") if "stable" in ss else "-",  # LoadGen's runs: its verdict
                f"{off['throughput_per_s']:.0f}" if off else "-", _server_rate(r) if first else "",
                _s(r.compile_time_s) if first else "", _s(r.load_time_s) if first else "",
                _s(r.first_call_s) if first else "", f"{r.peak_rss_mb:.0f}" if first and r.peak_rss_mb else "",
                _size(r.artifact_bytes) if first else "",
            ] + ([_verdict_cell(r, b)] if with_verdict else []) + ([_cost(off.get(COST_KEY))] if with_cost else []))
    return out


def _short(text: str, n: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def driver_line(suite: BenchSuite) -> str:
    """Who ran the scenarios: "mlperf_loadgen X.Y", or the built-in code and why."""
    return f"scenarios run by: {(suite.config or {}).get('driver', 'built-in')}"


def verdict_lines(suite: BenchSuite) -> list[str]:
    """Each INVALID LoadGen run and why (the unmet constraints LoadGen named)."""
    return [f"{r.label} batch {b.batch}: LoadGen {name} INVALID: {fig['reason'] or 'see its log'}"
            for r in suite.results for b in r.batches for name, fig in _runs(r, b) if fig["verdict"] != "VALID"]


def _loadgen_server_line(r: BenchResult, s: dict[str, Any]) -> str:
    p99 = s.get("p99_ms")
    return (f"{r.label}: server (LoadGen): {s['completed_per_s']:.0f} queries/s completed at a target of "
            f"{s['target_qps']:.0f}/s ({s['settings']['server_target_qps_source']}), p99 "
            f"{'-' if p99 is None else f'{p99:.3g}'} ms against {s['p99_bound_ms']:.3g} ms "
            f"(dynamic batcher, max batch {s['max_batch_size']}, max delay {s['max_delay_ms']} ms): {s['verdict']}"
            + (f" ({s['reason']})" if s["reason"] else "")
            + (f"; ${s[COST_KEY]:.3g} per 1000 inferences at that rate" if s.get(COST_KEY) else ""))


def server_lines(suite: BenchSuite) -> list[str]:
    lines = []
    for r in suite.results:
        s = r.server
        if not s:
            continue
        if "verdict" in s:
            lines.append(_loadgen_server_line(r, s))
        elif "skipped" in s:
            lines.append(f"{r.label}: server scenario skipped: {s['skipped']}")
        elif s.get("max_rate_per_s") is None:
            lines.append(f"{r.label}: server: {s.get('note', 'no rate met the bound')}")
        else:
            lines.append(f"{r.label}: server: {s['max_rate_per_s']:.0f} queries/s at p99 <= {s['p99_bound_ms']:.3g} ms "
                         f"(dynamic batcher, max batch {s['max_batch_size']}, max delay {s['max_delay_ms']} ms; "
                         f"{len(s['trials'])} trials)"
                         + (f"; ${s[COST_KEY]:.3g} per 1000 inferences at that rate" if s.get(COST_KEY) else "")
                         + (f"; {s['note']}" if s.get("note") else ""))
    return lines


def notes(suite: BenchSuite) -> list[str]:
    out = []
    for r in suite.results:
        for n in r.notes:
            out.append(f"{r.label}: {n}")
        for b in r.batches:
            if b.note:
                out.append(f"{r.label} batch {b.batch}: {b.note}")
            ss = b.single_stream or {}
            if ss.get("note") and not ss.get("stable", True):
                out.append(f"{r.label} batch {b.batch}: {ss['note']}")
    if any(not (b.single_stream or {}).get("stable", True) for r in suite.results for b in r.batches):
        out.append(UNSETTLED_NOTE)
    return out


_TEXT_COLUMNS = ("backend", "precision", "stable", "artifact", VERDICT_COLUMN)


def _table(title, caption, headers: dict[str, str], body: list[list[str]], all_columns=COLUMNS, **kw):
    from rich.table import Table

    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left", **kw)
    for c, header in headers.items():
        # numbers never wrap; a long backend name or reason is cut with an ellipsis instead
        table.add_column(header, justify="left" if c in _TEXT_COLUMNS else "right", no_wrap=True,
                         overflow="ellipsis")
    index = [all_columns.index(c) for c in headers]
    for row in body:
        table.add_row(*[row[i] if i < len(row) else "" for i in index])
    return table


def rich_table(suite: BenchSuite):
    """Every column in one table (for a terminal at least :data:`WIDE` columns wide)."""
    cols = columns(suite)
    return _table(f"motorpool bench: {suite.model}", suite.machine.get("summary", ""), {c: c for c in cols},
                  rows(suite), cols)


def narrow_tables(suite: BenchSuite) -> list:
    """Two tables that fit an 80-column terminal: the figures per batch size, then per engine (a failed
    engine's reason is under the first)."""
    from rich import box

    body = rows(suite)
    ok = [r for r in body if r[0] and r[3] not in ("failed", "unavailable")]
    cols = columns(suite)
    figures = {**NARROW_FIGURES, **(NARROW_VERDICT if by_loadgen(suite) else {}),
               **(NARROW_COST if priced(suite) else {})}
    tables = [_table(f"motorpool bench: {suite.model}", None, figures, body, cols, box=box.SIMPLE_HEAD,
                     collapse_padding=True, pad_edge=False)]
    if ok:
        tables.append(_table(None, suite.machine.get("summary", ""), NARROW_ENGINE, ok, cols, box=box.SIMPLE_HEAD,
                             collapse_padding=True, pad_edge=False))
    return tables


def print_table(suite: BenchSuite, console=None) -> None:
    from rich.console import Console

    if console is None:
        # piped or captured output gets the table's natural width (unless COLUMNS says otherwise)
        console = Console()
        if not console.is_terminal and not os.environ.get("COLUMNS"):
            console = Console(width=200)
    if console.width >= WIDE:
        console.print(rich_table(suite))
    else:
        for table in narrow_tables(suite):
            console.print(table)
        for r in suite.results:
            if r.status != "ok":
                console.print(f"{r.label}: {r.status}: {_short(r.reason, 200)}", markup=False, highlight=False)
    for line in [driver_line(suite)] + server_lines(suite) + verdict_lines(suite) + notes(suite):
        console.print(line, markup=False, highlight=False)


def to_json(suite: BenchSuite) -> dict[str, Any]:
    return suite.to_dict()


def _atomic_write(path: Path, data: str | bytes) -> Path:
    """Write ``path`` through a temporary file beside it and a rename: a reader (or a run that dies half
    way) never sees half a file, and an earlier result stays until the new one is complete."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(suite: BenchSuite, path: str | Path) -> Path:
    return _atomic_write(Path(path), json.dumps(to_json(suite), indent=2, default=str))


def to_markdown(suite: BenchSuite) -> str:
    cfg = suite.config
    lines = [f"# motorpool bench: {suite.model}", "",
             f"- machine: {suite.machine.get('summary')} (fingerprint `{suite.machine.get('fingerprint')}`), "
             f"torch {suite.machine.get('torch')}, motorpool {suite.machine.get('motorpool')}",
             f"- scenarios: {', '.join(cfg.get('scenarios', []))}; batch sizes {cfg.get('batch_sizes')}; "
             f"time budget {cfg.get('time_budget_s')} s per scenario and batch size",
             f"- {driver_line(suite)}",
             f"- measured {suite.created}"]
    if priced(suite):
        lines.append(f"- price ${priced(suite):g} per hour: cost per 1000 inferences = price / 3600 / throughput "
                     "x 1000")
    cols = columns(suite)
    lines += ["", "| " + " | ".join(cols) + " |",
              "|" + "|".join("---" if c in ("backend", "precision", "stable", VERDICT_COLUMN) else "---:" for c in cols) + "|"]
    for row in rows(suite):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    extra = server_lines(suite) + verdict_lines(suite) + notes(suite)
    if extra:
        lines.append("")
        lines += [f"- {x}" for x in extra]
    return "\n".join(lines) + "\n"


def write_markdown(suite: BenchSuite, path: str | Path) -> Path:
    return _atomic_write(Path(path), to_markdown(suite))


def _plot_latency(ax: Any, r: BenchResult) -> None:
    pts = [(b.batch, b.single_stream) for b in r.batches if b.single_stream]
    if not pts:
        return
    xs = [p[0] for p in pts]
    line, = ax.plot(xs, [p[1]["p50_ms"] for p in pts], marker="o", label=f"{r.label} p50")
    ax.fill_between(xs, [p[1]["p90_ms"] for p in pts], [p[1]["p99_ms"] for p in pts],
                    color=line.get_color(), alpha=0.15)
    unsettled = [p for p in pts if not p[1].get("stable", True)]
    if unsettled:  # hollow markers: the median had not settled when the budget ran out
        ax.plot([p[0] for p in unsettled], [p[1]["p50_ms"] for p in unsettled], linestyle="none",
                marker="o", markersize=9, markerfacecolor="white", color=line.get_color())


def _plot_throughput(ax: Any, r: BenchResult) -> None:
    thr = [(b.batch, b.offline["throughput_per_s"]) for b in r.batches if b.offline]
    rate = (r.server or {}).get("max_rate_per_s")
    if thr:
        line, = ax.plot([t[0] for t in thr], [t[1] for t in thr], marker="s", label=r.label)
        if rate:  # the server scenario's sustained rate: one figure per engine, so a level line
            ax.axhline(rate, color=line.get_color(), linestyle="--", linewidth=1,
                       label=f"{r.label} server {rate:.0f}/s at p99 <= {r.server['p99_bound_ms']:.3g} ms")


def _plot_cost(ax: Any, r: BenchResult) -> None:
    cost = [(b.batch, b.offline[COST_KEY]) for b in r.batches if b.offline and b.offline.get(COST_KEY)]
    if cost:
        ax.plot([c[0] for c in cost], [c[1] for c in cost], marker="D", label=r.label)


def _batch_size_axis(ax: Any, ok: list[BenchResult]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.grid(True, which="both", alpha=0.3)
    batches = sorted({b.batch for r in ok for b in r.batches})
    if batches:
        ax.set_xticks(batches, [str(b) for b in batches])


def _label_panels(ax_lat: Any, ax_thr: Any, ax_cost: Any, price: float | None, formatter: Any) -> None:
    """Titles, axis labels and plain (not 10^n) tick labels; ``formatter`` is matplotlib's FuncFormatter."""
    plain = formatter(lambda v, _: f"{v:g}")
    ax_lat.set_yscale("log")
    ax_lat.yaxis.set_major_formatter(plain)
    ax_lat.set_ylabel("latency per call, ms (line p50, band p90..p99)")
    ax_lat.set_title("single-stream latency (hollow: median not settled)")
    ax_thr.set_yscale("log")
    ax_thr.yaxis.set_major_formatter(plain)
    ax_thr.yaxis.set_minor_formatter(plain)
    ax_thr.set_ylabel("samples / s")
    ax_thr.set_title("offline throughput (dashed: server scenario's sustained rate)")
    if ax_cost is not None:
        ax_cost.set_yscale("log")
        dollars = formatter(lambda v, _: f"${v:.2g}")
        ax_cost.yaxis.set_major_formatter(dollars)
        ax_cost.yaxis.set_minor_formatter(dollars)
        ax_cost.set_ylabel("USD per 1000 inferences")
        ax_cost.set_title(f"offline cost per 1000 inferences at ${price:g}/hour")


def _plot_title(suite: BenchSuite) -> str:
    failed = [f"{r.label}: {r.status}" for r in suite.results if r.status != "ok"]
    where = suite.machine.get("cpu") or suite.machine.get("summary", "").split(" (")[0]
    load = suite.machine.get("load_average")
    return (f"motorpool bench: {suite.model} on {where}"
            + (f" ({suite.machine.get('cores')} cores, load average {load[0]:.1f} at start)" if load else "")
            + (f"\n(not measured: {'; '.join(failed)})" if failed else ""))


def plot(suite: BenchSuite, path: str | Path) -> Path:
    """A PNG: p50 latency per sample (with p90-p99 band) and offline throughput against batch size; a priced
    run adds a third panel, the offline cost per 1000 inferences."""
    # matplotlib is optional (see chart_unavailable), so it is imported only when a chart is drawn
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    path = Path(path)
    ok = [r for r in suite.results if r.status == "ok" and r.batches]
    price = priced(suite)
    fig, axes = plt.subplots(1, 3 if price else 2, figsize=(18 if price else 12, 4.8), constrained_layout=True)
    ax_lat, ax_thr = axes[0], axes[1]
    ax_cost = axes[2] if price else None
    for r in ok:
        _plot_latency(ax_lat, r)
        _plot_throughput(ax_thr, r)
        if ax_cost is not None:
            _plot_cost(ax_cost, r)
    for ax in [a for a in (ax_lat, ax_thr, ax_cost) if a is not None]:
        _batch_size_axis(ax, ok)
    _label_panels(ax_lat, ax_thr, ax_cost, price, FuncFormatter)
    if ok:
        ax_lat.legend(fontsize=8)
        ax_thr.legend(fontsize=8)
        if ax_cost is not None:
            ax_cost.legend(fontsize=8)
    fig.suptitle(_plot_title(suite), fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return _atomic_write(path, buf.getvalue())


def chart_unavailable() -> str | None:
    """Why :func:`write_all` writes no PNG here (matplotlib missing), or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return 'the PNG chart needs matplotlib: pip install "motorpool[bench]"'
    return None


def write_all(suite: BenchSuite, out_dir: str | Path, stem: str = "bench") -> dict[str, Path]:
    """JSON, Markdown and PNG into ``out_dir`` (created), each written atomically; returns their paths. Without
    matplotlib there is no PNG (no "chart" key; :func:`chart_unavailable` says why)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(suite, out / f"{stem}.json"), "markdown": write_markdown(suite, out / f"{stem}.md")}
    if chart_unavailable() is None:
        paths["chart"] = plot(suite, out / f"{stem}.png")
    return paths


__all__ = ["rows", "columns", "priced", "by_loadgen", "driver_line", "verdict_lines", "rich_table", "narrow_tables", "chart_unavailable", "print_table", "to_json",
           "write_json", "to_markdown", "write_markdown", "plot",
           "write_all", "BenchResult", "BenchSuite"]
