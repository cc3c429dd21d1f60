"""Benchmark: dynamic batching against offline batching and one-at-a-time, the batcher's own cost, cache hits.

    python benchmarks/bench_batching.py                 # all sections, eager backend
    python benchmarks/bench_batching.py --json out.json --clients 64 --batch 32

Sections (all measured side by side in one run; figures are ratios of those, not absolute promises):
1. Throughput on a model where batching pays (the zoo encoder, dim 64, seq 16, 2 layers):
   offline batches of ``--batch`` rows; one request at a time; ``--clients`` threads each sending single
   samples through a DynamicBatcher (latency p50/p99 per request). Goals: batcher >= 0.8x offline,
   >= 3x one-at-a-time.
2. The batcher's own cost per request on a tiny model (the zoo MLP): one client calling it in a loop,
   p50 latency through the batcher minus p50 calling the engine directly. Goal: < 100 us.
3. Cache hit latency: in-process LRU and Redis (a private redis-server on a free loopback port), beside
   the engine's own latency on the same input.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np
import torch

import motorpool
from motorpool.testing import zoo


def pct(values, q):
    return float(np.percentile(np.asarray(values) * 1e3, q))  # ms


def timeit_each(fn, n, warmup=5):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


# -- 1. throughput ------------------------------------------------------------------------------------------


def serving_encoder(seq: int, dim: int):
    torch.manual_seed(0)
    model = zoo.Encoder(vocab=1000, dim=dim, heads=4, layers=2, max_len=64).eval()
    def sample(n):
        ids = torch.randint(1, 1000, (n, seq))
        mask = torch.ones(n, seq, dtype=torch.int64)
        mask[:, seq - 4:] = 0
        return ids, mask
    return model, sample


def bench_throughput(args) -> dict:
    model, sample = serving_encoder(args.seq, args.dim)
    engine = motorpool.compile(model, sample(2), backend=args.backend)
    n = args.requests - args.requests % args.batch
    singles = [sample(1) for _ in range(n)]
    batches = [tuple(torch.cat(col) for col in zip(*singles[i:i + args.batch])) for i in range(0, n, args.batch)]

    def offline():
        for b in batches:
            engine(*b)

    few = singles[:args.single_requests]  # a rate: fewer requests measure it as well, and much sooner

    def one_at_a_time():
        for s in few:
            engine(*s)

    def through_batcher():
        latencies = [[] for _ in range(args.clients)]
        per_client = [singles[i::args.clients] for i in range(args.clients)]
        start = threading.Barrier(args.clients + 1)

        def client(i):
            start.wait()
            out = latencies[i]
            for s in per_client[i]:
                t = time.perf_counter()
                batcher(*s)
                out.append(time.perf_counter() - t)

        with motorpool.DynamicBatcher(engine, max_batch_size=args.batch, max_delay_ms=args.delay_ms,
                                      max_queue=4 * args.clients) as batcher:
            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            start.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
        return wall, [x for lat in latencies for x in lat], batcher.stats()

    offline(); one_at_a_time()  # warm up every path once
    rounds = []
    for _ in range(args.rounds):  # interleaved, so a noisy neighbour hits every contender alike
        t = time.perf_counter(); offline(); t_off = time.perf_counter() - t
        t = time.perf_counter(); one_at_a_time(); t_one = (time.perf_counter() - t) * n / len(few)
        t_dyn, lat, stats = through_batcher()
        rounds.append((t_off, t_one, t_dyn, lat, stats))
    # Headline: the median of the per-round ratios (contenders measured back to back within each round);
    # each contender's best round is reported beside it (the least disturbed by other processes).
    t_off, t_one = min(r[0] for r in rounds), min(r[1] for r in rounds)
    best = min(rounds, key=lambda r: r[2])
    t_dyn = best[2]
    _, _, _, lat, stats = sorted(rounds, key=lambda r: r[0] / r[2])[len(rounds) // 2]
    single_lat = timeit_each(lambda: engine(*singles[0]), 200)
    res = {
        "model": f"zoo Encoder dim={args.dim} heads=4 layers=2 seq={args.seq}", "backend": engine.backend,
        "requests": n, "batch": args.batch, "clients": args.clients, "max_delay_ms": args.delay_ms,
        "offline_samples_per_s": n / t_off,
        "one_at_a_time_samples_per_s": n / t_one,
        "batcher_samples_per_s": n / t_dyn,
        "batcher_vs_offline": statistics.median(r[0] / r[2] for r in rounds),
        "batcher_vs_one_at_a_time": statistics.median(r[1] / r[2] for r in rounds),
        "best_rounds_batcher_vs_offline": t_off / t_dyn,
        "best_rounds_batcher_vs_one_at_a_time": t_one / t_dyn,
        "batcher_latency_ms": {"p50": pct(lat, 50), "p99": pct(lat, 99)},
        "single_call_latency_ms": {"p50": pct(single_lat, 50), "p99": pct(single_lat, 99)},
        "mean_batch_size": stats.mean_batch_size,
        "batcher_queue_delay_ms": stats.queue_delay_ms, "batcher_run_ms": stats.run_ms,
        "rounds_batcher_vs_offline": [round(r[0] / r[2], 3) for r in rounds],
        "rounds_batcher_vs_one_at_a_time": [round(r[1] / r[2], 3) for r in rounds],
    }
    return res


# -- 2. the batcher's own cost --------------------------------------------------------------------------------


def bench_overhead(args) -> dict:
    model, x = zoo.get("mlp").build(batch=1)
    engine = motorpool.compile(model, x, backend=args.backend)
    xs = torch.randn(1, 32)
    n = args.overhead_calls
    rounds = []
    with motorpool.DynamicBatcher(engine, max_batch_size=32, max_delay_ms=0) as batcher:
        for _ in range(args.rounds):
            direct = timeit_each(lambda: engine(xs), n, warmup=50)
            batched = timeit_each(lambda: batcher(xs), n, warmup=50)
            queued = timeit_each(lambda: batcher.submit(xs).result(), n, warmup=50)
            rounds.append((statistics.median(direct), statistics.median(batched), direct, batched,
                           statistics.median(queued)))
    rounds.sort(key=lambda r: r[1] - r[0])
    d50, b50, direct, batched, _ = rounds[len(rounds) // 2]
    q50 = statistics.median(r[4] for r in rounds)
    return {
        "model": "zoo MLP 32-64-64-10, one sample per request, one client, max_delay_ms=0 "
                 "(blocking calls run inline when the batcher is idle)",
        "engine_p50_us": d50 * 1e6, "batcher_p50_us": b50 * 1e6,
        "overhead_p50_us": (b50 - d50) * 1e6,
        # submit().result() always goes through the queue and the worker thread: two thread switches
        "submit_result_p50_us": q50 * 1e6, "overhead_queued_p50_us": (q50 - d50) * 1e6,
        "engine_p99_us": pct(direct, 99) * 1e3, "batcher_p99_us": pct(batched, 99) * 1e3,
        "rounds_overhead_p50_us": [round((r[1] - r[0]) * 1e6, 1) for r in rounds],
        "rounds_overhead_queued_p50_us": [round((r[4] - r[0]) * 1e6, 1) for r in rounds],
    }


# -- 3. cache hits ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_cache(args) -> dict:
    model, sample = serving_encoder(args.seq, args.dim)
    engine = motorpool.compile(model, sample(2), backend=args.backend)
    x = sample(1)
    n = args.cache_calls
    res = {"model": f"zoo Encoder dim={args.dim} seq={args.seq}, one sample",
           "engine_p50_us": pct(timeit_each(lambda: engine(*x), n), 50) * 1e3}
    lru = motorpool.CachedEngine(engine)
    lru(*x)
    hits = timeit_each(lambda: lru(*x), n)
    res["lru_hit_p50_us"], res["lru_hit_p99_us"] = pct(hits, 50) * 1e3, pct(hits, 99) * 1e3
    binary = shutil.which("redis-server")
    if binary is None:
        res["redis"] = "skipped: redis-server is not installed (apt-get install -y redis-server)"
        return res
    port = _free_port()
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)
        try:
            store = motorpool.RedisStore(f"redis://127.0.0.1:{port}/0")
            for _ in range(100):
                try:
                    store.client.ping()
                    break
                except Exception:  # noqa: BLE001 - still starting
                    time.sleep(0.05)
            cached = motorpool.CachedEngine(engine, store)
            cached(*x)
            hits = timeit_each(lambda: cached(*x), n)
            res["redis_hit_p50_us"], res["redis_hit_p99_us"] = pct(hits, 50) * 1e3, pct(hits, 99) * 1e3
            assert cached.stats()["hits"] >= n
        finally:
            proc.terminate()
            proc.wait(10)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="eager")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--delay-ms", type=float, default=2.0)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--requests", type=int, default=2048)
    p.add_argument("--single-requests", type=int, default=256, help="one-at-a-time requests per round")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads, the same for every contender (0: torch's default). One by default: "
                        "on a shared, oversubscribed machine OpenMP teams spin and every figure becomes noise")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--overhead-calls", type=int, default=2000)
    p.add_argument("--cache-calls", type=int, default=2000)
    p.add_argument("--only", choices=["throughput", "overhead", "cache"], action="append")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", motorpool.PluginWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = args.only or ["throughput", "overhead", "cache"]
    out = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "load_average_before": os.getloadavg()}
    for name, fn in (("throughput", bench_throughput), ("overhead", bench_overhead), ("cache", bench_cache)):
        if name in sections:
            out[name] = fn(args)
            print(json.dumps({name: out[name]}, indent=2, default=float), flush=True)
    if "throughput" in out:
        t = out["throughput"]
        print(f"\nbatcher vs offline: {t['batcher_vs_offline']:.2f}x median of rounds "
              f"{t['rounds_batcher_vs_offline']} (goal >= 0.8; best rounds {t['best_rounds_batcher_vs_offline']:.2f}x); "
              f"vs one-at-a-time: {t['batcher_vs_one_at_a_time']:.2f}x (goal >= 3; best rounds "
              f"{t['best_rounds_batcher_vs_one_at_a_time']:.2f}x); latency p50 {t['batcher_latency_ms']['p50']:.2f} ms "
              f"p99 {t['batcher_latency_ms']['p99']:.2f} ms (one call alone: p50 "
              f"{t['single_call_latency_ms']['p50']:.2f} ms); mean batch {t['mean_batch_size']:.1f}")
    if "overhead" in out:
        o = out["overhead"]
        print(f"batcher overhead per request p50: {o['overhead_p50_us']:.1f} us blocking call (goal < 100); "
              f"{o['overhead_queued_p50_us']:.1f} us through submit() and the worker thread")
    if "cache" in out:
        c = out["cache"]
        print(f"cache hit p50: in-process {c['lru_hit_p50_us']:.1f} us, redis "
              f"{c.get('redis_hit_p50_us', float('nan')):.1f} us; engine {c['engine_p50_us']:.1f} us")
    out["load_average_after"] = os.getloadavg()
    print(f"load average before/after: {out['load_average_before']} / {out['load_average_after']} "
          f"on {out['cpus']} CPUs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=float)
    return 0


def run_off_main_thread(argv=None) -> int:
    """Run every measurement in one ordinary thread: PyTorch's OpenMP team for the main thread behaves
    differently from other threads' under CPU contention, and the batcher's worker is an ordinary thread,
    so measuring the contenders from the main thread would not compare like with like."""
    result = []
    t = threading.Thread(target=lambda: result.append(main(argv)), name="bench")
    t.start()
    t.join()
    return result[0] if result else 1


if __name__ == "__main__":
    sys.exit(run_off_main_thread())
