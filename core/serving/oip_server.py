"""An Open Inference Protocol (KServe v2 / Triton REST) server for saved engines, on FastAPI + uvicorn.

    >>> from motorpool.serving.oip_server import serve
    >>> serve(["resnet-engine"], host="127.0.0.1", port=8000)        # what `motorpool serve` runs

Routes: ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{name}[/versions/{v}]``,
``.../ready``, ``.../config``, ``.../stats`` and ``POST .../infer``. Every request goes through a
:class:`motorpool.DynamicBatcher` (and, with ``cache``, a :class:`motorpool.CachedEngine` in front of it, so a
hit never queues). SIGTERM (or Ctrl-C) stops taking connections, lets the requests in flight finish, then
drains the batchers.

The handlers are plain functions of a ``{name: ServedModel}`` mapping so the Ray Serve deployment
(:mod:`motorpool.ray`) mounts the same routes on its replicas.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._version import __version__
from . import oip
from .dynamic_batcher import DynamicBatcher
from .loading import engine_threads, load_engine, open_engine
from .prediction_cache import CachedEngine

try:  # the `serve` extra; importing this module without it says how to get it
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
except ImportError as exc:  # pragma: no cover - exercised where the extra is missing
    raise ImportError('motorpool serve needs FastAPI and uvicorn: pip install "motorpool[serve]"') from exc

#: bodies above this size are decoded and encoded off the event loop
_OFFLOAD_BYTES = 256 << 10


class ServedModel:
    """One engine behind the protocol: its metadata, its batcher and, optionally, its prediction cache.

    ``batching=False`` calls the engine directly (in a worker thread): for a layer that batches already, like
    Ray Serve's ``@serve.batch``. ``cache`` is True (an in-process LRU) or a :class:`motorpool.serving.stores.Store`.
    """

    def __init__(self, engine: Any, name: str, *, max_batch_size: int = 32, max_delay_ms: float = 2.0,
                 max_queue: int = 1024, timeout_ms: float | None = None, cache: Any = False,
                 batching: bool = True, workers: int = 1):
        self.engine = engine
        self.name = name
        self.meta = oip.describe_engine(engine, name)
        self.batcher = (DynamicBatcher(engine, max_batch_size=max_batch_size, max_delay_ms=max_delay_ms,
                                                 max_queue=max_queue, timeout_ms=timeout_ms, workers=workers,
                                                 name=f"motorpool-serve-{name}") if batching else None)
        self.cache = None
        if cache:
            store = None if cache is True else cache
            self.cache = CachedEngine(self.batcher or engine, store)
        self.ready = True

    @classmethod
    def load(cls, path: str | Path, name: str | None = None, *, threads: int | None = None,
             trust_code: bool = False, **options: Any) -> "ServedModel":
        """Load the saved engine at ``path`` (never compiles; ``threads`` sizes its runtime's thread pool, see
        :func:`load_engine`); the name defaults to the folder's."""
        path = Path(path)
        return cls(load_engine(path, threads, trust_code=trust_code), name or path.resolve().name, **options)

    async def infer(self, inputs: Sequence[Any], timeout_ms: float | None = None) -> Any:
        """The model's outputs for one request (its output structure)."""
        key = None
        if self.cache is not None:
            key, hit, output = self.cache.lookup(*inputs)
            if hit:
                return output
        if self.batcher is not None:
            kwargs = {} if timeout_ms is None else {"timeout_ms": timeout_ms}
            output = await self.batcher.infer(*inputs, **kwargs)
        else:
            output = await asyncio.get_running_loop().run_in_executor(None, lambda: self.engine(*inputs))
        if key is not None:
            self.cache.remember(key, output)
        return output

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "version": self.meta.versions[-1], "backend": self.engine.backend,
                               "threads": engine_threads(self.engine)}
        if self.batcher is not None:
            out["batcher"] = self.batcher.stats().to_dict()
        if self.cache is not None:
            out["cache"] = self.cache.stats()
        return out

    def config(self) -> dict[str, Any]:
        """A Triton-shaped model configuration (``GET .../config``), for clients that read one."""
        b = self.batcher
        return {"name": self.name, "platform": self.meta.platform,
                "max_batch_size": b.max_batch_size if b is not None and self.meta.batched else 0,
                "input": [{"name": t.name, "data_type": "TYPE_" + t.datatype,
                           "dims": list(t.shape[1:] if self.meta.batched else t.shape)} for t in self.meta.inputs],
                "output": [{"name": t.name, "data_type": "TYPE_" + t.datatype,
                            "dims": list(t.shape[1:] if self.meta.batched else t.shape)} for t in self.meta.outputs],
                "dynamic_batching": ({"max_queue_delay_microseconds": int(b.max_delay_ms * 1000)}
                                     if b is not None else {}),
                "parameters": {k: {"string_value": str(v)} for k, v in self.meta.extra.items()}}

    def close(self, drain: bool = True, timeout: float | None = 30.0) -> None:
        self.ready = False
        if self.batcher is not None:
            self.batcher.close(drain=drain, timeout=timeout)


