"""Benchmark: serving past one process. 64 concurrent clients against the in-process DynamicBatcher,
`motorpool serve` (Open Inference Protocol over HTTP) and the Ray Serve deployment with one and two replicas,
side by side in one run, on a ResNet-style model and the zoo encoder.

    python benchmarks/bench_serving.py                      # both models, every path, ~3 minutes on 2 cores
    python benchmarks/bench_serving.py --models encoder --seconds 5 --no-ray --json out.json

Each client sends one sample at a time (batch 1) and waits for its answer, as a web client does; the HTTP
clients are tritonclient's asyncio client (aiohttp) in this process, binary tensors. Throughput counts the
answers completed in the measuring window (after a warm-up); latencies are per request. Ratios are against
the in-process batcher on the same engine. Goals (issue 14): HTTP >= 0.7x in-process; two Ray replicas
>= 1.6x one replica on a model whose batch-1 call takes >= 2 ms (each replica gets num_cpus=1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

import motorpool
from motorpool.serving.loading import load_engine
from motorpool.testing import zoo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models as bench_models  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summarize(latencies: list[float], completed: int, seconds: float) -> dict:
    a = np.asarray(latencies) * 1e3
    return {"throughput": completed / seconds, "p50_ms": float(np.percentile(a, 50)) if a.size else float("nan"),
            "p99_ms": float(np.percentile(a, 99)) if a.size else float("nan"), "requests": completed}


def build_model(name: str, image_size: int):
    if name == "resnet18":
        model, make, info = bench_models.build("resnet18", image_size=image_size)
        return model, make(2), f"ResNet18 {info}"
    model, examples = zoo.get("encoder").build()
    return model, examples, "zoo encoder (seq 16, dim 32, 2 layers)"


def pool_of_inputs(engine, n: int = 64) -> list[list[np.ndarray]]:
    g = torch.Generator().manual_seed(1)
    return [[x.numpy() for x in engine.input_spec.random_inputs(generator=g, sizes={"batch": 1})] for _ in range(n)]


def batch1_ms(engine, samples, repeats: int = 30) -> float:
    for s in samples[:3]:
        engine(*s)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        engine(*samples[i % len(samples)])
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def measure_inprocess(engine, samples, clients: int, warmup: float, seconds: float, max_batch: int,
                      delay_ms: float) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    with motorpool.DynamicBatcher(engine, max_batch_size=max_batch, max_delay_ms=delay_ms) as batcher:
        start = time.perf_counter()
        t_warm, t_end = start + warmup, start + warmup + seconds

        def client(k: int) -> None:
            i = k
            mine = []
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    break
                batcher(*samples[i % len(samples)])
                t1 = time.perf_counter()
                if t0 >= t_warm and t1 <= t_end:
                    mine.append(t1 - t0)
                i += clients
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        mean_batch = batcher.stats().mean_batch_size
    out = summarize(latencies, len(latencies), seconds)
    out["mean_batch"] = mean_batch
    return out


def measure_http(url: str, name: str, samples, clients: int, warmup: float, seconds: float) -> dict:
    import tritonclient.http.aio as aioclient
    import tritonclient.http as httpclient

    async def run() -> dict:
        client = aioclient.InferenceServerClient(url, conn_limit=clients)
        try:
            meta = await client.get_model_metadata(name)
            names = [(m["name"], m["datatype"]) for m in meta["inputs"]]
            out_name = meta["outputs"][0]["name"]
            latencies: list[float] = []
            errors = [0]
            start = time.perf_counter()
            t_warm, t_end = start + warmup, start + warmup + seconds

            async def worker(k: int) -> None:
                i = k
                while True:
                    t0 = time.perf_counter()
                    if t0 >= t_end:
                        return
                    inputs = []
                    for (n, dt), x in zip(names, samples[i % len(samples)]):
                        inp = httpclient.InferInput(n, list(x.shape), dt)
                        inp.set_data_from_numpy(x, binary_data=True)
                        inputs.append(inp)
                    try:
                        result = await client.infer(name, inputs,
                                                    outputs=[httpclient.InferRequestedOutput(out_name, binary_data=True)])
                        result.as_numpy(out_name)
                    except Exception:  # noqa: BLE001 - counted, reported
                        errors[0] += 1
                        continue
                    t1 = time.perf_counter()
                    if t0 >= t_warm and t1 <= t_end:
                        latencies.append(t1 - t0)
                    i += clients

            await asyncio.gather(*(worker(k) for k in range(clients)))
            out = summarize(latencies, len(latencies), seconds)
            out["errors"] = errors[0]
            return out
        finally:
            await client.close()

    return asyncio.run(run())


def measure_handle(handle, samples, clients: int, warmup: float, seconds: float) -> dict:
    """The same clients through the Python handle (no HTTP proxy): what the replicas do on their own."""

    async def run() -> dict:
        latencies: list[float] = []
        errors = [0]
        start = time.perf_counter()
        t_warm, t_end = start + warmup, start + warmup + seconds

        async def worker(k: int) -> None:
            i = k
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                try:
                    await handle.infer.remote(*samples[i % len(samples)])
                except Exception:  # noqa: BLE001 - counted, reported
                    errors[0] += 1
                    continue
                t1 = time.perf_counter()
                if t0 >= t_warm and t1 <= t_end:
                    latencies.append(t1 - t0)
                i += clients

        await asyncio.gather(*(worker(k) for k in range(clients)))
        out = summarize(latencies, len(latencies), seconds)
        out["errors"] = errors[0]
        return out

    return asyncio.run(run())


def check_equal(url: str, name: str, engine, sample) -> None:
    """One request over the wire must give the engine's own answer (a benchmark of wrong answers is void)."""
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(url)
    meta = c.get_model_metadata(name)
    inputs = []
    for m, x in zip(meta["inputs"], sample):
        i = httpclient.InferInput(m["name"], list(x.shape), m["datatype"])
        i.set_data_from_numpy(x)
        inputs.append(i)
    got = c.infer(name, inputs).as_numpy(meta["outputs"][0]["name"])
    np.testing.assert_allclose(got, np.asarray(engine(*sample)), rtol=1e-4, atol=1e-4)


