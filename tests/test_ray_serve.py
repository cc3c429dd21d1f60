"""motorpool.ray.deployment against a real local Ray (one Ray session for the module, shut down after):
replicas load the saved engine, size their threads from num_cpus, batch in one layer, answer the Open
Inference Protocol under the route prefix and the Python handle with the engine's results, and a replica
killed mid-request is replaced while no request is lost (the client's retries are counted)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import numpy as np
import pytest
import torch

import motorpool
from motorpool.testing import zoo
from motorpool.testing.plugin import unavailable_reason

pytest.importorskip("ray.serve", reason='Ray Serve comes with the ray extra: pip install "motorpool[ray]"')
pytest.importorskip("fastapi", reason='the OIP routes need the serve extra: pip install "motorpool[serve]"')
httpclient = pytest.importorskip("tritonclient.http", reason='tritonclient comes with the triton extra: '
                                 'pip install "motorpool[triton]"')
import ray  # noqa: E402
from ray import serve  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import motorpool.ray as mray  # noqa: E402

pytestmark = pytest.mark.timeout(240)

BACKEND = "onnxruntime" if unavailable_reason("onnxruntime", "cpu") is None else "eager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray of 2 CPUs with Serve's proxy on a free port; engines saved for it."""
    root = tmp_path_factory.mktemp("engines")
    model, examples = zoo.get("mlp").build()
    paths = {"mlp": motorpool.compile(model, examples, backend=BACKEND).save(root / "mlp")}
    model, examples = zoo.get("encoder").build()
    paths["enc"] = motorpool.compile(model, examples, backend="eager").save(root / "enc")
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="motorpool-test")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield {"port": port, "paths": paths, "engines": {k: motorpool.load(p) for k, p in paths.items()}}
    finally:
        serve.shutdown()
        ray.shutdown()


def fresh(engine, batch: int, seed: int) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return [x.numpy() for x in engine.input_spec.random_inputs(generator=g, sizes={"batch": batch})]


def oip_infer(client, name: str, meta: dict, arrays) -> np.ndarray:
    inputs = []
    for m, x in zip(meta["inputs"], arrays):
        i = httpclient.InferInput(m["name"], list(x.shape), m["datatype"])
        i.set_data_from_numpy(x)
        inputs.append(i)
    return client.infer(name, inputs).as_numpy("output")


def pids(handle, want: int, timeout: float = 30.0) -> set[int]:
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < want:
        assert time.monotonic() < deadline, f"saw replicas {seen}, expected {want}"
        try:
            seen |= {handle.describe.remote().result(timeout_s=30)["pid"] for _ in range(4)}
        except Exception:  # noqa: BLE001 - a replica that just died; Serve routes around it
            time.sleep(0.5)
    return seen


def test_http_and_handle_from_several_clients_equal_the_engine(cluster):
    engine = cluster["engines"]["mlp"]
    app = mray.deployment(cluster["paths"]["mlp"], name="mlp", num_replicas=2, ray_actor_options={"num_cpus": 1},
                          max_batch_size=8, batch_wait_timeout_s=0.002)
    handle = serve.run(app, name="two", route_prefix="/two")
    try:
        for d in (handle.describe.remote().result(timeout_s=30) for _ in range(4)):
            assert d["num_cpus"] == 1 and d["threads"] == 1 and d["torch_threads"] == 1
            assert d["runtime_threads"] == 1 and d["motorpool_batcher"] and d["backend"] == BACKEND
        url = f"127.0.0.1:{cluster['port']}/two"
        meta = httpclient.InferenceServerClient(url).get_model_metadata("mlp")
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 32]}]
        failures: list[str] = []

        def client(k: int) -> None:
            c = httpclient.InferenceServerClient(url)  # one per thread (gevent)
            try:
                for j in range(5):
                    arrays = fresh(engine, 1 + j % 3, 100 * k + j)
                    if j % 2:
                        got = handle.infer.remote(*arrays).result(timeout_s=60)
                    else:
                        got = oip_infer(c, "mlp", meta, arrays)
                    np.testing.assert_allclose(got, engine(*arrays), rtol=1e-5, atol=1e-5)
            except Exception as exc:  # noqa: BLE001 - reported below
                failures.append(repr(exc))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures[:3]
        # a bad request is the protocol's 400 with the engine's InputError message
        bad = [np.random.randn(2, 31).astype(np.float32)]
        with pytest.raises(motorpool.InputError) as want:
            engine(*bad)
        with pytest.raises(InferenceServerException) as err:
            oip_infer(httpclient.InferenceServerClient(url), "mlp", meta, bad)
        assert err.value.status() == "400" and err.value.message() == str(want.value)
    finally:
        serve.delete("two")


