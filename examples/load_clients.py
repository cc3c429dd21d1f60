"""Drive the HTTP service of serve_http.py from many concurrent clients and report what came back.

    python examples/load_clients.py --url http://127.0.0.1:8000 --clients 64 --requests 4000
    python examples/load_clients.py --serve --model mlp --clients 32     # start a server in-process first

Each client keeps one HTTP/1.1 connection and sends single samples drawn from the server's input spec;
``--repeat`` is the share of requests that resend an earlier input, which the cache should answer
with exactly the first answer (checked). Prints throughput, latency p50/p99, status codes and the
server's batcher and cache counters.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np


def random_sample(spec: dict, rng: np.random.Generator) -> list:
    """One sample (batch of 1) of every input, as nested lists, drawn within the spec's value ranges."""
    sizes = dict(spec.get("example_sizes", {}), batch=1)
    out = []
    for t in spec["inputs"]:
        shape = [sizes.get(d, 1) if isinstance(d, str) else d for d in t["shape"]]
        if t["dtype"].startswith("float"):
            out.append(rng.standard_normal(shape).astype(np.float32).tolist())
        elif t["dtype"] == "bool":
            out.append((rng.random(shape) > 0.5).tolist())
        else:
            low = int(t["low"] if t.get("low") is not None else 0)
            high = int(t["high"] if t.get("high") is not None else 100)
            out.append(rng.integers(low, high + 1, shape).tolist())
    return out


class Client:
    def __init__(self, url: str):
        u = urlparse(url)
        self.host, self.port = u.hostname, u.port or 80
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def request(self, method: str, path: str, payload: dict | None = None) -> tuple[int, dict]:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body else {}
        for attempt in (0, 1):  # one reconnect if the server closed an idle keep-alive connection
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, json.loads(resp.read() or b"{}")
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def run_load(url: str, *, clients: int = 64, requests: int = 2000, repeat: float = 0.2, seed: int = 0) -> dict:
    """Send ``requests`` single-sample predictions from ``clients`` threads; return the figures."""
    probe = Client(url)
    status, spec = probe.request("GET", "/spec")
    if status != 200:
        raise RuntimeError(f"GET /spec answered {status}: {spec}")
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    mismatches: list[str] = []
    cached_answers = 0
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        nonlocal cached_answers
        rng = np.random.default_rng(seed + i)
        pick = random.Random(seed + i)
        c = Client(url)
        sent: list[tuple[list, object]] = []  # this client's earlier inputs and their first answers
        barrier.wait()
        try:
            for _ in range(per_client[i]):
                again = sent and pick.random() < repeat
                inputs, first = pick.choice(sent) if again else (random_sample(spec, rng), None)
                t = time.perf_counter()
                code, body = c.request("POST", "/predict", {"inputs": inputs})
                elapsed = time.perf_counter() - t
                with lock:
                    latencies.append(elapsed)
                    statuses[code] = statuses.get(code, 0) + 1
                    cached_answers += bool(body.get("cached"))
                if code != 200:
                    continue
                if first is None:
                    sent.append((inputs, body["outputs"]))
                elif body["outputs"] != first:
                    with lock:
                        mismatches.append(f"client {i}: a repeated input got a different answer")
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    status, stats = probe.request("GET", "/stats")
    probe.close()
    lat_ms = np.asarray(latencies) * 1e3
    return {
        "requests": len(latencies), "clients": clients, "seconds": wall,
        "requests_per_s": len(latencies) / wall if wall else 0.0,
        "latency_ms": {"p50": float(np.percentile(lat_ms, 50)), "p99": float(np.percentile(lat_ms, 99))}
        if len(lat_ms) else {},
        "statuses": statuses, "cached_answers": cached_answers, "mismatches": mismatches,
        "server": stats,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Load the serve_http.py service from many concurrent clients.")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--repeat", type=float, default=0.2, help="share of requests resending an earlier input")
    p.add_argument("--serve", action="store_true", help="start serve_http.py's server in this process first")
    p.add_argument("--model", default="encoder", help="with --serve: the zoo model to serve")
    args = p.parse_args(argv)
    server = None
    url = args.url
    if args.serve:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import serve_http
        engine, batcher, cached = serve_http.build(args.model)
        server = serve_http.PredictionServer(("127.0.0.1", 0), engine, batcher, cached)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        figures = run_load(url, clients=args.clients, requests=args.requests, repeat=args.repeat)
    finally:
        if server is not None:
            server.shutdown()
            server.batcher.close(drain=True)
            server.server_close()
    b = figures["server"].get("batcher", {})
    print(json.dumps({k: v for k, v in figures.items() if k != "server"}, indent=2))
    print(f"{figures['requests']} requests from {figures['clients']} clients: {figures['requests_per_s']:.0f} req/s, "
          f"p50 {figures['latency_ms'].get('p50', float('nan')):.1f} ms, p99 "
          f"{figures['latency_ms'].get('p99', float('nan')):.1f} ms; server mean batch "
          f"{b.get('mean_batch_size', 0):.1f}; cache {figures['server'].get('cache')}")
    ok = not figures["mismatches"] and set(figures["statuses"]) <= {200}
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
