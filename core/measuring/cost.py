"""Cost per 1000 inferences, and bench runs from different machines side by side.

The articles' advice for choosing hardware: run the benchmark on two or three instance types and compare
what 1000 inferences cost on each. Given the machine's price per hour, a throughput of ``T`` samples per
second costs ``price / 3600 / T * 1000`` per 1000 samples, for the offline throughput of each batch size
and for the server scenario's highest rate that met its p99 bound.

    >>> annotate(suite, price_per_hour=0.34)     # adds cost_per_1000_usd to each figure; config records the price
    >>> comparison = compare([load_run("a.json"), load_run("b.json")])
    >>> print(comparison.table())

Works on :class:`~motorpool.benchmark.BenchSuite` objects and on the JSON ``motorpool bench`` writes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..plugin.errors import InputError

#: the key the figures get, and the one the suite's config records the price under
COST_KEY = "cost_per_1000_usd"
PRICE_KEY = "price_per_hour_usd"


def check_price(price_per_hour: Any, what: str = "price_per_hour") -> float:
    if isinstance(price_per_hour, bool) or not isinstance(price_per_hour, (int, float)) \
            or not math.isfinite(price_per_hour) or price_per_hour <= 0:
        raise InputError(f"{what}: expected a positive price in USD per hour, got {price_per_hour!r}",
                         input=what, expected="USD per hour > 0", got=price_per_hour)
    return float(price_per_hour)


def cost_per_1000(throughput_per_s: float | None, price_per_hour: float) -> float | None:
    """USD for 1000 inferences at ``throughput_per_s`` samples per second on a machine at ``price_per_hour``."""
    if throughput_per_s is None or not math.isfinite(throughput_per_s) or throughput_per_s <= 0:
        return None
    return price_per_hour / 3600.0 / throughput_per_s * 1000.0


def annotate(suite: Any, price_per_hour: float) -> Any:
    """Add ``cost_per_1000_usd`` to every offline figure and to each server scenario that found a rate;
    record the price in ``suite.config``. Takes a BenchSuite or its JSON dict; returns it."""
    price = check_price(price_per_hour)
    config, results = _parts(suite)
    config[PRICE_KEY] = price
    for r in results:
        for b in _get(r, "batches") or []:
            offline = _get(b, "offline")
            if offline:
                offline[COST_KEY] = cost_per_1000(offline.get("throughput_per_s"), price)
        server = _get(r, "server")
        if server and server.get("max_rate_per_s"):
            server[COST_KEY] = cost_per_1000(server["max_rate_per_s"], price)
    return suite


def _parts(suite: Any) -> tuple[dict, list]:
    if isinstance(suite, Mapping):
        return suite.setdefault("config", {}), list(suite.get("results", []))
    return suite.config, list(suite.results)


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


# -- comparing runs ------------------------------------------------------------------------------------------


def load_run(path: str | Path) -> dict[str, Any]:
    """A ``bench.json`` as a dict, checked enough that a wrong file says so."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; expected a bench.json written by `motorpool bench`",
                         input=str(path), expected="bench.json", got="missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a bench JSON file ({type(exc).__name__}: {exc})",
                         input=str(path), expected="bench.json", got=type(exc).__name__) from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list) or "machine" not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{path}: not a `motorpool bench` result: expected keys 'results' and "
                         f"'machine', got {keys}", input=str(path), expected=["machine", "results"],
                         got=keys)
    data.setdefault("source", str(path))
    return data


@dataclass
class Figures:
    """One engine at one batch size in one run."""

    throughput_per_s: float | None = None
    p99_ms: float | None = None
    cost_per_1000_usd: float | None = None


