"""`motorpool serve` speaks the Open Inference Protocol: tested with tritonclient, a client nobody here wrote,
against real servers started in subprocesses on 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import motorpool
from motorpool.testing import zoo
from motorpool.testing.plugin import unavailable_reason

pytest.importorskip("fastapi", reason='the OIP server needs the serve extra: pip install "motorpool[serve]"')
pytest.importorskip("uvicorn", reason='the OIP server needs the serve extra: pip install "motorpool[serve]"')
httpclient = pytest.importorskip("tritonclient.http", reason='tritonclient comes with the triton extra: '
                                 'pip install "motorpool[triton]"')
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.timeout(300)

CPU_BACKENDS = ["eager", "torchscript", "onnxruntime", "openvino"]
AVAILABLE = [b for b in CPU_BACKENDS if unavailable_reason(b, "cpu") is None]
BACKEND_PARAMS = [pytest.param(b, marks=pytest.mark.skipif(b not in AVAILABLE, reason=str(unavailable_reason(b, "cpu"))))
                  for b in CPU_BACKENDS]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``motorpool serve ...`` in a subprocess, ready when /v2/health/ready answers 200."""

    def __init__(self, *args: str, startup_s: float = 120.0):
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        # the suite's own engines, TorchScript among them (code: SECURITY.md)
        cmd = [sys.executable, "-m", "motorpool.cli", "serve", *args, "--trust-code", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + startup_s
        while True:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise RuntimeError(f"motorpool serve exited with {self.proc.returncode}: {out}\n{err}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"motorpool serve did not become ready within {startup_s} s")
            time.sleep(0.2)

    def client(self, **kwargs) -> httpclient.InferenceServerClient:
        return httpclient.InferenceServerClient(self.url, **kwargs)

    def stats(self, name: str) -> dict:
        with urllib.request.urlopen(f"http://{self.url}/v2/models/{name}/stats", timeout=10) as r:
            return json.loads(r.read())["model_stats"][0]

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def infer_inputs(meta: dict, arrays, binary: bool):
    inputs = []
    for m, x in zip(meta["inputs"], arrays):
        i = httpclient.InferInput(m["name"], list(x.shape), m["datatype"])
        i.set_data_from_numpy(x, binary_data=binary)
        inputs.append(i)
    return inputs


def fresh(engine, batch: int, seed: int) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return [x.numpy() for x in engine.input_spec.random_inputs(generator=g, sizes={"batch": batch})]


def flat(outputs) -> list[np.ndarray]:
    return [np.asarray(x) for x in torch.utils._pytree.tree_flatten(outputs)[0]]


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """The encoder zoo model saved for each available CPU backend (model name enc-BACKEND), a dict-output
    model on eager, and a small MLP for the queue tests."""
    root = tmp_path_factory.mktemp("engines")
    saved = {}
    model, examples = zoo.get("encoder").build()
    for backend in AVAILABLE:
        engine = motorpool.compile(model, examples, backend=backend)
        saved[f"enc-{backend}"] = engine.save(root / f"enc-{backend}")
    for case, backend in (("dict_out", "eager"), ("mlp", AVAILABLE[-1])):
        m, ex = zoo.get(case).build()
        saved[case] = motorpool.compile(m, ex, backend=backend).save(root / case)
    # each engine as the server loads it, to compare the server's answers with
    return {name: (path, motorpool.load(path, trust_code=True)) for name, path in saved.items()}


@pytest.fixture(scope="module")
def server(engines):
    paths = [str(p) for p, _ in engines.values()]
    s = Server(*paths, "--max-batch-size", "8", "--max-delay-ms", "2", "--cache")
    yield s
    assert s.stop() == 0, s.proc.stderr.read()


@pytest.fixture(scope="module")
def slow_server(engines):
    """One request waits 1.5 s for company, and one is all the queue holds."""
    s = Server(str(engines["mlp"][0]), "--max-batch-size", "64", "--max-delay-ms", "1500", "--max-queue", "1",
               "--threads", "1")
    yield s
    s.stop()


def test_server_and_model_metadata(server, engines):
    client = server.client()
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "motorpool"
    for name, (_path, engine) in engines.items():
        assert client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        assert meta["name"] == name
        spec = engine.input_spec
        assert [i["name"] for i in meta["inputs"]] == spec.names
        for m, t in zip(meta["inputs"], spec.inputs):
            assert m["shape"] == [-1 if isinstance(d, str) else d for d in t.shape]
            assert m["datatype"] == {"float32": "FP32", "int64": "INT64"}[t.dtype]
        outputs = flat(engine(*fresh(engine, 2, 0)))
        assert len(meta["outputs"]) == len(outputs)
        for m, y in zip(meta["outputs"], outputs):
            assert m["shape"][0] == -1 and m["shape"][1:] == list(y.shape[1:])
            assert m["datatype"] == "FP32"
    enc = client.get_model_metadata(f"enc-{AVAILABLE[0]}")
    assert [o["name"] for o in enc["outputs"]] == ["output"]
    dict_out = client.get_model_metadata("dict_out")
    assert all(o["name"].startswith("output_") for o in dict_out["outputs"])
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("nope")
    assert err.value.status() == "404" and "enc-" in err.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_infer_equals_the_engine(server, engines, backend_name, binary):
    name = f"enc-{backend_name}"
    engine = engines[name][1]
    client = server.client()
    meta = client.get_model_metadata(name)
    for seed, batch in ((1, 1), (2, 3)):
        arrays = fresh(engine, batch, seed)
        outputs = [httpclient.InferRequestedOutput("output", binary_data=binary)]
        result = client.infer(name, infer_inputs(meta, arrays, binary), outputs=outputs, request_id=f"r{seed}")
        got = result.as_numpy("output")
        want = engine(*arrays)
        assert np.isfinite(got).all()
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert result.get_response()["id"] == f"r{seed}"


def test_structured_outputs_by_name(server, engines):
    engine = engines["dict_out"][1]
    client = server.client()
    meta = client.get_model_metadata("dict_out")
    arrays = fresh(engine, 4, 3)
    result = client.infer("dict_out", infer_inputs(meta, arrays, True))  # no outputs named: all come back
    want = flat(engine(*arrays))
    for m, w in zip(meta["outputs"], want):
        np.testing.assert_allclose(result.as_numpy(m["name"]), w, rtol=1e-6, atol=1e-6)
    # only the output asked for comes back
    one = meta["outputs"][-1]["name"]
    result = client.infer("dict_out", infer_inputs(meta, arrays, False),
                          outputs=[httpclient.InferRequestedOutput(one, binary_data=False)])
    assert [o["name"] for o in result.get_response()["outputs"]] == [one]
    np.testing.assert_allclose(result.as_numpy(one), want[-1], rtol=1e-6, atol=1e-6)


def test_concurrent_clients_get_their_own_results(server, engines):
    name = f"enc-{AVAILABLE[-1]}"
    engine = engines[name][1]
    before = server.stats(name)["batcher"]["completed"]
    meta = server.client().get_model_metadata(name)
    failures, done = [], []

    def client_loop(k: int) -> None:
        client = server.client()
        try:
            for j in range(6):
                arrays = fresh(engine, 1 + (k + j) % 3, 10_000 + 100 * k + j)
                got = client.infer(name, infer_inputs(meta, arrays, binary=j % 2 == 0)).as_numpy("output")
                np.testing.assert_allclose(got, engine(*arrays), rtol=1e-5, atol=1e-5)
                done.append(1)
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(repr(exc))

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[:3]
    assert len(done) == 48
    stats = server.stats(name)["batcher"]
    assert stats["completed"] - before == 48  # every request went through the batcher (fresh inputs: no hits)


def test_cache_answers_a_repeated_request(server, engines):
    name = "mlp"
    engine = engines[name][1]
    client = server.client()
    meta = client.get_model_metadata(name)
    arrays = fresh(engine, 2, 77)
    first = client.infer(name, infer_inputs(meta, arrays, True)).as_numpy("output")
    hits = server.stats(name)["cache"]["hits"]
    second = client.infer(name, infer_inputs(meta, arrays, True)).as_numpy("output")
    assert server.stats(name)["cache"]["hits"] == hits + 1
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, engine(*arrays), rtol=1e-5, atol=1e-5)


def test_wrong_shape_is_400_with_the_input_error(server, engines):
    name = f"enc-{AVAILABLE[0]}"
    engine = engines[name][1]
    client = server.client()
    meta = client.get_model_metadata(name)
    ids, mask = fresh(engine, 2, 5)
    bad = (ids[:, :7], mask[:, :7])  # a sequence length the engine does not take
    with pytest.raises(motorpool.InputError) as want:
        engine(*bad)
    with pytest.raises(InferenceServerException) as err:
        client.infer(name, infer_inputs(meta, bad, True))
    assert err.value.status() == "400"
    assert err.value.message() == str(want.value)
    # a datatype the input does not take is named too
    wrong = httpclient.InferInput("input_ids", list(ids.shape), "FP32")
    wrong.set_data_from_numpy(ids.astype(np.float32))
    mask_in = infer_inputs(meta, [ids, mask], True)[1]
    with pytest.raises(InferenceServerException) as err:
        client.infer(name, [wrong, mask_in])
    assert err.value.status() == "400"
    assert "input 'input_ids': expected datatype INT64, got 'FP32'" in err.value.message()
    # a missing input names what the model takes
    with pytest.raises(InferenceServerException) as err:
        client.infer(name, [mask_in])
    assert err.value.status() == "400" and "missing input(s) 'input_ids'" in err.value.message()


def _wait_queued(server: Server, name: str, n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while server.stats(name)["batcher"]["queued"] < n:
        assert time.monotonic() < deadline, f"{name}: {n} request(s) never showed up queued"
        time.sleep(0.02)


def _post_infer(server: Server, name: str, arrays, meta) -> tuple[int, object, dict]:
    body = json.dumps({"inputs": [{"name": m["name"], "shape": list(x.shape), "datatype": m["datatype"],
                                   "data": x.reshape(-1).tolist()} for m, x in zip(meta["inputs"], arrays)]})
    req = urllib.request.Request(f"http://{server.url}/v2/models/{name}/infer", data=body.encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def test_full_queue_is_503_with_retry_after(slow_server, engines):
    engine = engines["mlp"][1]
    client = slow_server.client()
    meta = client.get_model_metadata("mlp")
    arrays = fresh(engine, 2, 9)
    first: dict = {}
    # a tritonclient client belongs to the thread that made it (gevent)
    t = threading.Thread(target=lambda: first.update(
        y=slow_server.client().infer("mlp", infer_inputs(meta, arrays, True))))
    t.start()
    _wait_queued(slow_server, "mlp", 1)
    status, headers, body = _post_infer(slow_server, "mlp", fresh(engine, 1, 10), meta)
    assert status == 503 and headers.get("Retry-After") == "1"
    assert "queue is full" in body["error"]
    t.join(30)
    np.testing.assert_allclose(first["y"].as_numpy("output"), engine(*arrays), rtol=1e-5, atol=1e-5)


def test_threads_option_reaches_the_runtime(slow_server):
    stats = slow_server.stats("mlp")
    assert stats["threads"] == 1 and stats["backend"] == AVAILABLE[-1]


def test_request_past_its_timeout_is_504(slow_server, engines):
    engine = engines["mlp"][1]
    client = slow_server.client()
    meta = client.get_model_metadata("mlp")
    with pytest.raises(InferenceServerException) as err:
        client.infer("mlp", infer_inputs(meta, fresh(engine, 1, 11), True), timeout=200_000)  # microseconds
    assert err.value.status() == "504" and "past its timeout" in err.value.message()


def test_sigterm_answers_the_request_in_flight_then_exits(engines):
    engine = engines["mlp"][1]
    s = Server(str(engines["mlp"][0]), "--max-delay-ms", "1500")
    try:
        client = s.client()
        meta = client.get_model_metadata("mlp")
        arrays = fresh(engine, 3, 12)
        got: dict = {}
        t = threading.Thread(target=lambda: got.update(y=s.client().infer("mlp", infer_inputs(meta, arrays, True))))
        t.start()
        _wait_queued(s, "mlp", 1)
        s.proc.send_signal(signal.SIGTERM)
        t.join(30)
        np.testing.assert_allclose(got["y"].as_numpy("output"), engine(*arrays), rtol=1e-5, atol=1e-5)
        assert s.proc.wait(30) == 0
        assert "stopped on SIGTERM: requests in flight answered, batchers drained" in s.proc.stdout.read()
    finally:
        s.stop()


def test_cli_usage_errors_exit_2(engines):
    from motorpool.cli import main

    path = str(engines["mlp"][0])
    assert main(["serve", path, "--name", "a", "--name", "b"]) == 2
    assert main(["serve", path, "--max-batch-size", "0"]) == 2


def test_gzip_request_body(server, engines):
    engine = engines["mlp"][1]
    client = server.client()
    meta = client.get_model_metadata("mlp")
    arrays = fresh(engine, 3, 321)
    result = client.infer("mlp", infer_inputs(meta, arrays, True), request_compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("output"), engine(*arrays), rtol=1e-5, atol=1e-5)


def test_protocol_decoding_errors_name_what_is_wrong(engines):
    from motorpool.serving import oip

    engine = engines["mlp"][1]
    meta = oip.describe_engine(engine, "mlp")
    x = fresh(engine, 2, 5)[0]
    head = json.dumps({"inputs": [{"name": "x", "shape": [2, 32], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "output", "parameters": {"binary_data": True}}], "id": "a"}).encode()
    request = oip.decode_request(head + x.tobytes(), meta, len(head))
    np.testing.assert_array_equal(request.inputs[0], x)
    body, json_length = oip.encode_response(meta, engine(*request.inputs), request)
    doc = json.loads(body[:json_length])
    assert doc["id"] == "a" and doc["outputs"][0]["parameters"]["binary_data_size"] == 2 * 10 * 4
    np.testing.assert_array_equal(np.frombuffer(body[json_length:], np.float32).reshape(2, 10), engine(x))
    cases = [
        (head + x.tobytes()[:-4], len(head), "runs past the end of the body"),
        (head + x.tobytes() + b"xxxx", len(head), "add up to"),
        (head + x.tobytes(), len(head) + 10**9, "Inference-Header-Content-Length is"),
        (b"{", None, "not valid JSON"),
        (json.dumps({"inputs": [{"name": "y", "shape": [1], "datatype": "FP32", "data": [1]}]}).encode(), None,
         "has no input 'y'; its inputs are x"),
        (json.dumps({"inputs": [{"name": "x", "shape": [1, 32], "datatype": "FP32", "data": [1.0] * 31}]}).encode(),
         None, "holds 32 elements but 'data' has 31"),
        (json.dumps({"inputs": [{"name": "x", "shape": [1, 32], "datatype": "FP32", "data": [1.0] * 32}],
                     "outputs": [{"name": "logits"}]}).encode(), None, "has no output 'logits'; its outputs are output"),
    ]
    for body, length, message in cases:
        with pytest.raises(oip.ProtocolError, match=re.escape(message)):
            oip.decode_request(body, meta, length)
    assert oip.error_response(motorpool.QueueFull("full", max_queue=1))[:1] == (503,)
    assert oip.error_response(TimeoutError("late"))[0] == 504
    assert oip.error_response(motorpool.InputError("bad"))[:2] == (400, "bad")
