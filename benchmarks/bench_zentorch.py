"""zentorch (AMD's torch.compile backend, ``plugins/motorpool-zentorch``) against eager, torch_compile,
onnxruntime and openvino on real architectures, side by side in one process.

zentorch is built for AMD EPYC (Zen) CPUs; elsewhere the plugin reports unsupported-platform. To measure it on
another x86 CPU anyway (its figures then say nothing about Zen), set ``MOTORPOOL_ZENTORCH_ANY_CPU=1``.

    pip install -c constraints.txt -e plugins/motorpool-zentorch
    MOTORPOOL_NO_CACHE=1 python benchmarks/bench_zentorch.py bert resnet convnext

Each engine is compiled once at batch 2 (dynamic batch), then every engine is timed at batch 1 and 32 in
shuffled interleaved rounds (``bench_real.interleaved_p50``): p50 ms and the speed-up over eager.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import bench_real  # noqa: E402

BACKENDS = ("eager", "zentorch", "torch_compile", "onnxruntime", "openvino")


def compile_all(model, examples, backends) -> tuple[dict, dict]:
    """Every backend's engine (those that compile) and each one's compile seconds or failure."""
    import motorpool

    engines, compile_s = {}, {}
    for b in backends:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                engines[b] = motorpool.compile(model, examples, backend=b, cache=False)
            compile_s[b] = f"{time.perf_counter() - t0:.1f}"
        except Exception as exc:  # noqa: BLE001 - the reason goes in the output
            compile_s[b] = f"fail: {type(exc).__name__}: {str(exc)[:120]}"
    return engines, compile_s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", default=["bert", "resnet", "convnext"],
                   help=f"from: {', '.join(bench_real.ALL_MODELS)}")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    import motorpool

    print(f"machine: {motorpool.hardware.summary()}")
    for name in args.models:
        model, make, _, desc = bench_real.build(name)
        engines, compile_s = compile_all(model, make(2), [b for b in args.backends.split(",") if b])
        for batch in (1, 32):
            p50 = bench_real.interleaved_p50(engines, make(batch), rounds=args.rounds, calls=12 if batch == 1 else 3)
            eager = p50.get("eager")
            print(f"{name:<10} b{batch:<3} " + "  ".join(
                f"{b} {v:.2f} ms" + (f" ({eager / v:.2f}x)" if eager else "") for b, v in p50.items()), flush=True)
        print(f"{name:<10} {desc}; compile s: " + ", ".join(f"{b} {v}" for b, v in compile_s.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
