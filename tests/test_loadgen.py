"""MLPerf LoadGen over a motorpool engine: each scenario runs for real and LoadGen's figures come back."""

import json
import math

import pytest

import motorpool
from motorpool.testing import zoo

pytest.importorskip("mlperf_loadgen", reason='MLPerf LoadGen is not installed: pip install "motorpool[loadgen]"')

from motorpool.measuring import loadgen  # noqa: E402


@pytest.fixture(scope="module")
def engine():
    model, inputs = zoo.get("cnn").build(2)
    return motorpool.compile(model, inputs, backend="eager")


@pytest.fixture(scope="module")
def run(engine, tmp_path_factory):
    return loadgen.run_loadgen(engine, sample_count=64, min_duration_ms=1000, calibrate_seconds=0.2,
                               log_dir=tmp_path_factory.mktemp("loadgen"))


def test_calibration_figures_are_positive(run):
    cal = run["calibration"]
    assert cal.latency_p50_ms > 0 and cal.batch_latency_ms > 0 and cal.throughput > 0
    assert cal.offline_batch == 32  # the cnn engine's batch is dynamic


@pytest.mark.parametrize("scenario", loadgen.SCENARIOS)
def test_each_scenario_reports_loadgens_verdict_and_figures(run, scenario):
    result = run["results"][scenario]
    assert result.scenario == scenario and result.summary["Scenario"] == scenario
    assert result.verdict in ("VALID", "INVALID")
    assert result.valid == (result.verdict == "VALID")
    assert result.errors == 0
    assert math.isfinite(result.samples_per_second) and result.samples_per_second > 0
    for key in ("min", "mean", "p50", "p90", "p99", "max"):
        assert result.latency_ms[key] > 0, key
    assert result.latency_ms["min"] <= result.latency_ms["p50"] <= result.latency_ms["max"]
    assert "Min duration satisfied" in result.checks and "Min queries satisfied" in result.checks
    assert result.settings["min_duration_ms"] == 1000
    assert scenario in result.line() and result.verdict in result.line()


def test_settings_come_from_the_calibration(run):
    cal = run["calibration"]
    ss, off, server = (run["results"][s].settings for s in loadgen.SCENARIOS)
    assert ss["single_stream_expected_latency_ms"] == cal.latency_p50_ms
    assert off["offline_expected_qps"] == pytest.approx(1.5 * cal.throughput)
    # Server's rate is half what one query at a time sustains through the batcher, not the batched throughput
    assert cal.served_per_s > 0 and server["server_measured_per_s"] == cal.served_per_s
    assert server["server_target_qps"] == pytest.approx(0.5 * cal.served_per_s)
    assert server["server_target_latency_ms"] >= 10
    for settings in (ss, off, server):  # every run is bounded: a safety stop a few seconds past min_duration
        assert settings["max_duration_ms"] == 3 * 1000 + 2000


def test_engine_errors_are_counted_not_hung(engine):
    class Broken:
        input_spec = engine.input_spec

        def __call__(self, *inputs):
            raise RuntimeError("boom")

    samples = loadgen.generate_samples(engine, 8)
    cal = loadgen.Calibration(latency_p50_ms=1.0, offline_batch=4, batch_latency_ms=4.0, throughput=1000.0)
    result = loadgen.run_scenario(Broken(), "SingleStream", samples=samples, calibration=cal, min_duration_ms=50,
                                  min_query_count=8)
    assert result.errors >= 8 and "boom" in result.settings["first_error"]


def test_logs_go_to_a_temporary_folder_that_is_removed(engine, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    samples = loadgen.generate_samples(engine, 8)
    cal = loadgen.calibrate(engine, samples, offline_batch=1, seconds=0.05, served=False)
    result = loadgen.run_scenario(engine, "single_stream", samples=samples, calibration=cal, min_duration_ms=50)
    assert result.scenario == "SingleStream" and result.log_dir == "" and result.seconds > 0
    assert list(tmp_path.iterdir()) == []  # nothing in the current directory


def test_scenario_names_take_either_spelling():
    assert loadgen.scenario_names(["single_stream", "OFFLINE", "Server"]) == ["SingleStream", "Offline", "Server"]
    with pytest.raises(ValueError, match="expected some of SingleStream, Offline, Server .* got 'MultiStream'"):
        loadgen.scenario_names(["Offline", "MultiStream"])


def test_summary_parsing_rejects_a_summary_without_a_verdict():
    with pytest.raises(motorpool.MotorpoolError, match="Result is"):
        loadgen.figures_from_summary("Offline", loadgen.parse_summary("Scenario : Offline\nSamples per second : 3"))


def test_unknown_scenario_names_the_valid_ones(engine):
    with pytest.raises(ValueError, match="SingleStream, Offline, Server"):
        loadgen.run_loadgen(engine, scenarios=["MultiStream"])


def test_cli_runs_a_scenario_and_writes_the_figures(tmp_path, capsys):
    from motorpool.cli import main

    out = tmp_path / "lg.json"
    rc = main(["loadgen", "zoo:mlp", "--backend", "eager", "--scenarios", "SingleStream,Server",
               "--min-duration-ms", "300", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    figures = json.loads(out.read_text())
    assert figures["backend"] == "eager" and set(figures["results"]) == {"SingleStream", "Server"}
    for scenario, result in figures["results"].items():
        assert result["verdict"] in ("VALID", "INVALID") and result["samples_per_second"] > 0
        assert f"{scenario:<12} {result['verdict']}" in printed


def test_cli_usage_errors_exit_2_with_one_line(capsys):
    from motorpool.cli import main

    assert main(["loadgen", "zoo:mlp", "--scenarios", "MultiStream"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MultiStream" in err[0] and "SingleStream, Offline, Server" in err[0]
    assert main(["loadgen"]) == 2
    assert "MODEL or --engine" in capsys.readouterr().err
