"""Backends side by side on this machine: eager, torchscript, torch_compile, onnxruntime, openvino.

For an MLP, a ResNet-18-style CNN, a MobileNetV3-small-style CNN and a BERT-style encoder (transformers
BertModel, random weights, seq 128), at batch 1 and 32, fp32: median and p90 latency, speed-up over
eager, max abs error vs eager, and for ONNX Runtime / OpenVINO the engine against the raw runtime driven
by hand on the same compiled model. Then the engine's own per-call overhead over a raw
``InferenceSession.run`` / infer request on a tiny MLP, and whether ONNX Runtime's transformer optimizer
(attention fusion) closes the encoder gap.

    python benchmarks/bench_backends.py            # the full table (several minutes on 2 cores)
    python benchmarks/bench_backends.py --quick    # smaller inputs, fewer calls (about a minute or two)

Timings are ratios measured side by side in one run; on a shared machine they are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.utils._pytree as pytree  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models as bench_models  # noqa: E402

import motorpool  # noqa: E402
from motorpool.testing.zoo import MLP as TinyMLP  # noqa: E402

BACKENDS = ("eager", "torchscript", "torch_compile", "onnxruntime", "openvino")
MODELS = ("mlp", "resnet18", "mobilenetv3s", "bert")


def measure(fn: Callable[[], Any], *, budget_s: float, min_calls: int, max_calls: int, warmup: int) -> list[float]:
    """Per-call latencies in seconds: ``warmup`` calls, then calls until the budget or ``max_calls``."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_calls and (len(samples) < min_calls or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def p90(samples: list[float]) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]


def max_abs_err(ref: Any, out: Any) -> float:
    worst = 0.0
    for r, o in zip(pytree.tree_flatten(ref)[0], pytree.tree_flatten(out)[0]):
        o = torch.as_tensor(np.asarray(o)) if not isinstance(o, torch.Tensor) else o
        worst = max(worst, float((r.double() - o.double()).abs().max()))
    return worst


def raw_call(engine: motorpool.Engine, inputs: tuple[torch.Tensor, ...]) -> Callable[[], Any] | None:
    """The same compiled model driven by hand through the runtime's own public API, NumPy in and out."""
    arrays = [x.numpy() for x in inputs]
    runner = engine.runner
    if engine.backend == "onnxruntime":
        session = runner.session
        feed = {i.name: a for i, a in zip(session.get_inputs(), arrays)}
        return lambda: session.run(None, feed)
    if engine.backend == "openvino":
        request = runner.compiled.create_infer_request()
        return lambda: request.infer(arrays)
    return None