@dataclass
class Comparison:
    """Rows keyed by (backend, precision, batch) -- batch "server" for the server scenario -- each holding one
    :class:`Figures` per run (None where that run did not measure it)."""

    runs: list[dict[str, Any]]
    rows: dict[tuple[str, str, str], list[Figures | None]] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [r["label"] for r in self.runs]

    def best(self) -> dict[str, Any]:
        """The highest throughput and the lowest cost per 1000 over every run and row."""
        out: dict[str, Any] = {}
        cells = [(key, i, f) for key, figs in self.rows.items() for i, f in enumerate(figs) if f is not None]
        thr = [c for c in cells if c[2].throughput_per_s]
        if thr:
            key, i, f = max(thr, key=lambda c: c[2].throughput_per_s)
            out["fastest"] = {"run": self.labels[i], "backend": key[0], "precision": key[1], "batch": key[2],
                              "throughput_per_s": f.throughput_per_s}
        cost = [c for c in cells if c[2].cost_per_1000_usd]
        if cost:
            key, i, f = min(cost, key=lambda c: c[2].cost_per_1000_usd)
            out["cheapest"] = {"run": self.labels[i], "backend": key[0], "precision": key[1], "batch": key[2],
                               "cost_per_1000_usd": f.cost_per_1000_usd}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"runs": [{k: r[k] for k in ("label", "source", "machine", "price_per_hour_usd", "model")}
                         for r in self.runs],
                "rows": [{"backend": k[0], "precision": k[1], "batch": k[2],
                          "runs": [None if f is None else dict(f.__dict__) for f in figs]}
                         for k, figs in self.rows.items()],
                "best": self.best()}

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        head = ["backend", "precision", "batch"]
        for label in self.labels:
            head += [f"{label} /s", f"{label} p99 ms", f"{label} $/1000"]
        body = []
        for (backend, precision, batch), figs in self.rows.items():
            line = [backend, precision, batch]
            for f in figs:
                if f is None:
                    line += ["-", "-", "-"]
                else:
                    line += [_num(f.throughput_per_s, "{:,.0f}"), _num(f.p99_ms, "{:.3f}"),
                             _num(f.cost_per_1000_usd, "{:.3g}")]
            body.append(line)
        return head, body

    def legend(self) -> list[str]:
        lines = []
        for r in self.runs:
            price = r.get("price_per_hour_usd")
            lines.append(f"{r['label']}: {r.get('source')}: {r['machine'].get('summary', '?')}; "
                         + (f"${price:g}/hour" if price else "no price (give --price-per-hour)")
                         + f"; model {r.get('model')}")
        best = self.best()
        if "fastest" in best:
            b = best["fastest"]
            lines.append(f"highest throughput: {b['run']} {b['backend']} {b['precision']} batch {b['batch']} "
                         f"({b['throughput_per_s']:,.0f}/s)")
        if "cheapest" in best:
            b = best["cheapest"]
            lines.append(f"cheapest per 1000 inferences: {b['run']} {b['backend']} {b['precision']} batch "
                         f"{b['batch']} (${b['cost_per_1000_usd']:.3g})")
        return lines

    def table(self) -> str:
        head, body = self._cells()
        widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
        fmt = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)  # noqa: E731
                                      for i, (c, w) in enumerate(zip(cells, widths)))
        lines = [fmt(head), "-" * (sum(widths) + 2 * (len(widths) - 1))] + [fmt(r) for r in body]
        return "\n".join(lines + [""] + self.legend())

    def markdown(self) -> str:
        head, body = self._cells()
        lines = ["# motorpool bench compare", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
        return "\n".join(lines + [""] + [f"- {x}" for x in self.legend()]) + "\n"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None or not math.isfinite(value) else fmt.format(value)


def compare(runs: Sequence[Mapping[str, Any]], *, labels: Sequence[str] | None = None,
            prices: Sequence[float | None] | None = None) -> Comparison:
    """Put bench runs (their JSON dicts, e.g. from :func:`load_run`) side by side.

    ``labels`` name the runs (default: A, B, C, ...). ``prices`` (USD per hour, one per run, None to keep the
    run's own) override the price each run recorded; a run with neither has no cost column figures.
    Offline rows give offline throughput, the single-stream p99 and the offline cost per 1000; a "server"
    row gives the highest rate that met the p99 bound, the p99 measured at that rate, and its cost.
    """
    if not runs:
        raise InputError("compare: expected at least one bench run, got none", input="runs",
                         expected="one or more bench.json", got=0)
    labels = list(labels) if labels else [_letter(i) for i in range(len(runs))]
    prices = list(prices) if prices else [None] * len(runs)
    if len(labels) != len(runs) or len(prices) != len(runs):
        raise InputError(f"compare: {len(runs)} runs need as many labels and prices, got "
                         f"{len(labels)} labels and {len(prices)} prices", input="prices",
                         expected=len(runs), got=len(prices))
    kept, rows = [], {}
    for i, (run, label, price) in enumerate(zip(runs, labels, prices)):
        price = check_price(price, f"prices[{i}]") if price is not None else \
            (run.get("config") or {}).get(PRICE_KEY)
        kept.append({"label": label, "source": run.get("source", label), "machine": dict(run.get("machine") or {}),
                     "price_per_hour_usd": price, "model": run.get("model")})
        for r in run.get("results", []):
            if r.get("status", "ok") != "ok":
                continue
            backend, precision = str(r.get("backend")), str(r.get("precision"))
            for b in r.get("batches") or []:
                ss, off = b.get("single_stream") or {}, b.get("offline") or {}
                thr = off.get("throughput_per_s")
                figures = Figures(thr, ss.get("p99_ms"), cost_per_1000(thr, price) if price else None)
                rows.setdefault((backend, precision, str(b.get("batch"))), [None] * len(runs))[i] = figures
            server = r.get("server") or {}
            if server.get("max_rate_per_s"):
                rate = server["max_rate_per_s"]
                at = [t for t in server.get("trials") or [] if t.get("rate_per_s") == rate and t.get("passed")]
                p99 = at[-1].get("p99_ms") if at else server.get("p99_bound_ms")
                figures = Figures(rate, p99, cost_per_1000(rate, price) if price else None)
                rows.setdefault((backend, precision, "server"), [None] * len(runs))[i] = figures
    return Comparison(kept, rows)


def _letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"R{i + 1}"