def test_serve_batching_and_threads_from_num_cpus(cluster):
    engine = cluster["engines"]["enc"]
    app = mray.deployment(cluster["paths"]["enc"], name="enc", num_replicas=1, ray_actor_options={"num_cpus": 2},
                          batching="serve", max_batch_size=4, batch_wait_timeout_s=0.01)
    handle = serve.run(app, name="serve-batch", route_prefix="/sb")
    try:
        d = handle.describe.remote().result(timeout_s=30)
        assert d["num_cpus"] == 2 and d["torch_threads"] == 2 and d["batching"] == "serve"
        assert not d["motorpool_batcher"]  # one batching layer only
        requests = [fresh(engine, 1 + k % 2, k) for k in range(8)]
        responses = [handle.infer.remote(*arrays) for arrays in requests]  # concurrent: Serve batches them
        for arrays, response in zip(requests, responses):
            np.testing.assert_allclose(response.result(timeout_s=60), engine(*arrays), rtol=1e-5, atol=1e-5)
        url = f"127.0.0.1:{cluster['port']}/sb"
        client = httpclient.InferenceServerClient(url)
        meta = client.get_model_metadata("enc")
        arrays = fresh(engine, 3, 99)
        np.testing.assert_allclose(oip_infer(client, "enc", meta, arrays), engine(*arrays), rtol=1e-5, atol=1e-5)
    finally:
        serve.delete("serve-batch")


def replica_in_constructor(app: str, timeout: float = 60.0) -> tuple[int, str]:
    """A replica process of ``app`` while it runs its constructor (Ray titles the process with its task)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    title = f.read().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if f"ServeReplica:{app}:" in title:
                return int(entry), title
        time.sleep(0.01)
    raise AssertionError(f"no replica of {app} showed up within {timeout} s")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds replica processes through /proc (Linux)")
def test_a_replica_killed_mid_load_or_mid_request_is_replaced_and_no_request_is_lost(cluster):
    engine = cluster["engines"]["mlp"]
    app = mray.deployment(cluster["paths"]["mlp"], name="mlp", num_replicas=2, ray_actor_options={"num_cpus": 1},
                          max_batch_size=8, batch_wait_timeout_s=0.005)
    outcome: dict = {}

    def deploy() -> None:
        try:
            outcome["handle"] = serve.run(app, name="kill", route_prefix="/kill")
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    deployer = threading.Thread(target=deploy)
    deployer.start()
    loading, title = replica_in_constructor("kill")
    os.kill(loading, signal.SIGKILL)  # mid-load: the replica is still in __init__ (loading the engine)
    assert title.endswith(".__init__") and deployer.is_alive(), title
    deployer.join(180)
    assert "error" not in outcome, outcome.get("error")
    handle = outcome["handle"]
    try:
        before = pids(handle, 2)
        assert loading not in before  # Serve started another in its place
        url = f"127.0.0.1:{cluster['port']}/kill"
        meta = httpclient.InferenceServerClient(url).get_model_metadata("mlp")
        answers: dict[tuple[int, int], int] = {}
        retries = [0]
        failures: list[str] = []
        lock = threading.Lock()
        started = threading.Event()

        def client(k: int) -> None:
            c = httpclient.InferenceServerClient(url)
            for j in range(12):
                arrays = fresh(engine, 2, 1000 + 100 * k + j)
                for attempt in range(20):  # retry what failed; an answer ends the request
                    try:
                        got = oip_infer(c, "mlp", meta, arrays)
                        break
                    except Exception:  # noqa: BLE001 - a 5xx or a dropped connection while a replica dies
                        with lock:
                            retries[0] += 1
                        c = httpclient.InferenceServerClient(url)
                        time.sleep(0.2)
                else:
                    failures.append(f"request {k}/{j} failed 20 times")
                    continue
                try:
                    np.testing.assert_allclose(got, engine(*arrays), rtol=1e-5, atol=1e-5)
                except AssertionError as exc:
                    failures.append(str(exc))
                with lock:
                    answers[k, j] = answers.get((k, j), 0) + 1
                if j == 2:
                    started.set()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        assert started.wait(60)
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)  # a crash (OOM-kill), mid-stream
        for t in threads:
            t.join(180)
        assert not failures, failures[:3]
        assert len(answers) == 48 and set(answers.values()) == {1}  # every request answered, once
        print(f"\nretries after killing replica pid {victim}: {retries[0]}")
        deadline = time.monotonic() + 90
        while True:  # Serve replaces the dead replica
            after = pids(handle, 2, timeout=60)
            if victim not in after:
                break
            assert time.monotonic() < deadline, "the killed replica was not replaced"
            time.sleep(1)
        status = serve.status().applications["kill"]
        assert status.status == "RUNNING"
        arrays = fresh(engine, 3, 7)
        np.testing.assert_allclose(handle.infer.remote(*arrays).result(timeout_s=60), engine(*arrays),
                                   rtol=1e-5, atol=1e-5)
    finally:
        serve.delete("kill")
