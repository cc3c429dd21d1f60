"""Benchmark: how far ``backend="fastest"`` lands from the best backend, and what ``auto`` costs afterwards.

    python benchmarks/bench_select.py                          # every zoo model, every available backend
    python benchmarks/bench_select.py --models mlp,cnn --bench-models "" --backends eager,torchscript,onnxruntime

For each model of the zoo (motorpool.testing.zoo) and of benchmarks/models.py (marked *), in one run:

1. ``auto`` (declared) is the first backend the declared ranking would try, without any measured decision.
2. ``fastest``: ``motorpool.compile(backend="fastest")`` with a fresh decision cache; its wall time.
3. Exhaustive: every candidate compiled here by name, then all of them and the engine ``fastest`` returned
   timed side by side (interleaved rounds, so a load change on the machine hits all alike).
   regret = p50 of fastest's pick / best p50, both from this side-by-side timing (goal: <= 1.05).
4. ``auto`` again, now with fastest's decision in the cache: its wall time and how many backends it
   compiled (goal: one, the winner; no candidate compiled twice).

The artifact cache is switched off (MOTORPOOL_NO_CACHE=1) so that every compile is a real one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("MOTORPOOL_CACHE", tempfile.mkdtemp(prefix="bench-select-cache-"))
os.environ["MOTORPOOL_NO_CACHE"] = "1"

import torch  # noqa: E402

import motorpool  # noqa: E402
from motorpool.plugin.registry import safe_availability  # noqa: E402
from motorpool.selection.ranking import rank  # noqa: E402
from motorpool.testing import zoo  # noqa: E402
from motorpool.selection.timing import measure_interleaved  # noqa: E402


def cases(names, batch, bench_models):
    out = [(n, *zoo.get(n).build(batch=batch)) for n in names if n]
    if bench_models:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import models  # benchmarks/models.py: serving-sized models (random weights)

        sizes = {"resnet18": dict(image_size=64), "mobilenetv3s": dict(image_size=96), "bert": dict(seq=32)}
        for n in bench_models.split(","):
            model, make_inputs, _ = models.build(n, **sizes.get(n, {}))
            out.append((f"{n}*", model, make_inputs(batch)))
    return out


class CompileCounter:
    """Counts the compiles each backend does in this process."""

    def __init__(self, names):
        self.counts = {n: 0 for n in names}
        reg = motorpool.get_registry()
        for n in names:
            backend = reg.get(n)
            original = backend.compile

            def counted(*args, _n=n, _orig=original, **kwargs):
                self.counts[_n] += 1
                return _orig(*args, **kwargs)

            backend.compile = counted

    def reset(self):
        for n in self.counts:
            self.counts[n] = 0

    def total(self):
        return sum(self.counts.values())


def bench_model(name, model, example, backends, *, budget_s, exhaustive_s, counter):
    row = {"model": name}
    spec_rank = rank("fp32", names=backends)
    row["auto_declared"] = spec_rank.names[0] if spec_rank.names else None

    t0 = time.perf_counter()
    engine = motorpool.compile(model, example, backend="fastest", candidates=backends, budget_s=budget_s)
    row["fastest_s"] = time.perf_counter() - t0
    row["fastest"] = engine.backend
    row["candidates"] = {c.backend: c.status if c.status in ("chosen", "verified") else f"{c.status}: {c.reason[:120]}"
                         for c in engine.report.candidates}
    row["fastest_figures"] = {c.backend: round(c.figures["timing"]["p50_ms"], 4) for c in engine.report.candidates
                              if c.status in ("chosen", "verified")}
    fastest_backend = engine.backend
    del engine  # its runtime's threads must not compete with the exhaustive engines below

    engines = {}
    for b in backends:
        try:
            engines[b] = motorpool.compile(model, example, backend=b)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot take this model is not "best"
            row.setdefault("exhaustive_failed", {})[b] = str(exc)[:160]
    calls = {}
    inputs = list(example)
    for b, e in engines.items():
        calls[b] = (lambda e=e: e(*inputs))
    figures = measure_interleaved(calls, budget_s=exhaustive_s * len(calls), batch=int(inputs[0].shape[0]))
    p50 = {k: v["p50_ms"] for k, v in figures.items()}
    best = min(p50, key=p50.get)
    row["exhaustive_p50_ms"] = {k: round(v, 4) for k, v in p50.items()}
    row["best"] = best
    # the pick's own backend, compiled and timed beside the others under the same conditions
    row["regret"] = p50[fastest_backend] / p50[best] if fastest_backend in p50 else float("nan")
    del engines, calls

    counter.reset()
    t0 = time.perf_counter()
    auto = motorpool.compile(model, example, backend="auto", candidates=backends)
    row["auto_cached_s"] = time.perf_counter() - t0
    row["auto_cached"] = auto.backend
    row["auto_cached_compiles"] = counter.total()
    row["auto_cached_source"] = auto.report.info.get("selection", {}).get("source", "declared ranking")
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(zoo.ZOO))
    ap.add_argument("--backends", default=None, help="default: every available backend")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--budget", type=float, default=None, help="fastest's total timing budget (s)")
    ap.add_argument("--exhaustive", type=float, default=1.0, help="side-by-side timing seconds per engine")
    ap.add_argument("--bench-models", default="resnet18,mobilenetv3s,bert",
                    help="models from benchmarks/models.py to add (resnet18 at 64x64, mobilenetv3s at 96x96, "
                         "a MiniLM-shaped BERT at seq 32); '' for none")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")

    reg = motorpool.get_registry()
    if args.backends:
        backends = args.backends.split(",")
    else:
        backends = [n for n in reg.names() if safe_availability(reg.get(n)).available]
    counter = CompileCounter(backends)
    print(f"hardware: {motorpool.hardware.summary()} ({motorpool.hardware.detect().hardware_class})")
    print(f"candidates: {', '.join(backends)}; decision cache {os.environ['MOTORPOOL_CACHE']}")
    rows = []
    for name, model, example in cases(args.models.split(","), args.batch, args.bench_models):
        try:
            row = bench_model(name, model, example, backends, budget_s=args.budget, exhaustive_s=args.exhaustive,
                              counter=counter)
        except Exception as exc:  # noqa: BLE001 - one model's failure is a row, not the end of the run
            row = {"model": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
        rows.append(row)
        print(json.dumps(row), flush=True)

    ok = [r for r in rows if "regret" in r]
    print()
    print(f"{'model':11s} {'fastest':14s} {'best':14s} {'regret':>7s} {'auto (declared)':16s} "
          f"{'fastest s':>9s} {'auto cached s':>13s} {'compiles':>8s}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:11s} ERROR {r['error']}")
            continue
        print(f"{r['model']:11s} {r['fastest']:14s} {r['best']:14s} {r['regret']:7.3f} {r['auto_declared']:16s} "
              f"{r['fastest_s']:9.1f} {r['auto_cached_s']:13.2f} {r['auto_cached_compiles']:8d}")
    if ok:
        within = sum(r["regret"] <= 1.05 for r in ok)
        same = sum(r["auto_declared"] == r["fastest"] for r in ok)
        print(f"\nregret <= 1.05 on {within}/{len(ok)} models (max {max(r['regret'] for r in ok):.3f}); "
              f"auto's declared first choice == fastest's on {same}/{len(ok)}; "
              f"auto with the cached decision compiled {max(r['auto_cached_compiles'] for r in ok)} backend(s) "
              f"at most and chose fastest's winner on {sum(r['auto_cached'] == r['fastest'] for r in ok)}/{len(ok)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hardware": motorpool.hardware.detect().to_dict(), "backends": backends, "rows": rows}, f,
                      indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
