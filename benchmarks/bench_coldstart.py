"""Cold start: first compile vs load from motorpool's artifact cache, per backend and zoo model; and the
Engine's own overhead over calling each backend's runtime directly.

Each cold start runs in a fresh Python process, as a service restart would:

1. ``compile``: an empty artifact cache and an empty Inductor cache dir; ``motorpool.compile(..., cache=True)``
   compiles, verifies and stores the engine;
2. ``load``: the same artifact cache, again an empty Inductor cache dir (so only motorpool's entry can
   help, not Inductor's own local cache from step 1); the same call loads the engine.

Times exclude importing torch and the backend's runtime (both processes import them before the clock
starts); they include everything ``motorpool.compile`` does (hashing the model for the key, export,
compile, verification, storing; or loading). The first call after each is reported too.

    python benchmarks/bench_coldstart.py                      # all backends, the whole zoo
    python benchmarks/bench_coldstart.py --backends onnxruntime,openvino --models mlp,cnn
    python benchmarks/bench_coldstart.py --overhead-only

Timings on a shared machine are noisy; the ratios come from the same run, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_BACKENDS = "eager,torchscript,torch_compile,onnxruntime,openvino"
GOAL_BACKENDS = ("onnxruntime", "openvino", "torch_compile")  # the goal: load >= 10x faster


def _worker(args) -> None:
    """One cold start in this (fresh) process; prints one JSON line."""
    os.environ["MOTORPOOL_CACHE"] = args.cache
    os.environ.pop("MOTORPOOL_NO_CACHE", None)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.inductor_dir or tempfile.mkdtemp(prefix="coldstart-inductor-")
    import warnings

    warnings.simplefilter("ignore")
    import torch

    import motorpool
    from motorpool.plugin.registry import safe_availability
    from motorpool.testing import zoo

    backend = motorpool.get_registry().get(args.backend)
    av = safe_availability(backend)  # imports the runtime: outside the clock in both steps
    if not av.available:
        print(json.dumps({"error": f"unavailable: {av.reason}"}))
        return
    model, x = zoo.get(args.model).build(batch=2)
    t0 = time.perf_counter()
    try:
        engine = motorpool.compile(model, x, backend=args.backend, cache=True)
    except motorpool.MotorpoolError as exc:
        print(json.dumps({"error": str(exc).splitlines()[0][:200]}))
        return
    total = time.perf_counter() - t0
    fresh = zoo.get(args.model).inputs(3)
    t0 = time.perf_counter()
    engine(*fresh)
    first_call = time.perf_counter() - t0
    cache = engine.report.info.get("cache", {})
    print(json.dumps({"total_s": total, "first_call_s": first_call, "compile_time_s": engine.report.compile_time_s,
                      "load_time_s": engine.report.load_time_s, "hit": bool(cache.get("hit")),
                      "stored": bool(cache.get("stored")), "cache_reason": cache.get("reason"),
                      "torch": torch.__version__, "inductor_dir": os.environ["TORCHINDUCTOR_CACHE_DIR"]}))


def _run_worker(step: str, backend: str, model: str, cache: Path, timeout: float,
                inductor_dir: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", step, "--backend", backend, "--model", model, "--cache", str(cache)]
    if inductor_dir:
        cmd += ["--inductor-dir", inductor_dir]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def cold_start(backends: list[str], models: list[str], timeout: float) -> list[dict]:
    rows = []
    for model in models:
        for backend in backends:
            cache = Path(tempfile.mkdtemp(prefix="coldstart-cache-"))
            first = _run_worker("compile", backend, model, cache, timeout)
            second = _run_worker("load", backend, model, cache, timeout) if "error" not in first else {}
            row = {"model": model, "backend": backend, "compile": first, "load": second}
            if "error" not in first and "error" not in second and second:
                row["speedup"] = first["total_s"] / second["total_s"]
                if backend == "torch_compile":
                    # a restart on the same machine also finds Inductor's own on-disk cache (its compiled
                    # C++ kernels), which motorpool's entry cannot carry on CPU
                    warm = _run_worker("load", backend, model, cache, timeout, inductor_dir=first["inductor_dir"])
                    row["load_inductor_dir_kept"] = warm
                    if "error" not in warm:
                        row["speedup_inductor_dir_kept"] = first["total_s"] / warm["total_s"]
            rows.append(row)
            _print_cold_row(row)
    return rows


def _print_cold_row(row: dict) -> None:
    c, ld = row["compile"], row["load"]
    name = f"{row['model']:10s} {row['backend']:14s}"
    if "error" in c:
        print(f"{name} compile failed: {c['error']}", flush=True)
        return
    if not ld or "error" in ld:
        print(f"{name} compile {c['total_s']:7.2f}s  load failed: {(ld or {}).get('error')}", flush=True)
        return
    note = "" if ld["hit"] else f"  (not cached: {c.get('cache_reason') or 'compile cost none'})"
    print(f"{name} compile {c['total_s']:7.2f}s (backend {c['compile_time_s']:6.2f}s)  "
          f"load {ld['total_s']:7.3f}s (backend {ld['load_time_s'] or 0:6.3f}s)  "
          f"x{row['speedup']:6.1f}  first call {c['first_call_s'] * 1e3:7.2f} / {ld['first_call_s'] * 1e3:7.2f} ms"
          f"{note}", flush=True)
    warm = row.get("load_inductor_dir_kept")
    if warm and "error" not in warm:
        print(f"{'':25s} load with Inductor's own cache dir kept {warm['total_s']:7.3f}s  "
              f"x{row['speedup_inductor_dir_kept']:6.1f}", flush=True)


# -- the engine's overhead -----------------------------------------------------------------------------------


def _raw_call(engine):
    """The backend's runtime called directly, on native inputs, bypassing the Engine and the Runner."""
    import torch

    runner = engine.runner
    if engine.backend == "onnxruntime":
        names = [i.name for i in runner.session.get_inputs()]
        outs = [o.name for o in runner.session.get_outputs()]
        return "InferenceSession.run", lambda xs: runner.session.run(outs, dict(zip(names, xs)))
    if engine.backend == "openvino":
        request = runner.compiled.create_infer_request()
        return "InferRequest.infer", lambda xs: request.infer(xs, share_inputs=True)
    module = runner.module

    def call(xs):
        with torch.inference_mode():
            return module(*xs)

    label = {"eager": "model(x)", "torchscript": "ScriptModule(x)", "torch_compile": "compiled(x)"}
    return label.get(engine.backend, "module(x)"), call


