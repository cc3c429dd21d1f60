"""Ray Serve deployments of saved engines (extra ``ray``).

    >>> from ray import serve
    >>> import motorpool.ray
    >>> app = motorpool.ray.deployment("resnet-engine", name="resnet", num_replicas=2,
    ...                                ray_actor_options={"num_cpus": 1})
    >>> handle = serve.run(app, route_prefix="/resnet")
    >>> handle.infer.remote(x).result()                     # Python: the model's outputs, NumPy
    # HTTP: the Open Inference Protocol under the prefix: POST /resnet/v2/models/resnet/infer

Each replica ``motorpool.load``s the saved engine (it never compiles; the folder must be readable where the
replica runs: a shared file system, or the same machine), sets torch's threads and the runtime's threads
(ONNX Runtime's intra-op pool, OpenVINO's inference threads) from the replica's ``num_cpus``, and batches in
one layer only: ``batching="motorpool"`` (a :class:`motorpool.DynamicBatcher` per replica, the default) or
``batching="serve"`` (Serve's ``@serve.batch``). ``num_replicas``, ``autoscaling_config``,
``max_ongoing_requests`` and ``ray_actor_options`` go to ``serve.deployment`` as they are.
"""

# No `from __future__ import annotations` here: the replica class is shipped to Ray workers by value, and
# FastAPI must see the routes' real annotations (``request: Request``), not names it cannot resolve there.
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .plugin.errors import ArtifactError

try:
    from fastapi import FastAPI, Request
    from ray import serve
except ImportError as exc:  # pragma: no cover - where the extra is missing
    raise ImportError('motorpool.ray needs Ray Serve: pip install "motorpool[ray]"') from exc

BATCHING = ("motorpool", "serve")


def app_name(path: str | Path, name: str | None = None) -> str:
    return name or Path(path).resolve().name


def replica_cpus(default: float = 1.0) -> float:
    """The CPUs Ray assigned to the calling actor (its ``num_cpus``), or ``default`` outside Ray."""
    try:
        import ray

        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", default))
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return default


def _rows_key(inputs: Sequence[Any]) -> tuple:
    return tuple((np.asarray(x).dtype.str, np.asarray(x).shape[1:]) for x in inputs)


def deployment(path: str | Path, name: str | None = None, *, num_replicas: int | str | None = 1,
               autoscaling_config: dict | None = None, max_ongoing_requests: int | None = None,
               ray_actor_options: dict | None = None, batching: str = "motorpool", max_batch_size: int = 32,
               batch_wait_timeout_s: float = 0.002, max_queue: int = 1024, cache: bool = False,
               trust_code: bool = False, **deployment_options: Any):
    """A bound Ray Serve application serving the saved engine at ``path`` as model ``name`` (default: the
    folder's name) over the Open Inference Protocol, plus the handle methods ``infer(*inputs)`` and
    ``metadata()``. Start it with ``serve.run(app, route_prefix=...)``.

    ``trust_code`` lets replicas load a code format (TorchScript, ...), as in ``motorpool.load`` (SECURITY.md).
    ``max_ongoing_requests`` defaults to ``2 * max_batch_size`` so a replica sees enough requests at once to
    fill its batches. ``ray_actor_options`` defaults to ``{"num_cpus": 1}``; the replica's threads follow it.
    """
    if batching not in BATCHING:
        raise ValueError(f"batching: expected one of {', '.join(BATCHING)}, got {batching!r}")
    path = Path(path).resolve()
    if not (path / "manifest.json").is_file():
        raise ArtifactError(f"{path} is not a saved engine (no manifest.json)")
    if autoscaling_config is not None:
        num_replicas = None if num_replicas == 1 else num_replicas  # the autoscaler decides
    model_name = app_name(path, name)
    options: dict[str, Any] = dict(deployment_options)
    options.update(name=f"motorpool-{model_name}", ray_actor_options=dict(ray_actor_options or {"num_cpus": 1}),
                   max_ongoing_requests=max_ongoing_requests or max(2 * max_batch_size, 8))
    if num_replicas is not None:
        options["num_replicas"] = num_replicas
    if autoscaling_config is not None:
        options["autoscaling_config"] = autoscaling_config
    cls = _replica_class(batching, max_batch_size, batch_wait_timeout_s)
    return serve.deployment(**options)(cls).bind(str(path), model_name, max_batch_size, batch_wait_timeout_s,
                                                 max_queue, cache, trust_code)