def bench_model(name: str, args, rows: list[dict]) -> None:
    """Compile every variant, then time them round-robin, so that a load change on the machine hits all alike."""
    model, make_inputs, desc = bench_models.build(name, image_size=args.image_size, bert_size=args.bert_size,
                                                  seq=args.seq)
    batches = args.batches
    inputs = {b: make_inputs(b) for b in batches}
    with torch.inference_mode():
        refs = {b: model(*inputs[b]) for b in batches}
    variants: list[tuple[str, str, dict]] = [(b, b, {}) for b in args.backends]
    if name == "bert" and "onnxruntime" in args.backends:
        hidden, _, heads, _ = bench_models.BERT_SIZES[args.bert_size]
        opt = {"transformer_optimizer": "bert", "num_heads": heads, "hidden_size": hidden}
        variants.append(("onnxruntime", "onnxruntime+bert-opt", opt))
        # ORT's attention fusion matches the graph the TorchScript exporter writes for HF's "eager"
        # attention (same weights, same function; only the traced graph differs)
        variants.append(("onnxruntime", "onnxruntime+bert-opt (ts, eager attn)",
                         {**opt, "exporters": ["torchscript"], "_attn": "eager"}))
    engines: list[tuple[str, motorpool.Engine, float]] = []
    for backend, label, options in variants:
        print(f"  {name}: compiling {label} ...", file=sys.stderr, flush=True)
        options = dict(options)
        attn = options.pop("_attn", None)
        if attn:
            model.bert.set_attn_implementation(attn)
        t0 = time.perf_counter()
        try:
            engine = motorpool.compile(model, make_inputs(2), backend=backend, cache=False, options=options)
        except Exception as exc:  # noqa: BLE001 - a backend that fails is a row with its reason
            rows.append({"model": name, "desc": desc, "backend": label, "error": f"{type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160]}"})
            continue
        finally:
            if attn:
                model.bert.set_attn_implementation("sdpa")
        engines.append((label, engine, time.perf_counter() - t0))
    for b in batches:
        x = inputs[b]
        calls: dict[str, Callable[[], Any]] = {}
        for label, engine, _ in engines:
            calls[label] = (lambda e=engine: e(*x))
            raw = raw_call(engine, x)
            if raw is not None:
                calls[label + "/raw"] = raw
        print(f"  {name}: timing batch {b} ({len(calls)} callables, {args.rounds} rounds) ...", file=sys.stderr,
              flush=True)
        # big batches: a longer budget but fewer calls required (a ResNet-18 batch of 32 takes seconds here)
        budget = (args.budget if b == 1 else args.budget * 2) / args.rounds
        min_calls = max(1, -(-(args.min_calls if b == 1 else max(3, args.min_calls // 2)) // args.rounds))
        samples: dict[str, list[float]] = {k: [] for k in calls}
        for fn in calls.values():
            for _ in range(args.warmup):
                fn()
        for _ in range(args.rounds):
            for k, fn in calls.items():
                samples[k] += measure(fn, budget_s=budget, min_calls=min_calls,
                                      max_calls=max(1, args.max_calls // args.rounds), warmup=0)
        for label, engine, compile_s in engines:
            s_ = samples[label]
            row = {"model": name, "desc": desc, "backend": label, "batch": b, "median_ms": statistics.median(s_) * 1e3,
                   "p90_ms": p90(s_) * 1e3, "calls": len(s_), "max_abs_err": max_abs_err(refs[b], engine(*x)),
                   "compile_s": compile_s,
                   "exporter": engine.report.info.get("exporter") or engine.report.info.get("converter")}
            fused = engine.report.info.get("transformer_optimizer", {}).get("fused")
            if fused:
                row["fused"] = fused
            if label + "/raw" in samples:
                row["raw_median_ms"] = statistics.median(samples[label + "/raw"]) * 1e3
            rows.append(row)
        eager = next((r["median_ms"] for r in rows if r.get("model") == name and r.get("batch") == b
                      and r["backend"] == "eager"), None)
        if eager:
            for r in rows:
                if r.get("model") == name and r.get("batch") == b and "median_ms" in r:
                    r["speedup"] = eager / r["median_ms"]


def overhead(args) -> list[dict]:
    """Engine call vs the raw runtime call on a tiny MLP at batch 1 (best of several rounds, microseconds)."""
    torch.manual_seed(0)
    model = TinyMLP().eval()
    x = torch.randn(1, 32)
    xn = x.numpy()
    out = []

    def per_call(fns: dict[str, Callable[[], Any]], n: int) -> dict[str, float]:
        """Best-of-rounds mean per call; rounds interleave the callables, so drift hits all alike."""
        best = {k: float("inf") for k in fns}
        for fn in fns.values():
            for _ in range(200):
                fn()
        for _ in range(args.overhead_rounds):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                best[k] = min(best[k], (time.perf_counter() - t0) / n)
        return {k: v * 1e6 for k, v in best.items()}

    for backend in ("onnxruntime", "openvino"):
        if backend not in args.backends:
            continue
        engine = motorpool.compile(model, (x,), backend=backend, cache=False)
        runner = engine.runner
        n = args.overhead_calls
        if backend == "onnxruntime":
            s = runner.session
            names = [o.name for o in s.get_outputs()]
            iname = s.get_inputs()[0].name
            raw = {"InferenceSession.run": lambda: s.run(names, {iname: xn})}
        else:
            import openvino as ov

            req = runner.compiled.create_infer_request()

            def by_hand():
                req.set_input_tensor(0, ov.Tensor(xn, shared_memory=True))
                req.infer()
                return req.get_output_tensor(0).data.copy()

            raw = {"InferRequest.infer([x])": lambda: req.infer([xn]),
                   "set_input_tensor+infer()": by_hand}
        figures = per_call({**raw, "runner.run": lambda: runner.run([xn]), "engine(numpy)": lambda: engine(xn),
                            "engine(torch)": lambda: engine(x)}, n)
        best_raw = min(v for k, v in figures.items() if k in raw)
        out.append({"backend": backend, "us": figures, "overhead_numpy_us": figures["engine(numpy)"] - best_raw,
                    "overhead_torch_us": figures["engine(torch)"] - best_raw})
    return out


def print_table(rows: list[dict]) -> None:
    head = (f"{'model':<13}{'batch':>5}  {'backend':<33}{'median ms':>10}{'p90 ms':>9}{'x eager':>8}"
            f"{'max abs err':>12}{'raw ms':>8}{'eng/raw':>8}  notes")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<13}{'':>5}  {r['backend']:<33}FAILED: {r['error']}")
            continue
        raw = r.get("raw_median_ms")
        raw_text = f"{raw:.3f}" if raw else "-"
        ratio_text = f"{r['median_ms'] / raw:.2f}" if raw else "-"
        notes = []
        if r.get("exporter"):
            notes.append(str(r["exporter"]))
        if r.get("fused"):
            notes.append("fused " + ",".join(f"{k}={v}" for k, v in r["fused"].items()))
        print(f"{r['model']:<13}{r['batch']:>5}  {r['backend']:<33}{r['median_ms']:>10.3f}{r['p90_ms']:>9.3f}"
              f"{r.get('speedup', float('nan')):>7.2f}x{r['max_abs_err']:>12.2e}"
              f"{raw_text:>8}{ratio_text:>8}  "
              + "; ".join(notes))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller inputs and fewer calls")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--batches", default="1,32")
    p.add_argument("--image-size", type=int, default=None, help="CNN input size (224; --quick: 96)")
    p.add_argument("--bert-size", default=None, choices=sorted(bench_models.BERT_SIZES),
                   help="encoder config (minilm; --quick: mini)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--budget", type=float, default=None, help="seconds of calls per cell at batch 1")
    p.add_argument("--rounds", type=int, default=None, help="round-robin rounds per cell (5; --quick: 3)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads for the torch backends (default: torch's own choice). On a busy "
                        "shared machine torch's OpenMP pool can be far slower with 2 threads than with 1")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--no-overhead", action="store_true")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.backends = [b for b in args.backends.split(",") if b]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.image_size = args.image_size or (96 if args.quick else 224)
    args.bert_size = args.bert_size or ("mini" if args.quick else "minilm")
    args.budget = args.budget or (0.5 if args.quick else 2.0)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.min_calls, args.max_calls, args.warmup = (5, 200, 1) if args.quick else (10, 1000, 2)
    args.overhead_rounds, args.overhead_calls = (9, 500) if args.quick else (25, 1000)

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"motorpool {motorpool.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"{motorpool.hardware.summary()}", flush=True)
    rows: list[dict] = []
    for name in args.models:
        bench_model(name, args, rows)
    print()
    print_table(rows)
    over = [] if args.no_overhead else overhead(args)
    if over:
        print("\nengine overhead on a tiny MLP (32-64-64-10, batch 1), best of rounds, microseconds per call:")
        for o in over:
            figures = ", ".join(f"{k} {v:.1f}" for k, v in o["us"].items())
            print(f"  {o['backend']:<12} {figures}; engine overhead over the fastest raw call: "
                  f"{o['overhead_numpy_us']:+.1f} (numpy), {o['overhead_torch_us']:+.1f} (torch)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "overhead": over}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
