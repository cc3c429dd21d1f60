import json
import subprocess
import sys

import pytest

import motorpool


def motorpool_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "motorpool.cli", *args], capture_output=True, text=True,
                          check=True, env=env)


def test_doctor_json_is_truthful():
    data = json.loads(motorpool_cli("doctor", "--json").stdout)
    cpu = data["hardware"]["cpu"]
    assert cpu["cores"] >= 1 and cpu["model"]
    by_name = {b["name"]: b for b in data["backends"]}
    assert {"eager", "torchscript", "torch_compile"} <= set(by_name)
    assert by_name["eager"]["available"] and by_name["eager"]["version"] == __import__("torch").__version__
    for b in data["backends"]:
        assert b["available"] or b["reason"], b


def test_doctor_table_lists_every_backend():
    out = motorpool_cli("doctor").stdout
    for info in motorpool.list_backends():
        assert info.name in out
    assert "fingerprint" in out


def test_demo_prints_one_table():
    out = motorpool_cli("demo", "--model", "mlp", "--seconds", "0.05", "--backends", "eager,torchscript").stdout
    lines = [line for line in out.splitlines() if line.startswith(("eager ", "torchscript "))]
    assert len(lines) == 2 and all(" ok " in line for line in lines), out
    # "vs eager" is eager's p50 over the row's, from the same run
    head = next(line for line in out.splitlines() if line.startswith("backend"))
    assert head.split()[:10] == ["backend", "status", "compile", "s", "p50", "ms", "p90", "ms", "vs", "eager"], head
    rows = {line.split()[0]: line.split() for line in lines}  # name, status, compile s, p50, p90, vs eager, ...
    eager_ms, ts = float(rows["eager"][3]), rows["torchscript"]
    ratio = eager_ms / float(ts[3])
    # the printed p50s are rounded to 3 decimals and the ratio to 2: allow exactly that much
    slack = ratio * (0.0005 / eager_ms + 0.0005 / float(ts[3])) + 0.005
    assert float(ts[5].rstrip("x")) == pytest.approx(ratio, abs=slack), out


def test_no_command_prints_help():
    r = subprocess.run([sys.executable, "-m", "motorpool.cli"], capture_output=True, text=True)
    assert r.returncode == 2 and "doctor" in r.stdout
