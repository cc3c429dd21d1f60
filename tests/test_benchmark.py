"""motorpool.benchmark: figures that hang together, the scenarios, and the written outputs."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch

import motorpool
from motorpool.measuring import bench_output
from motorpool.measuring.benchmark import BatchFigures, BenchResult, BenchSuite
from motorpool.measuring.scenarios import inputs_at_batch, latency_summary, settled, single_stream
from motorpool.testing import zoo


@pytest.fixture(scope="module")
def engine_and_inputs():
    model, x = zoo.get("mlp").build(batch=4)
    return motorpool.compile(model, x, backend="torchscript", cache=False), x


def test_latency_summary_orders_percentiles():
    s = latency_summary([5.0, 1.0, 3.0, 2.0, 4.0, 100.0])
    assert s["count"] == 6 and s["min_ms"] == 1.0 and s["max_ms"] == 100.0
    assert s["p50_ms"] == pytest.approx(3.5)
    assert s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
    with pytest.raises(ValueError):
        latency_summary([])


def test_settled_needs_three_close_rounds():
    assert not settled([1.0, 1.0], 0.05)
    assert settled([9.0, 1.0, 1.02, 1.04], 0.05)
    assert not settled([1.0, 1.0, 1.2], 0.05)


def test_inputs_at_batch_reuses_rows_and_draws_fresh_ones(engine_and_inputs):
    engine, x = engine_and_inputs
    (seven,) = inputs_at_batch(engine.input_spec, 7, x)
    assert seven.shape == (7, 32)
    torch.testing.assert_close(seven[4:], x[0][:3])
    (drawn,) = inputs_at_batch(engine.input_spec, 3)
    assert drawn.shape == (3, 32) and drawn.abs().sum() > 0
    (as_np,) = inputs_at_batch(engine.input_spec, 5, (x[0].numpy(),))
    assert isinstance(as_np, np.ndarray) and as_np.shape == (5, 32)


def test_single_stream_and_offline_figures_are_sane(engine_and_inputs):
    engine, x = engine_and_inputs
    steps = []
    result = motorpool.benchmark(engine, x, batch_sizes=[1, 4], time_budget_s=0.3, on_step=steps.append)
    assert isinstance(result, BenchResult)
    assert result.backend == "torchscript" and result.compile_time_s > 0
    assert [b.batch for b in result.batches] == [1, 4]
    assert steps == ["single-stream batch 1", "offline batch 1", "single-stream batch 4", "offline batch 4"]
    for b in result.batches:
        ss, off = b.single_stream, b.offline
        assert ss["stable"] == settled(ss["round_medians_ms"], 0.05)  # the default stability_tol
        assert ss["stable"] == ("did not settle" not in ss.get("note", ""))
        assert 0 < ss["min_ms"] <= ss["p50_ms"] <= ss["p90_ms"] <= ss["p99_ms"] <= ss["max_ms"]
        assert ss["rounds"] >= 1 and len(ss["round_medians_ms"]) == ss["rounds"]
        assert off["calls"] >= 1 and off["samples"] == off["calls"] * b.batch
        assert off["throughput_per_s"] == pytest.approx(off["samples"] / off["seconds"])
    assert result.peak_rss_mb > 10


def test_single_stream_keeps_to_its_budget_and_says_when_unsettled():
    calls = []

    class Drifting:
        """Every call slower than the last: the median can never settle."""

        def __call__(self, x):
            calls.append(1)
            import time
            time.sleep(0.0005 * len(calls) ** 0.5)
            return x

    out = single_stream(Drifting(), (torch.randn(1, 3),), budget_s=0.3, warmup=1, stability_tol=0.0)
    assert out["stable"] is False and "did not settle" in out["note"]
    # it stopped at the budget: every timed call is counted, and the rounds it measured are all reported
    assert out["count"] == len(calls) - 1 and len(out["round_medians_ms"]) == out["rounds"] >= 1


def test_server_scenario_finds_a_rate_meeting_the_bound(engine_and_inputs):
    engine, x = engine_and_inputs
    result = motorpool.benchmark(engine, x, batch_sizes=[1], scenarios=["single_stream", "server"],
                                 time_budget_s=0.2, p99_bound_ms=50.0, server_budget_s=3.0, server_max_batch=8)
    s = result.server
    assert s["p99_bound_ms"] == 50.0 and s["trials"]
    passed = [t for t in s["trials"] if t["passed"]]
    if s["max_rate_per_s"] is not None:
        assert s["max_rate_per_s"] == max(t["rate_per_s"] for t in passed)
        best = next(t for t in passed if t["rate_per_s"] == s["max_rate_per_s"])
        assert best["p99_ms"] <= 50.0 and best["rejected"] == 0 and best["errors"] == 0
        assert best["completed"] == best["queries"]
    for t in s["trials"]:
        assert t["completed"] + t["rejected"] + t["errors"] + t["late"] == t["queries"]
        assert t["passed"] == (t["completed"] == t["queries"] and t.get("p99_ms", 1e9) <= 50.0)
    # the search starts from a measurement of one query at a time through the batcher, not a fixed rate
    assert s["trials"][0]["rate_per_s"] == s["start_rate_per_s"] > 0 and "through the batcher" in s["start_source"]


def test_a_server_trial_past_what_can_be_issued_stops_at_its_deadline(engine_and_inputs):
    from motorpool.measuring.scenarios import server_trial

    engine, x = engine_and_inputs
    # 400,000 arrivals in 0.2 s: no Python issuer keeps that schedule, so most are never issued
    t = server_trial(engine, [tuple(v[:1] for v in x)], 2e6, duration_s=0.2, max_batch_size=8, max_delay_ms=1.0)
    assert t["queries"] == 400_000 and t["late"] > t["queries"] / 2
    assert t["completed"] + t["rejected"] + t["errors"] + t["late"] == t["queries"]


def test_unknown_scenario_and_bad_batch_sizes(engine_and_inputs):
    engine, x = engine_and_inputs
    with pytest.raises(ValueError, match="expected some of SingleStream, Offline, Server .* got 'batch'"):
        motorpool.benchmark(engine, x, scenarios=["batch"])
    with pytest.raises(ValueError, match="batch_sizes"):
        motorpool.benchmark(engine, x, batch_sizes=[0])
    with pytest.raises(motorpool.InputError):
        motorpool.benchmark(engine, (torch.randn(2, 31),))


def _suite() -> BenchSuite:
    def ss(p50):
        return {"count": 50, "mean_ms": p50, "min_ms": p50 * 0.9, "max_ms": p50 * 3, "p50_ms": p50,
                "p90_ms": p50 * 1.2, "p99_ms": p50 * 2, "stable": True, "rounds": 3, "throughput_per_s": 1e3 / p50}

    def off(tp):
        return {"calls": 10, "samples": 40, "seconds": 40 / tp, "workers": 1, "throughput_per_s": tp}

    ok = BenchResult("torchscript", "cpu", "fp32", batches=[BatchFigures(1, ss(0.2), off(5000.0)),
                                                             BatchFigures(8, ss(0.9), off(9000.0))],
                     compile_time_s=0.4, load_time_s=0.02, first_call_s=0.01, peak_rss_mb=300.0, artifact_bytes=4096,
                     server={"p99_bound_ms": 10.0, "max_rate_per_s": 1234.0, "max_batch_size": 8,
                             "max_delay_ms": 2.0, "trials": [{}]})
    bad = BenchResult("openvino", "-", "fp32", status="unavailable", reason="openvino is not installed")
    return BenchSuite("zoo:mlp", [ok, bad], {"scenarios": ["single_stream", "offline"], "batch_sizes": [1, 8],
                                             "time_budget_s": 0.5}, {"summary": "test CPU", "fingerprint": "x"})


def _png_ok(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    crc = struct.unpack(">I", data[29:33])[0]
    assert crc == zlib.crc32(data[12:29]), "IHDR checksum"
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND"
    return width, height


def test_outputs_json_markdown_and_png(tmp_path):
    suite = _suite()
    paths = bench_output.write_all(suite, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["model"] == "zoo:mlp" and len(data["results"]) == 2
    assert data["results"][0]["batches"][1]["single_stream"]["p50_ms"] == 0.9
    assert data["results"][1]["status"] == "unavailable"
    md = paths["markdown"].read_text()
    assert md.startswith("# motorpool bench: zoo:mlp")
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 2 + 1  # header, two batch rows, the unavailable backend
    assert "| torchscript | fp32 | 1 | 0.200 |" in md and "openvino is not installed" in md
    assert "1234 queries/s at p99 <= 10 ms" in md
    width, height = _png_ok(paths["chart"])
    assert width > 600 and height > 300


def test_rich_table_renders_every_row():
    from rich.console import Console

    console = Console(record=True, width=220)
    bench_output.print_table(_suite(), console)
    text = console.export_text()
    assert "torchscript" in text and "unavailable" in text and "4.0 KiB" in text


def test_bench_model_rows_for_working_and_failing_backends():
    model, x = zoo.get("mlp").build(batch=2)
    suite = motorpool.bench_model(model, x, backends=["torchscript", "no_such_backend"], batch_sizes=[1, 2],
                                  time_budget_s=0.1, model_name="mlp")
    ts, other = suite.results
    assert ts.status == "ok" and ts.artifact_bytes > 0 and ts.load_time_s is not None and ts.first_call_s > 0
    assert ts.compile_time_s > 0 and ts.peak_rss_mb > 0
    assert [b.batch for b in ts.batches] == [1, 2] and all(b.single_stream and b.offline for b in ts.batches)
    assert other.status == "failed" and "no_such_backend" in other.reason and "torchscript" in other.reason
    assert suite.machine["fingerprint"] and suite.config["batch_sizes"] == [1, 2]
