"""Serve a compiled engine over HTTP through a dynamic batcher and a prediction cache (standard library only).

    python examples/serve_http.py --model encoder --port 8000                      # in-process LRU cache
    python examples/serve_http.py --model cnn --redis redis://127.0.0.1:6379/0     # cache shared by replicas
    python examples/load_clients.py --url http://127.0.0.1:8000 --clients 64       # drive it

Endpoints:
    POST /predict  {"inputs": [input0, input1, ...]}  each a nested list WITH the batch dimension
                   -> {"outputs": <the model's output structure, arrays as nested lists>, "cached": bool}
    GET  /spec     the engine's input spec (names, shapes, dtypes, value ranges)
    GET  /stats    batcher and cache counters
    GET  /healthz  200 while serving

Errors map to status codes: bad input 400, queue full 503 (with Retry-After), request timed out 504.
Each HTTP connection gets a thread (ThreadingHTTPServer); the threads block on the batcher, which gathers
them into batches. SIGINT/SIGTERM stop taking connections and drain the queue before exiting.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import warnings
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

import motorpool
from motorpool.testing import zoo

MAX_BODY = 16 << 20


def build(model: str = "encoder", backend: str = "eager", *, redis_url: str | None = None, max_batch_size: int = 32,
          max_delay_ms: float = 2.0, max_queue: int = 1024, timeout_ms: float | None = 5000.0,
          cache_entries: int = 10_000):
    """Compile a zoo model and put a batcher and a cache in front of it. Returns (engine, batcher, cached)."""
    net, example = zoo.get(model).build(batch=2)
    engine = motorpool.compile(net, example, backend=backend)
    batcher = motorpool.DynamicBatcher(engine, max_batch_size=max_batch_size, max_delay_ms=max_delay_ms,
                                       max_queue=max_queue, timeout_ms=timeout_ms, name=f"http-{model}")
    store = (motorpool.RedisStore(redis_url, prefix=f"motorpool-http:{model}:") if redis_url
             else motorpool.LRUStore(max_entries=cache_entries))
    return engine, batcher, motorpool.CachedEngine(batcher, store)


class PredictionServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address, engine, batcher, cached):
        super().__init__(address, Handler)
        self.engine, self.batcher, self.cached = engine, batcher, cached


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: load clients reuse their connection
    server: PredictionServer

    def log_message(self, format: str, *args: Any) -> None:  # one line per request is too much under load
        pass

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"ok": not self.server.batcher.closed})
        elif self.path == "/spec":
            self._send(200, self.server.engine.input_spec.to_dict())
        elif self.path == "/stats":
            self._send(200, {"batcher": self.server.batcher.stats().to_dict(), "cache": self.server.cached.stats()})
        else:
            self._send(404, {"error": f"no such path {self.path}; try POST /predict, GET /spec, /stats, /healthz"})

    def do_POST(self) -> None:
        if self.path != "/predict":
            self._send(404, {"error": f"no such path {self.path}; POST /predict"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            self._send(400, {"error": f"expected a JSON body of 1..{MAX_BODY} bytes, got {length}"})
            return
        try:
            inputs = parse_inputs(json.loads(self.rfile.read(length)), self.server.engine.input_spec)
            outputs, from_cache = self.server.cached.call(*inputs)
            self._send(200, {"outputs": to_json(outputs), "cached": from_cache})
        except (ValueError, motorpool.InputError) as exc:  # JSONDecodeError is a ValueError
            self._send(400, {"error": str(exc)})
        except motorpool.QueueFull as exc:
            self._send(503, {"error": str(exc)}, {"Retry-After": "1"})
        except motorpool.BatcherClosed as exc:
            self._send(503, {"error": str(exc)})
        except TimeoutError as exc:
            self._send(504, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - the client gets a 500 with the reason, the server lives on
            self._send(500, {"error": f"{type(exc).__name__}: {exc}"})


def parse_inputs(body: Any, spec: motorpool.InputSpec) -> tuple[np.ndarray, ...]:
    """The request's inputs as arrays of the spec's dtypes (shapes are checked by the batcher)."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise ValueError('expected {"inputs": [input0, ...]}, one nested list per model input')
    values = body["inputs"]
    if len(values) != len(spec):
        raise ValueError(f"expected {len(spec)} input(s) {spec.describe()}, got {len(values)}")
    return tuple(np.asarray(v, dtype=np.dtype(t.dtype)) for v, t in zip(values, spec.inputs))


def to_json(output: Any) -> Any:
    return pytree.tree_map(lambda x: x.tolist() if isinstance(x, (np.ndarray, torch.Tensor)) else x, output)


def serve(server: PredictionServer) -> None:
    """Serve until SIGINT/SIGTERM, then stop taking connections and drain the batcher."""
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    stop.wait()
    server.shutdown()
    server.batcher.close(drain=True)
    server.server_close()
    print("drained and stopped:", json.dumps(server.batcher.stats().to_dict()), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Serve a zoo model over HTTP through a batcher and a cache.")
    p.add_argument("--model", default="encoder", choices=sorted(zoo.ZOO))
    p.add_argument("--backend", default="eager")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--redis", help="redis://host:port/db for a cache shared by several server processes")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--max-queue", type=int, default=1024)
    p.add_argument("--timeout-ms", type=float, default=5000.0)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", motorpool.PluginWarning)
    engine, batcher, cached = build(args.model, args.backend, redis_url=args.redis, max_batch_size=args.max_batch,
                                    max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
                                    timeout_ms=args.timeout_ms)
    server = PredictionServer((args.host, args.port), engine, batcher, cached)
    print(f"serving {args.model} on {engine.backend} at http://{args.host}:{server.server_address[1]} "
          f"({engine.input_spec.describe()})", flush=True)
    serve(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
