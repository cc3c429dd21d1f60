"""Benchmark: does ``fastest``'s pick stay the fastest once the caller runs it in its own process?

    python benchmarks/bench_fastest_regret.py --candidates onnxruntime,openvino,torchscript
    python benchmarks/bench_fastest_regret.py --models mlp,encoder --threads 1 --real

Per model (every zoo model, ``motorpool.testing.zoo``; ``--real`` adds a couple of Hugging Face architectures
from ``benchmarks/bench_real.py`` when transformers is installed), in this one process:

1. ``motorpool.compile(backend="fastest", candidates=...)`` with a fresh decision cache: its pick;
2. afterwards, every candidate compiled here by name, and all of them (with the engine ``fastest`` returned)
   timed the way a user runs them: ``engine(*inputs)`` at the objective's batch, in interleaved rounds whose
   order is shuffled each round, the first few milliseconds of each engine's turn not counted (another
   runtime's worker threads may still be spinning);
3. regret = p50 of the pick's own backend / the best p50, both from step 2 (goal: <= 1.05).

The timing here is written independently of ``motorpool.selection.timing``, so the check does not grade
``fastest`` with its own ruler. The artifact cache is off (MOTORPOOL_NO_CACHE=1): every compile is real.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("MOTORPOOL_CACHE", tempfile.mkdtemp(prefix="bench-regret-cache-"))
os.environ["MOTORPOOL_NO_CACHE"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import motorpool  # noqa: E402
from motorpool.testing import zoo  # noqa: E402

#: the Hugging Face architectures --real adds (bench_real.build's names): one text encoder, one vision one
REAL_MODELS = ("bert", "vit")


def cases(names: list[str], batch: int, real: bool):
    """``(name, model, example_inputs)`` per model; a real model that cannot be built is reported and skipped."""
    out = [(n, *zoo.get(n).build(batch=batch)) for n in names]
    if real:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        try:
            import bench_real
        except ImportError as exc:
            print(f"--real skipped: {exc}")
            return out
        for n in REAL_MODELS:
            try:
                model, make_inputs, _, _ = bench_real.build(n)
            except ImportError as exc:
                print(f"{n} skipped: {exc}")
                continue
            out.append((f"{n}*", model.eval(), make_inputs(batch)))
    return out


def side_by_side(engines: dict, inputs: list, *, rounds: int, turn_s: float, settle_s: float) -> dict[str, float]:
    """p50 (ms) of each engine from ``rounds`` shuffled rounds; in each, every engine runs for ``turn_s``, of
    which the first ``settle_s`` is not counted."""
    times: dict[str, list[float]] = {n: [] for n in engines}
    order = list(engines)
    for e in engines.values():
        for _ in range(3):
            e(*inputs)
    for _ in range(rounds):
        random.shuffle(order)
        for n in order:
            call = engines[n]
            start = time.perf_counter()
            while time.perf_counter() - start < settle_s:
                call(*inputs)
            end = time.perf_counter() + turn_s
            count = 0
            while count < 3 or time.perf_counter() < end:
                t0 = time.perf_counter()
                call(*inputs)
                times[n].append(time.perf_counter() - t0)
                count += 1
    return {n: statistics.median(t) * 1e3 for n, t in times.items()}


def bench_model(name, model, example, candidates, args) -> dict:
    row: dict = {"model": name}
    t0 = time.perf_counter()
    engine = motorpool.compile(model, example, backend="fastest", candidates=candidates, budget_s=args.budget)
    row["fastest_s"] = time.perf_counter() - t0
    row["pick"] = engine.backend
    row["decided_on"] = {c.backend: round(c.figures.get("decided_on", c.figures["timing"])["p50_ms"], 4)
                         for c in engine.report.candidates if c.status in ("chosen", "verified")}
    engines = {"(fastest's engine)": engine}
    for b in candidates:
        try:
            engines[b] = motorpool.compile(model, example, backend=b)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot take this model is not "best"
            row.setdefault("failed", {})[b] = f"{type(exc).__name__}: {exc}"[:160]
    p50 = side_by_side(engines, list(example), rounds=args.rounds, turn_s=args.turn, settle_s=args.settle)
    row["returned_p50"] = p50.pop("(fastest's engine)")
    row["p50"] = p50
    row["best"] = min(p50, key=p50.get)
    row["regret"] = p50[row["pick"]] / p50[row["best"]] if row["pick"] in p50 else math.nan
    return row


def print_table(rows: list[dict], candidates: list[str]) -> None:
    print()
    head = f"{'model':12s} {'pick':12s} {'pick p50':>9s} {'best':12s} {'best p50':>9s} {'regret':>7s} "
    head += " ".join(f"{c[:11]:>11s}" for c in candidates) + f" {'returned':>9s} {'select s':>8s}"
    print(head)
    for r in rows:
        if "error" in r:
            print(f"{r['model']:12s} ERROR {r['error']}")
            continue
        per = " ".join(f"{r['p50'].get(c, math.nan):11.4f}" for c in candidates)
        print(f"{r['model']:12s} {r['pick']:12s} {r['p50'][r['pick']]:9.4f} {r['best']:12s} "
              f"{r['p50'][r['best']]:9.4f} {r['regret']:7.3f} {per} {r['returned_p50']:9.4f} {r['fastest_s']:8.1f}")
    regrets = [r["regret"] for r in rows if "regret" in r and not math.isnan(r["regret"])]
    if regrets:
        geo = math.exp(sum(math.log(x) for x in regrets) / len(regrets))
        print(f"\nregret: geometric mean {geo:.3f}, worst {max(regrets):.3f}, "
              f"<= 1.05 on {sum(x <= 1.05 for x in regrets)}/{len(regrets)} models")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(zoo.ZOO), help="zoo models, comma-separated")
    ap.add_argument("--candidates", default="onnxruntime,openvino,torchscript")
    ap.add_argument("--batch", type=int, default=2, help="the example's batch (the objective is p50 at it)")
    ap.add_argument("--budget", type=float, default=None, help="fastest's total timing budget (s)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in this process first")
    ap.add_argument("--real", action="store_true", help=f"add {', '.join(REAL_MODELS)} (transformers)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--turn", type=float, default=0.1, help="seconds per engine per round")
    ap.add_argument("--settle", type=float, default=0.01, help="seconds of each turn not counted")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    candidates = args.candidates.split(",")
    print(f"hardware: {motorpool.hardware.summary()}; torch threads {torch.get_num_threads()}; "
          f"candidates {', '.join(candidates)}")
    rows = []
    for name, model, example in cases([n for n in args.models.split(",") if n], args.batch, args.real):
        try:
            row = bench_model(name, model, example, candidates, args)
        except Exception as exc:  # noqa: BLE001 - one model's failure is a row, not the end of the run
            row = {"model": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
        rows.append(row)
        print({k: v for k, v in row.items() if k != "model"} | {"model": name}, flush=True)
    print_table(rows, candidates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