def _time_calls(fn, xs, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn(xs)
    return (time.perf_counter() - t0) / n


def overhead(backends: list[str], model_name: str, rounds: int, calls: int) -> list[dict]:
    """Median over ``rounds`` of blocks of ``calls`` calls of each variant (engine, runner, raw), in a
    shuffled order each round."""
    import warnings

    warnings.simplefilter("ignore")
    import torch

    import motorpool
    from motorpool.testing import zoo

    # one intra-op thread: on a shared machine, thread hand-offs would swamp microsecond differences
    torch.set_num_threads(1)
    rows = []
    for backend in backends:
        model, x = zoo.get(model_name).build(batch=1)
        try:
            engine = motorpool.compile(model, x, backend=backend, cache=False)
        except motorpool.MotorpoolError as exc:
            rows.append({"backend": backend, "error": str(exc).splitlines()[0][:160]})
            print(f"{backend:14s} failed: {rows[-1]['error']}", flush=True)
            continue
        native = engine._convert_in(x)
        label, raw = _raw_call(engine)
        x_np = tuple(t.numpy() for t in x)
        fns = {"engine (torch in)": lambda xs: engine(*x), "engine (numpy in)": lambda xs: engine(*x_np),
               "runner.run": lambda xs: engine.runner.run(xs), "raw": raw}
        for fn in fns.values():
            for _ in range(20):
                fn(native)
        samples = {k: [] for k in fns}
        order = list(fns)
        shuffler = random.Random(0)
        for _ in range(rounds):
            shuffler.shuffle(order)  # no variant always runs right after another: order effects average out
            for k in order:
                samples[k].append(_time_calls(fns[k], native, calls))
        med = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
        native_kind = "torch" if engine.runner.native_inputs == "torch" else "numpy"
        eng_key = "engine (torch in)" if native_kind == "torch" else "engine (numpy in)"
        # the Engine's own steps timed inside each call (motorpool.profile): immune to drift between blocks
        steps = motorpool.profile(engine, x, calls=3000, warmup=50, operators=False)
        row = {"backend": backend, "raw_call": label, "native_inputs": native_kind,
               **{f"{k} us": round(v, 2) for k, v in med.items()},
               "overhead_us": round(med[eng_key] - med["raw"], 2),
               "overhead_pct": round(100 * (med[eng_key] / med["raw"] - 1), 1),
               "own_steps_us": round(steps.overhead_ms * 1e3, 2),
               "backend_step_us": round(steps.stages["backend"]["median_ms"] * 1e3, 2)}
        rows.append(row)
        print(f"{backend:14s} raw {label:22s} {med['raw']:9.2f} us | runner.run {med['runner.run']:9.2f} us | "
              f"engine({native_kind} in) {med[eng_key]:9.2f} us | other kind in "
              f"{med['engine (numpy in)' if native_kind == 'torch' else 'engine (torch in)']:9.2f} us | "
              f"overhead {row['overhead_us']:7.2f} us ({row['overhead_pct']:+.1f}%) | engine's own steps "
              f"{row['own_steps_us']:6.2f} us per call (backend step {row['backend_step_us']:.2f} us)", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default=DEFAULT_BACKENDS)
    p.add_argument("--models", default=None, help="zoo models (default: the whole zoo)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per cold-start process")
    p.add_argument("--overhead-model", default="mlp")
    p.add_argument("--overhead-rounds", type=int, default=15)
    p.add_argument("--overhead-calls", type=int, default=200)
    p.add_argument("--overhead-only", action="store_true")
    p.add_argument("--cold-only", action="store_true")
    p.add_argument("--json", default=None, help="write every figure to this file")
    p.add_argument("--worker", choices=["compile", "load"], help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--inductor-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return
    from motorpool.testing import zoo

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    models = [m.strip() for m in args.models.split(",")] if args.models else list(zoo.ZOO)
    out: dict = {"machine": _machine()}
    print(f"machine: {out['machine']['summary']}; load average {out['machine']['load_average']}")
    if not args.overhead_only:
        print("\n== cold start: first compile vs load from the artifact cache (fresh process each) ==")
        out["cold_start"] = cold_start(backends, models, args.timeout)
        print("\n== summary: median speed-up per backend (compile total / load total) ==")
        for b in backends:
            ups = [r["speedup"] for r in out["cold_start"] if r["backend"] == b and "speedup" in r
                   and r["load"].get("hit")]
            if ups:
                goal = "  goal >= 10x: " + ("met" if statistics.median(ups) >= 10 else "NOT met") \
                    if b in GOAL_BACKENDS else ""
                print(f"{b:14s} median x{statistics.median(ups):7.1f}  min x{min(ups):7.1f}  max x{max(ups):7.1f}  "
                      f"({len(ups)} models){goal}")
            else:
                print(f"{b:14s} no cache hits measured (not cached, or failed)")
    if not args.cold_only:
        print(f"\n== engine overhead over the raw runtime call, zoo:{args.overhead_model} batch 1 ==")
        out["overhead"] = overhead(backends, args.overhead_model, args.overhead_rounds, args.overhead_calls)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        print(f"\nwrote {args.json}")


def _machine() -> dict:
    from motorpool.plugin import hardware

    return {"summary": hardware.summary(), "fingerprint": hardware.fingerprint(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


if __name__ == "__main__":
    main()
