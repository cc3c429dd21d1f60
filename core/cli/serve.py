"""``motorpool serve DIR...``: serve saved engines over the Open Inference Protocol (KServe v2 / Triton REST),
so ``tritonclient`` and KServe clients work unchanged. ``--ray`` runs the same routes as a Ray Serve
deployment instead (extra ``ray``)."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve saved engines over the Open Inference Protocol (KServe v2 / Triton)")
    p.add_argument("engines", metavar="DIR", nargs="+", help="engine directories written by `motorpool compile`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000, Triton's HTTP port)")
    p.add_argument("--name", action="append", default=None,
                   help="the model's name in the protocol (default: the folder's name); once per DIR")
    p.add_argument("--max-batch-size", type=int, default=32, help="dynamic batcher: most rows per batch (32)")
    p.add_argument("--max-delay-ms", type=float, default=2.0,
                   help="dynamic batcher: how long a request may wait for company (2.0)")
    p.add_argument("--max-queue", type=int, default=1024,
                   help="requests waiting before the server answers 503 (1024)")
    p.add_argument("--timeout-ms", type=float, default=None,
                   help="a request still queued after this long is answered 504 (default: none)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for each engine's runtime (torch, ONNX Runtime, OpenVINO); default: the runtime's. "
                        "With --ray: each replica's num_cpus (1)")
    p.add_argument("--cache", action="store_true", help="answer repeated inputs from an in-process LRU cache")
    p.add_argument("--trust-code", action="store_true",
                   help="serve engines whose format is code (TorchScript, TensorRT, pickled payloads); see SECURITY.md")
    p.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment (needs motorpool[ray])")
    p.add_argument("--replicas", type=int, default=1, help="with --ray: number of replicas (1)")
    p.add_argument("--log-level", default="warning", help="uvicorn's log level (warning)")
    p.set_defaults(func=run)


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run(args) -> int:
    import signal

    import motorpool

    if args.name and len(args.name) != len(args.engines):
        return _fail(f"--name given {len(args.name)} time(s) for {len(args.engines)} engine folder(s); give one "
                     "per DIR or none", 2)
    for label in ("max_batch_size", "max_queue", "replicas", "port", "threads"):
        value = getattr(args, label)
        if value is not None and value < (0 if label == "port" else 1):
            return _fail(f"--{label.replace('_', '-')}: expected a positive integer, got {value}", 2)
    if args.ray:
        return _run_ray(args)
    try:
        from motorpool.serving import oip_server
    except ImportError as exc:
        return _fail(str(exc), 2)
    try:
        models = oip_server.load_models(args.engines, args.name, max_batch_size=args.max_batch_size,
                                        max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
                                        timeout_ms=args.timeout_ms, cache=args.cache, threads=args.threads,
                                        trust_code=args.trust_code)
    except (motorpool.MotorpoolError, OSError, ValueError) as exc:
        hint = " (motorpool serve: pass --trust-code to trust it)" if "trust_code=True" in str(exc) else ""
        return _fail(str(exc).replace("\n", " ") + hint)
    names = ", ".join(f"{n} ({m.engine.backend})" for n, m in models.items())
    server = oip_server.make_server(models, args.host, args.port, log_level=args.log_level)
    print(f"serving {names} on http://{args.host}:{args.port}/v2 (Open Inference Protocol)", flush=True)
    # uvicorn catches SIGTERM/SIGINT, shuts down gracefully, then re-raises the signal to the handler that
    # was there before it: make that one a no-op, so a drained server exits 0 with its closing line.
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    server.run()
    why = f" on {signal.Signals(received[0]).name}" if received else ""
    print(f"stopped{why}: requests in flight answered, batchers drained", flush=True)
    return 0


def _run_ray(args) -> int:
    import signal
    import threading

    try:
        import motorpool.ray as mray
        from ray import serve
    except ImportError as exc:
        return _fail(f'{exc}; --ray needs Ray Serve: pip install "motorpool[ray]"', 2)
    if len(args.engines) != 1:
        return _fail("--ray serves one engine folder per deployment; give one DIR", 2)
    import ray

    name = (args.name or [None])[0]
    # with --ray, --threads is each replica's num_cpus (its threads follow)
    app = mray.deployment(args.engines[0], name=name, num_replicas=args.replicas,
                          ray_actor_options={"num_cpus": args.threads or 1}, max_batch_size=args.max_batch_size,
                          batch_wait_timeout_s=args.max_delay_ms / 1e3, max_queue=args.max_queue, cache=args.cache,
                          trust_code=args.trust_code)
    ray.init(include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(app, name=mray.app_name(args.engines[0], name), route_prefix="/")
    print(f"serving {args.engines[0]} on Ray Serve at http://{args.host}:{args.port}/v2 with {args.replicas} "
          "replica(s)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    serve.shutdown()
    ray.shutdown()
    print("stopped: Serve and the local Ray shut down", flush=True)
    return 0