def _replica_class(batching: str, max_batch_size: int, batch_wait_timeout_s: float):
    """The replica class, made per deployment: its FastAPI app and its ``@serve.batch`` size are its own."""
    from .serving import loading, oip_server

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @serve.ingress(app)
    class MotorpoolReplica:
        def __init__(self, path: str, name: str, max_batch_size_: int, wait_s: float, max_queue: int,
                     cache: bool, trust_code: bool = False):
            self.cpus = replica_cpus()
            self.threads = max(1, math.floor(self.cpus))
            os.environ["OMP_NUM_THREADS"] = str(self.threads)
            engine = loading.load_engine(path, self.threads, trust_code=trust_code)  # sets torch's threads too
            # one batching layer: motorpool's batcher, or (batching="serve") none here and @serve.batch below
            self.model = oip_server.ServedModel(engine, name, max_batch_size=max_batch_size_,
                                                max_delay_ms=wait_s * 1e3, max_queue=max_queue, cache=cache,
                                                batching=batching == "motorpool")
            self.models = {name: self.model}
            self.name = name

        # -- the Python handle -------------------------------------------------------------------------

        async def infer(self, *inputs: Any) -> Any:
            """The model's outputs (NumPy) for one request (inputs with the batch as dimension 0)."""
            arrays = [np.asarray(x) for x in inputs]
            return await self._run(self.model, arrays, None)

        def metadata(self) -> dict:
            return self.model.meta.to_dict()

        def describe(self) -> dict:
            """Where this replica runs and how: its pid, CPUs, threads, backend and batching layer."""
            import torch

            runtime_threads = loading.engine_threads(self.model.engine)
            return {"pid": os.getpid(), "num_cpus": self.cpus, "threads": self.threads,
                    "torch_threads": torch.get_num_threads(), "runtime_threads": int(runtime_threads),
                    "backend": self.model.engine.backend, "batching": batching,
                    "motorpool_batcher": self.model.batcher is not None}

        def stats(self) -> dict:
            return self.model.stats()

        async def _run(self, model, inputs, timeout_ms):
            if batching == "serve":  # one layer: this replica holds no motorpool batcher
                model.engine.input_spec.check(inputs)  # a bad request is refused here, never joins a batch
                out = await self._serve_batched(list(inputs))
                if isinstance(out, BaseException):
                    raise out
                return out
            return await model.infer(inputs, timeout_ms)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def _serve_batched(self, requests: list[list[Any]]) -> list[Any]:
            """Serve's batch: requests of equal non-batch shapes run as one engine call, split back by rows."""
            import asyncio

            import torch.utils._pytree as pytree

            groups: dict[tuple, list[int]] = {}
            for i, inputs in enumerate(requests):
                groups.setdefault(_rows_key(inputs), []).append(i)
            results: list[Any] = [None] * len(requests)
            loop = asyncio.get_running_loop()
            for members in groups.values():
                joined = [np.concatenate([requests[i][k] for i in members]) for k in range(len(requests[members[0]]))]
                try:
                    out = await loop.run_in_executor(None, lambda: self.model.engine(*joined))
                except Exception:  # noqa: BLE001 - one bad request must not fail the others: run them alone
                    for i in members:
                        try:
                            results[i] = await loop.run_in_executor(None, lambda i=i: self.model.engine(*requests[i]))
                        except Exception as exc:  # noqa: BLE001 - returned to that request's caller
                            results[i] = exc
                    continue
                leaves, tree = pytree.tree_flatten(out)
                start = 0
                for i in members:
                    rows = len(requests[i][0])
                    results[i] = pytree.tree_unflatten([x[start:start + rows] for x in leaves], tree)
                    start += rows
            return results  # an exception in the list goes to that request's caller alone

        # -- the Open Inference Protocol, under the route prefix ----------------------------------------

        @app.get("/v2/health/live")
        async def _live(self):
            return oip_server.live()

        @app.get("/v2/health/ready")
        async def _ready(self):
            return oip_server.ready(self.models)

        @app.get("/v2")
        async def _server(self):
            return oip_server.server_metadata()

        @app.get("/v2/models/{name}")
        async def _metadata(self, name: str):
            return oip_server.model_metadata(self.models, name)

        @app.get("/v2/models/{name}/ready")
        async def _model_ready(self, name: str):
            return oip_server.model_ready(self.models, name)

        @app.get("/v2/models/{name}/config")
        async def _config(self, name: str):
            return oip_server.model_config(self.models, name)

        @app.get("/v2/models/{name}/stats")
        async def _stats(self, name: str):
            return oip_server.model_stats(self.models, name)

        @app.post("/v2/models/{name}/infer")
        async def _infer(self, name: str, request: Request):
            return await oip_server.infer(self.models, name, None, request, run=self._run)

        @app.get("/v2/models/{name}/versions/{version}")
        async def _metadata_v(self, name: str, version: str):
            return oip_server.model_metadata(self.models, name, version)

        @app.post("/v2/models/{name}/versions/{version}/infer")
        async def _infer_v(self, name: str, version: str, request: Request):
            return await oip_server.infer(self.models, name, version, request, run=self._run)

    return MotorpoolReplica


__all__ = ["deployment", "replica_cpus", "app_name", "BATCHING"]
