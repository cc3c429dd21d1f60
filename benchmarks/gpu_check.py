"""GPU check: motorpool's torch backends on one NVIDIA GPU, in one table, in under 8 minutes.

eager, torchscript, torch_compile and torch_compile with ``mode="reduce-overhead"`` (CUDA graphs) on CUDA, at
fp32 (TF32 off, and verified against a float64 reference), fp16 and bf16, at batch 1 and 32, on a ResNet-18
and a transformer encoder. Each row: motorpool's verification figures (max abs error, min cosine, passed),
compile time, p50 latency and the speed-up over the eager engine at the same precision and batch.

Runs with the torch already installed on the GPU machine (it may be older than the 2.13 motorpool pins);
install motorpool without letting pip replace it::

    pip install --no-deps -e .  &&  pip install pluggy platformdirs
    python benchmarks/gpu_check.py                   # --budget 420 (seconds), --quick for one model

Every cell runs in its own try/except: a failure is a row with its reason, never the end of the run. Cells
still waiting when the time budget runs out are listed as skipped with that reason. On a machine without
CUDA the script says why and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
import traceback

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

BACKENDS = (("eager", {}), ("torchscript", {}), ("torch_compile", {}),
            ("torch_compile", {"mode": "reduce-overhead"}))
PRECISIONS = ("fp32", "fp16", "bf16")
BATCHES = (1, 32)
#: fp32 against float64: an engine running TF32 matmuls lands near 1e-3 relative error, true fp32 near 1e-6
TF32_LIMIT = 1e-4


class Encoder(nn.Module):
    """A BERT-base-like encoder over float embeddings (torch.nn only: no transformers needed on the GPU box)."""

    def __init__(self, d=512, layers=6, heads=8, ff=2048):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(self.encoder(x))


class MatmulChain(nn.Module):
    """Four 1024x1024 matmuls: where TF32 shows (its 10-bit mantissa gives ~1e-3 relative error)."""

    def __init__(self, d=1024):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(d, d) for _ in range(4)])

    def forward(self, x):
        return self.layers(x)


def build_models(quick: bool):
    from models import ResNet18, _randomize_norms

    torch.manual_seed(0)
    models = {"resnet18": (_randomize_norms(ResNet18()).eval(), lambda b: (torch.randn(b, 3, 224, 224),))}
    if not quick:
        models["encoder"] = (Encoder().eval(), lambda b: (torch.randn(b, 128, 512),))
    return models


def cuda_problem() -> str | None:
    """Why CUDA cannot be used here, or None."""
    if not torch.cuda.is_available():
        built = getattr(torch.version, "cuda", None)
        if not built:
            return f"this torch {torch.__version__} is built without CUDA"
        return (f"torch {torch.__version__} (CUDA {built}) sees no CUDA device "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def p50_ms(fn, inputs, *, device: str, seconds: float = 0.6, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn(*inputs)
    _sync(device)
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 10:
        t0 = time.perf_counter()
        fn(*inputs)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def max_rel_to_fp64(engine, model, inputs) -> float:
    """Largest error of the engine's fp32 output relative to a float64 CPU run, over the output's scale."""
    ref_model = copy.deepcopy(model).double().cpu()
    with torch.inference_mode():
        ref = ref_model(*[x.double().cpu() for x in inputs])
        out = engine(*inputs)
    ref, out = ref.double(), out.double().cpu()
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def tf32_probe(device: str) -> dict:
    """TF32 off, verified: an fp32 eager engine against float64, next to the same model with TF32 forced on."""
    import motorpool

    torch.manual_seed(0)
    model = MatmulChain().eval()
    x = (torch.randn(64, 1024),)
    engine = motorpool.compile(model, x, backend="eager", device=device, precision="fp32", cache=False)
    xs = tuple(t.to(device) for t in x)
    strict = max_rel_to_fp64(engine, model, xs)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        on_gpu = copy.deepcopy(model).to(device)
        with torch.inference_mode():
            loose_out = on_gpu(*xs).double().cpu()
            ref = copy.deepcopy(model).double()(*[t.double() for t in x])
        loose = float((loose_out - ref).abs().max() / ref.abs().max())
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    return {"fp32_engine_rel_err": strict, "tf32_forced_rel_err": loose, "verified": strict < TF32_LIMIT}


def run_cell(motorpool, name, model, make, backend, extra, precision, device, eager_ms):
    """Compile one (model, backend, precision) and time it at every batch; returns one row per batch."""
    label = backend + (f"[{extra['mode']}]" if extra.get("mode") else "")
    t0 = time.perf_counter()
    engine = motorpool.compile(model, make(2), backend=backend, device=device, precision=precision,
                               options=extra or None, cache=False)
    compile_s = time.perf_counter() - t0
    ver = engine.report.verification or {}
    rows = []
    for batch in BATCHES:
        row = {"model": name, "backend": label, "precision": precision, "batch": batch, "compile_s": compile_s,
               "max_abs_err": ver.get("max_abs_err"), "min_cosine": ver.get("min_cosine"),
               "verified": ver.get("passed")}
        try:
            xs = tuple(t.to(device) for t in make(batch))
            if precision == "fp32" and batch == 1:
                row["rel_err_fp64"] = max_rel_to_fp64(engine, model, xs)
            with torch.inference_mode():
                row["p50_ms"] = p50_ms(engine, xs, device=device)
            base = eager_ms.get((name, precision, batch))
            if backend == "eager" and not extra:
                eager_ms[(name, precision, batch)] = row["p50_ms"]
                base = row["p50_ms"]
            row["speedup"] = base / row["p50_ms"] if base else None
        except Exception as exc:  # noqa: BLE001 - the reason goes in the table
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        rows.append(row)
    return rows


def fmt(v, spec):
    width = int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)
    return "-".rjust(width) if v is None else format(v, spec)


def print_table(rows):
    print()
    head = (f"{'model':<9} {'backend':<30} {'prec':<5} {'batch':>5} {'compile s':>9} {'p50 ms':>9} {'vs eager':>8} "
            f"{'max abs err':>11} {'min cos':>9} {'verified':>8} {'rel err fp64':>12}  note")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<9} {r['backend']:<30} {r['precision']:<5} {r['batch']:>5} {fmt(r.get('compile_s'), '9.1f')} "
              f"{fmt(r.get('p50_ms'), '9.3f')} {fmt(r.get('speedup'), '7.2f') + ('x' if r.get('speedup') else ' '):>8} "
              f"{fmt(r.get('max_abs_err'), '11.2e')} {fmt(r.get('min_cosine'), '9.6f')} "
              f"{str(r.get('verified', '-')):>8} {fmt(r.get('rel_err_fp64'), '12.2e')}  {r.get('error', '')}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=420.0, help="seconds for all cells (default 420)")
    p.add_argument("--quick", action="store_true", help="ResNet-18 only")
    p.add_argument("--device", default="cuda:0",
                   help="a CUDA device; 'cpu' runs the same cells on the CPU (a dry run of this script)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    problem = None if args.device == "cpu" else cuda_problem()
    print(f"gpu_check: python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}")
    if problem:
        print(f"gpu_check: no CUDA here, nothing to check: {problem}")
        return 0
    try:
        import motorpool
    except Exception as exc:  # noqa: BLE001
        print(f"gpu_check: motorpool does not import with torch {torch.__version__}: {type(exc).__name__}: {exc}")
        return 1
    device = args.device
    if device == "cpu":
        gpu_name, has_tf32, has_bf16 = "cpu (dry run)", False, True
        print(f"gpu_check: dry run on the CPU, motorpool {motorpool.__version__}")
    else:
        props = torch.cuda.get_device_properties(torch.device(device))
        gpu_name, has_tf32, has_bf16 = props.name, props.major >= 8, torch.cuda.is_bf16_supported()
        print(f"gpu_check: {props.name}, compute capability {props.major}.{props.minor}, "
              f"{props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, motorpool {motorpool.__version__}")
        print(f"gpu_check: TF32 defaults here: matmul {torch.backends.cuda.matmul.allow_tf32}, "
              f"cudnn {torch.backends.cudnn.allow_tf32}")
    try:
        probe = tf32_probe(device)
        print(f"gpu_check: TF32 off at fp32 {'VERIFIED' if probe['verified'] else 'NOT VERIFIED'}: fp32 engine "
              f"rel err vs float64 {probe['fp32_engine_rel_err']:.2e} (limit {TF32_LIMIT:g}); the same model with "
              f"TF32 forced on {probe['tf32_forced_rel_err']:.2e}"
              + ("" if has_tf32 else " (no TF32 on this device: both are fp32)"))
    except Exception as exc:  # noqa: BLE001
        print(f"gpu_check: TF32 probe failed: {type(exc).__name__}: {exc}")

    rows: list[dict] = []
    eager_ms: dict = {}
    models = build_models(args.quick)
    # fp32 everywhere first, then fp16, then bf16: what matters most is measured before the budget ends
    plan = [(prec, name, backend, extra) for prec in PRECISIONS for name in models for backend, extra in BACKENDS]
    for prec, name, backend, extra in plan:
        model, make = models[name]
        label = backend + (f"[{extra['mode']}]" if extra.get("mode") else "")
        elapsed = time.perf_counter() - start
        if elapsed > args.budget:
            rows += [{"model": name, "backend": label, "precision": prec, "batch": b,
                      "error": f"skipped: time budget of {args.budget:.0f} s spent"} for b in BATCHES]
            continue
        if prec == "bf16" and not has_bf16:
            rows += [{"model": name, "backend": label, "precision": prec, "batch": b,
                      "error": f"skipped: {gpu_name} has no bf16"} for b in BATCHES]
            continue
        print(f"gpu_check: [{elapsed:5.0f} s] {name} {label} {prec}", flush=True)
        try:
            rows += run_cell(motorpool, name, model, make, backend, extra, prec, device, eager_ms)
        except Exception as exc:  # noqa: BLE001 - one failing cell is a row, not the end
            reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"
            rows += [{"model": name, "backend": label, "precision": prec, "batch": b, "error": reason}
                     for b in BATCHES]
            if os.environ.get("GPU_CHECK_TRACEBACK"):
                traceback.print_exc()
        finally:
            torch._dynamo.reset()
            if device != "cpu":
                torch.cuda.empty_cache()
    print_table(rows)
    print(f"\ngpu_check: done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
