"""``motorpool loadgen MODEL``: MLPerf LoadGen's SingleStream, Offline and Server scenarios over one engine.

Compiles MODEL (or loads a saved engine directory with ``--engine``), measures it briefly for LoadGen's
settings, runs each scenario under the real ``mlcommons-loadgen`` and prints LoadGen's own verdict
(VALID/INVALID) beside its figures; ``--json`` writes them all. Needs ``pip install "motorpool[loadgen]"``.
The one-engine view of the code ``motorpool bench`` runs under LoadGen (:mod:`motorpool.measuring.loadgen`);
``bench`` adds backends x precisions x batch sizes."""

from __future__ import annotations

import json
import sys

from ._args import csv_list


def register(sub) -> None:
    p = sub.add_parser("loadgen", help="run MLPerf LoadGen's SingleStream/Offline/Server over one engine",
                       description=__doc__)
    p.add_argument("model", nargs="?", help="package.module:factory, a .pt2 file or zoo:NAME")
    p.add_argument("--engine", help="a saved engine directory to load instead of compiling MODEL "
                   "(default: compile MODEL)")
    p.add_argument("--backend", default="auto", help="backend to compile MODEL for (default auto)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16", "int8"),
                   help="precision to compile MODEL at (default fp32)")
    p.add_argument("--scenarios", default="SingleStream,Offline,Server",
                   help="comma-separated: SingleStream, Offline, Server, or single_stream, offline, server "
                   "(default SingleStream,Offline,Server)")
    p.add_argument("--min-duration-ms", type=int, default=1000, help="LoadGen's min_duration (default 1000 ms)")
    p.add_argument("--offline-batch", type=int, default=32, help="rows per engine call in Offline (default 32)")
    p.add_argument("--server-target-qps", type=float, default=None,
                   help="Server's target QPS (default: half the measured single-stream rate at batch 1 "
                   "through the dynamic batcher)")
    p.add_argument("--server-latency-ms", type=float, default=None,
                   help="Server's target latency (default: from the measurement, at least 10 ms)")
    p.add_argument("--log-dir", default=None, help="keep LoadGen's logs here (default: a temporary directory)")
    p.add_argument("--json", default=None, help="write every figure to this file (default: none written)")
    p.set_defaults(func=run)


def run(args) -> int:
    import motorpool
    from ..measuring import loadgen
    from .modelref import load_model

    try:
        scenarios = loadgen.scenario_names(csv_list(args.scenarios))
    except ValueError as exc:
        print(f"error: --{exc}", file=sys.stderr)
        return 2
    if bool(args.model) == bool(args.engine):
        print("error: give MODEL or --engine DIR (one of them)", file=sys.stderr)
        return 2
    try:
        loadgen.loadgen_module()
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.engine:
            engine = motorpool.load(args.engine)
        else:
            loaded = load_model(args.model)
            engine = motorpool.compile(loaded.model, loaded.example_inputs, backend=args.backend,
                                       precision=args.precision)
        out = loadgen.run_loadgen(engine, scenarios, offline_batch=args.offline_batch,
                                  min_duration_ms=args.min_duration_ms, log_dir=args.log_dir,
                                  server_target_qps=args.server_target_qps,
                                  server_target_latency_ms=args.server_latency_ms)
    except (motorpool.MotorpoolError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    cal = out["calibration"]
    print(f"engine {engine.backend} on {engine.device} at {engine.precision}; measured first: batch-1 p50 "
          f"{cal.latency_p50_ms:.3f} ms, {cal.throughput:.1f} samples/s at batch {cal.offline_batch}")
    for result in out["results"].values():
        print(result.line())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": engine.backend, "calibration": cal.to_dict(),
                       "results": {k: v.to_dict() for k, v in out["results"].items()}}, f, indent=1)
    return 0
