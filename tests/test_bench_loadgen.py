"""``motorpool bench`` under MLPerf LoadGen: the real LoadGen over the zoo MLP, its verdicts beside the
figures, settings from a measurement, and the built-in scenarios where LoadGen cannot be imported."""

import contextlib
import io
import json
import math
import os
import sys

import pytest

import motorpool
from motorpool.cli import main
from motorpool.measuring import bench_output
from motorpool.testing import zoo

pytest.importorskip("mlperf_loadgen", reason='MLPerf LoadGen is not installed: pip install "motorpool[loadgen]"')

BUDGET_MS = 300
NOT_INSTALLED = 'built-in: mlperf_loadgen not installed (pip install "motorpool[loadgen]")'


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One LoadGen-driven bench of the MLP on eager (SingleStream and Offline at batch 1 and 4, and Server),
    run from an empty current directory: ``(exit code, stdout, bench.json, logs dir, that directory)``."""
    root = tmp_path_factory.mktemp("bench")
    out, logs, cwd = root / "out", root / "logs", root / "cwd"
    cwd.mkdir()
    argv = ["bench", "zoo:mlp", "--backends", "eager", "--batch-sizes", "1,4", "--scenarios",
            "SingleStream,Offline,Server", "--time-budget", str(BUDGET_MS / 1e3), "--no-load", "--out", str(out),
            "--loadgen-logs", str(logs), "--no-progress"]
    stdout, before = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout):
            rc = main(argv)
    finally:
        os.chdir(before)
    data = json.loads((out / "bench.json").read_text()) if rc == 0 else None
    return rc, stdout.getvalue(), data, logs, cwd


def test_bench_reports_loadgens_verdict_beside_the_figures(bench_run):
    rc, printed, data, logs, cwd = bench_run
    assert rc == 0, printed
    assert data["config"]["driver"].startswith("mlperf_loadgen ")
    assert "scenarios run by: mlperf_loadgen" in printed and "LoadGen" in printed
    (row,) = data["results"]
    assert row["driver"] == "loadgen"
    runs = [(b["batch"], name, b[key]) for b in row["batches"]
            for name, key in (("SingleStream", "single_stream"), ("Offline", "offline"))]
    runs.append((1, "Server", row["server"]))
    for batch, name, fig in runs:
        assert fig["driver"] == "loadgen" and fig["verdict"] in ("VALID", "INVALID"), (batch, name)
        assert (fig["reason"] == "") == (fig["verdict"] == "VALID"), fig["reason"]
        assert fig["errors"] == 0 and fig["settings"]["min_duration_ms"] == BUDGET_MS
        assert fig["settings"]["max_duration_ms"] == 3 * BUDGET_MS + 2000  # LoadGen's safety stop
        if fig["verdict"] == "INVALID":
            assert f"batch {batch}: LoadGen {name} INVALID: {fig['reason']}" in printed
    for b in row["batches"]:
        ss, off = b["single_stream"], b["offline"]
        assert 0 < ss["min_ms"] <= ss["p50_ms"] <= ss["p90_ms"] <= ss["p99_ms"] <= ss["max_ms"]
        assert math.isfinite(off["throughput_per_s"]) and off["throughput_per_s"] > 0
    # LoadGen's logs went where they were sent, never into the current directory
    assert (logs / "eager-fp32" / "Offline-batch4" / "mlperf_log_summary.txt").is_file()
    assert (logs / "eager-fp32" / "Server" / "mlperf_log_summary.txt").is_file()
    assert list(cwd.iterdir()) == []


def test_loadgen_settings_come_from_the_measurement(bench_run):
    (row,) = bench_run[2]["results"]
    for b in row["batches"]:
        ss, off = b["single_stream"], b["offline"]
        # one b-row call measured first: SingleStream expects its p50, Offline 1.5x its best rate
        assert ss["settings"]["single_stream_expected_latency_ms"] == ss["measured"]["latency_p50_ms"] > 0
        assert off["settings"]["offline_expected_qps"] == pytest.approx(1.5 * off["measured"]["throughput"])
    server = row["server"]
    measured = server["measured"]["served_per_s"]
    # Server's target: half the measured one-at-a-time rate through the batcher, far under a batched rate
    assert measured > 0 and server["target_qps"] == pytest.approx(0.5 * measured)
    assert server["settings"]["server_measured_per_s"] == measured


def test_an_unmet_latency_bound_is_invalid_and_says_why():
    model, inputs = zoo.get("mlp").build(2)
    engine = motorpool.compile(model, inputs, backend="eager")
    result = motorpool.benchmark(engine, inputs, batch_sizes=[1], scenarios=["Server"], driver="loadgen",
                                 time_budget_s=0.2, p99_bound_ms=1e-4)
    server = result.server
    assert server["verdict"] == "INVALID" and "Performance constraints" in server["reason"]
    assert server["max_rate_per_s"] is None and server["p99_ms"] > server["p99_bound_ms"] == 1e-4
    suite = motorpool.measuring.benchmark.BenchSuite("mlp", [result], {"driver": "mlperf_loadgen x"}, {})
    assert bench_output.rows(suite)[0][bench_output.columns(suite).index("LoadGen")] == "INVALID: Server"
    assert "Performance constraints" in bench_output.server_lines(suite)[0]


def test_onnxruntime_engine_under_loadgen():
    pytest.importorskip("onnxruntime")
    model, inputs = zoo.get("mlp").build(2)
    engine = motorpool.compile(model, inputs, backend="onnxruntime")
    result = motorpool.benchmark(engine, inputs, batch_sizes=[2], scenarios=["single_stream", "offline"],
                                 driver="auto", time_budget_s=0.2)
    (b,) = result.batches
    assert result.driver == "loadgen" and b.single_stream["verdict"] in ("VALID", "INVALID")
    assert b.offline["throughput_per_s"] > 0 and b.offline["measured"]["offline_batch"] == 1


def test_builtin_scenarios_run_where_loadgen_cannot_be_imported(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "mlperf_loadgen", None)  # `import mlperf_loadgen` now raises ImportError
    argv = ["bench", "zoo:mlp", "--backends", "eager", "--batch-sizes", "1", "--scenarios", "SingleStream",
            "--time-budget", "0.1", "--no-load", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    assert f"scenarios run by: {NOT_INSTALLED}" in capsys.readouterr().out
    data = json.loads((tmp_path / "bench.json").read_text())
    (row,) = data["results"]
    ss = row["batches"][0]["single_stream"]
    assert data["config"]["driver"] == NOT_INSTALLED and row["driver"] == "builtin"
    assert "verdict" not in ss and isinstance(ss["stable"], bool) and ss["p50_ms"] > 0
    # asking for LoadGen by name, without it, says how to install it
    assert main(argv + ["--driver", "loadgen"]) == 2
    assert 'pip install "motorpool[loadgen]"' in capsys.readouterr().err


def test_bad_scenario_and_driver_names_are_usage_errors(capsys):
    assert main(["bench", "zoo:mlp", "--scenarios", "SingleStream,MultiStream", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "MultiStream" in err and "SingleStream, Offline, Server" in err
    assert main(["bench", "zoo:mlp", "--driver", "mlperf", "--no-progress"]) == 2
    assert "auto, loadgen, builtin" in capsys.readouterr().err