def start_serve(path: Path, max_batch: int, delay_ms: float, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    extra = [] if threads is None else ["--threads", str(threads)]
    proc = subprocess.Popen([sys.executable, "-m", "motorpool.cli", "serve", str(path), "--port", str(port),
                             "--max-batch-size", str(max_batch), "--max-delay-ms", str(delay_ms), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"motorpool serve did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,encoder")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--image-size", type=int, default=112, help="ResNet input size (112)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=8.0, help="measuring window per path (8)")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1,
                   help="runtime threads of the in-process and `motorpool serve` engines (1, like each 1-CPU "
                        "Ray replica; 0: the runtime's default)")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="motorpool-bench-serving-"))
    rows: list[dict] = []
    saved: dict[str, tuple[Path, motorpool.Engine, list, str, float]] = {}
    for name in args.models.split(","):
        model, examples, info = build_model(name, args.image_size)
        engine = motorpool.compile(model, examples, backend=args.backend)
        path = engine.save(work / name)
        engine = load_engine(path, args.threads or None)
        samples = pool_of_inputs(engine)
        saved[name] = (path, engine, samples, info, batch1_ms(engine, samples))

    for name, (path, engine, samples, info, b1) in saved.items():
        print(f"\n{name}: {info}, {args.backend}, batch-1 call {b1:.2f} ms", flush=True)
        r = measure_inprocess(engine, samples, args.clients, args.warmup, args.seconds, args.max_batch_size,
                              args.max_delay_ms)
        rows.append({"model": name, "path": "in-process DynamicBatcher", **r})
        print(f"  in-process     {r['throughput']:8.1f} req/s (mean batch {r['mean_batch']:.1f})", flush=True)
        proc, url = start_serve(path, args.max_batch_size, args.max_delay_ms, args.threads or None)
        try:
            check_equal(url, path.name, engine, samples[0])
            r = measure_http(url, path.name, samples, args.clients, args.warmup, args.seconds)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        rows.append({"model": name, "path": "motorpool serve (OIP/HTTP)", **r})
        print(f"  motorpool serve {r['throughput']:8.1f} req/s", flush=True)

    if not args.no_ray:
        import ray
        from ray import serve

        import motorpool.ray as mray

        port = free_port()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            for name, (path, engine, samples, info, b1) in saved.items():
                for replicas in (1, 2):
                    app = mray.deployment(path, name=path.name, num_replicas=replicas,
                                          ray_actor_options={"num_cpus": 1}, max_batch_size=args.max_batch_size,
                                          batch_wait_timeout_s=args.max_delay_ms / 1e3,
                                          max_ongoing_requests=args.clients)
                    handle = serve.run(app, name=f"{name}-{replicas}", route_prefix=f"/{name}{replicas}")
                    url = f"127.0.0.1:{port}/{name}{replicas}"
                    check_equal(url, path.name, engine, samples[0])
                    r = measure_http(url, path.name, samples, args.clients, args.warmup, args.seconds)
                    rows.append({"model": name, "path": f"Ray Serve HTTP, {replicas} replica(s) x 1 CPU", **r})
                    print(f"  ray http x{replicas}    {r['throughput']:8.1f} req/s", flush=True)
                    r = measure_handle(handle, samples, args.clients, args.warmup, args.seconds)
                    rows.append({"model": name, "path": f"Ray Serve handle, {replicas} replica(s) x 1 CPU", **r})
                    print(f"  ray handle x{replicas}  {r['throughput']:8.1f} req/s", flush=True)
                    serve.delete(f"{name}-{replicas}")
        finally:
            serve.shutdown()
            ray.shutdown()

    threads = args.threads or "default"
    print(f"\n{args.clients} concurrent clients, batch 1 each, {args.backend}, max_batch_size {args.max_batch_size}, "
          f"max_delay {args.max_delay_ms} ms, {args.seconds:.0f} s windows; in-process and serve engines with "
          f"{threads} runtime thread(s), Ray replicas 1 each\n")
    print("| model | batch-1 call | path | req/s | vs in-process | p50 ms | p99 ms | errors |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name in saved:
        base = next(r["throughput"] for r in rows if r["model"] == name and r["path"].startswith("in-process"))
        for r in (r for r in rows if r["model"] == name):
            extra = ""
            one = next((o["throughput"] for o in rows if o["model"] == name
                        and o["path"] == r["path"].replace("2 replica", "1 replica")), None)
            if "2 replica" in r["path"] and one:
                extra = f" ({r['throughput'] / one:.2f}x 1 replica)"
            print(f"| {name} | {saved[name][4]:.2f} ms | {r['path']} | {r['throughput']:.1f} | "
                  f"{r['throughput'] / base:.2f}x{extra} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                  f"{r.get('errors', 0)} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows,
                                               "batch1_ms": {k: v[4] for k, v in saved.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