# -- handlers (shared with the Ray Serve deployment) ---------------------------------------------------------


def _json(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    import json
    return Response(json.dumps(doc, separators=(",", ":")), status_code=status, headers=dict(headers or {}),
                    media_type="application/json")


def _error(exc: BaseException) -> Response:
    status, message, headers = oip.error_response(exc)
    return Response(oip.error_body(message), status_code=status, headers=headers, media_type="application/json")


def _find(models: Mapping[str, ServedModel], name: str, version: str | None) -> ServedModel:
    model = models.get(name)
    if model is None:
        raise oip.ProtocolError(f"unknown model {name!r}; this server has: {', '.join(models) or '(none)'}",
                                status=404)
    if version not in (None, "") and version not in model.meta.versions:
        raise oip.ProtocolError(f"model {name!r} has no version {version!r}; versions: "
                                f"{', '.join(model.meta.versions)}", status=404)
    return model


def server_metadata() -> dict[str, Any]:
    return {"name": "motorpool", "version": __version__,
            "extensions": ["binary_tensor_data", "model_configuration", "statistics"]}


def live() -> Response:
    return _json({"live": True})


def ready(models: Mapping[str, ServedModel]) -> Response:
    ok = bool(models) and all(m.ready for m in models.values())
    return _json({"ready": ok}, 200 if ok else 503)


def model_metadata(models: Mapping[str, ServedModel], name: str, version: str | None = None) -> Response:
    try:
        return _json(_find(models, name, version).meta.to_dict())
    except oip.ProtocolError as exc:
        return _error(exc)


def model_ready(models: Mapping[str, ServedModel], name: str, version: str | None = None) -> Response:
    try:
        model = _find(models, name, version)
    except oip.ProtocolError as exc:
        return _error(exc)
    return _json({"name": name, "ready": model.ready}, 200 if model.ready else 503)


def model_config(models: Mapping[str, ServedModel], name: str, version: str | None = None) -> Response:
    try:
        return _json(_find(models, name, version).config())
    except oip.ProtocolError as exc:
        return _error(exc)


def model_stats(models: Mapping[str, ServedModel], name: str, version: str | None = None) -> Response:
    try:
        return _json({"model_stats": [_find(models, name, version).stats()]})
    except oip.ProtocolError as exc:
        return _error(exc)


async def infer(models: Mapping[str, ServedModel], name: str, version: str | None, request: Request,
                run: Any = None) -> Response:
    """``POST /v2/models/{name}/infer``. ``run(model, inputs, timeout_ms)`` overrides how the model is called
    (the Ray deployment passes its ``@serve.batch`` method); by default :meth:`ServedModel.infer`."""
    try:
        model = _find(models, name, version)
        body = oip.decompress(await request.body(), request.headers.get("content-encoding"))
        header_length = request.headers.get(oip.HEADER_LENGTH.lower())
        if len(body) > _OFFLOAD_BYTES:
            decoded = await asyncio.get_running_loop().run_in_executor(
                None, oip.decode_request, body, model.meta, header_length)
        else:
            decoded = oip.decode_request(body, model.meta, header_length)
        timeout_ms = decoded.timeout_ms
        if run is not None:
            outputs = await run(model, decoded.inputs, timeout_ms)
        else:
            outputs = await model.infer(decoded.inputs, timeout_ms)
        payload, json_length = oip.encode_response(model.meta, outputs, decoded)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the protocol's error object
        return _error(exc)
    if json_length is None:
        return Response(payload, media_type="application/json")
    return Response(payload, media_type="application/octet-stream",
                    headers={oip.HEADER_LENGTH: str(json_length)})


def create_app(models: Mapping[str, ServedModel] | ServedModel | Sequence[ServedModel], *,
               close_on_shutdown: bool = True) -> FastAPI:
    """A FastAPI app serving ``models`` over the Open Inference Protocol. On shutdown (after uvicorn has let
    the requests in flight finish) the batchers are closed, draining what they hold."""
    if isinstance(models, ServedModel):
        models = {models.name: models}
    elif not isinstance(models, Mapping):
        models = {m.name: m for m in models}
    models = dict(models)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app):
        yield
        if close_on_shutdown:
            for m in models.values():
                await asyncio.get_running_loop().run_in_executor(None, m.close)

    app = FastAPI(title="motorpool", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.models = models

    @app.get("/v2/health/live")
    async def _live():
        return live()

    @app.get("/v2/health/ready")
    async def _ready():
        return ready(models)

    @app.get("/v2")
    async def _server():
        return _json(server_metadata())

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_api_route(prefix, _bind(model_metadata, models), methods=["GET"])
        app.add_api_route(prefix + "/ready", _bind(model_ready, models), methods=["GET"])
        app.add_api_route(prefix + "/config", _bind(model_config, models), methods=["GET"])
        app.add_api_route(prefix + "/stats", _bind(model_stats, models), methods=["GET"])
        app.add_api_route(prefix + "/infer", _bind_infer(models), methods=["POST"])
    return app


def _bind(handler, models):
    async def route(name: str, version: str | None = None):
        return handler(models, name, version)
    return route


def _bind_infer(models):
    async def route(name: str, request: Request, version: str | None = None):
        return await infer(models, name, version, request)
    return route


# -- running it ----------------------------------------------------------------------------------------------


def load_models(paths: Sequence[str | Path], names: Sequence[str] | None = None, **options: Any) -> dict[str, ServedModel]:
    """Load each saved engine as a :class:`ServedModel`; names default to the folders' names."""
    names = list(names) if names else [None] * len(paths)
    if len(names) != len(paths):
        raise ValueError(f"{len(paths)} engine folder(s) but {len(names)} name(s)")
    models: dict[str, ServedModel] = {}
    for path, name in zip(paths, names):
        model = ServedModel.load(path, name, **options)
        if model.name in models:
            raise ValueError(f"two engines would be served as {model.name!r}; give them names")
        models[model.name] = model
    return models


def make_server(models: Mapping[str, ServedModel], host: str = "127.0.0.1", port: int = 8000, *,
                log_level: str = "warning", graceful_s: float = 30.0):
    """A ``uvicorn.Server`` for ``models`` (call ``.run()``, or run it in a thread with :class:`ServerThread`)."""
    import uvicorn

    config = uvicorn.Config(create_app(models), host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=graceful_s, lifespan="on")
    return uvicorn.Server(config)


def serve(paths: Sequence[str | Path], host: str = "127.0.0.1", port: int = 8000, *,
          names: Sequence[str] | None = None, log_level: str = "warning", **options: Any) -> None:
    """Load the engines and serve them until SIGTERM/SIGINT (uvicorn's own handlers: stop accepting, finish
    the requests in flight, then drain the batchers)."""
    make_server(load_models(paths, names, **options), host, port, log_level=log_level).run()


class ServerThread:
    """Run a server in a background thread (tests, benchmarks, notebooks); ``stop()`` shuts it down like
    SIGTERM would. ``url`` is ``http://host:port``; port 0 picks a free one."""

    def __init__(self, models: Mapping[str, ServedModel], host: str = "127.0.0.1", port: int = 0,
                 startup_timeout: float = 30.0):
        import socket

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.models = models
        self.host, self.port = host, port
        self.server = make_server(models, host, port)
        self._thread = threading.Thread(target=self.server.run, name=f"motorpool-serve-{port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + startup_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {host}:{port} did not start within {startup_timeout} s")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


__all__ = ["ServedModel", "open_engine", "load_engine", "engine_threads", "create_app", "load_models", "make_server", "serve", "ServerThread", "server_metadata",
           "live", "ready", "model_metadata", "model_ready", "model_config", "model_stats", "infer"]
