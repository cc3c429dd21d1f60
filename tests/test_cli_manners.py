"""The command line's manners: one-line errors on stderr and exit codes, flags named as flags, defaults in
--help, JSON that is only JSON, an 80-column bench table, unsettled figures marked, results written only
when something was measured, progress on stderr, and tables where users print things."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import motorpool
from motorpool.cli import build_parser, main
from motorpool.cli._output import cli_words, cli_warnings
from motorpool.engine.report import Candidate, Report
from motorpool.measuring.benchmark import BatchFigures, BenchResult, BenchSuite
from motorpool.measuring.technique_report import OptimizeReport, Row
from motorpool.selection.measured import Measured, Selection

MOTORPOOL_FILE = str(Path(motorpool.__file__).parent / "selection" / "dispatch.py")


def _cli(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "motorpool.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


# -- 1. errors, warnings, exit codes, flags, --help -----------------------------------------------------------


@pytest.mark.parametrize("argv, flag", [
    (["compile", "zoo:mlp", "-o", "x", "--precision", "int4"], "--precision: invalid choice: 'int4'"),
    (["profile", "zoo:mlp", "--precision", "auto"], "--precision: invalid choice: 'auto'"),
    (["bench", "zoo:mlp", "--precisions", "fp32,int4"], "--precisions: expected comma-separated precisions"),
    (["bench", "zoo:mlp", "--shape", "input0"], "--shape: expected NAME=D0,D1"),
    (["bench", "zoo:mlp", "--threads", "0"], "--threads: expected a positive integer"),
])
def test_bad_flag_values_are_usage_errors_without_traceback(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"motorpool {argv[0]}: error: argument {flag}" in captured.err
    assert "Traceback" not in captured.err


def test_runtime_errors_are_one_line_on_stderr_and_name_the_flag(tmp_path, capsys):
    out = tmp_path / "engine"
    assert main(["compile", "zoo:mlp", "-o", str(out), "--backend", "eager"]) == 0
    capsys.readouterr()
    assert main(["compile", "zoo:mlp", "-o", str(out), "--backend", "eager"]) == 1
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("motorpool compile: error: ") and "already exists" in line
    assert "pass --overwrite to replace it" in line and "overwrite=True" not in line
    assert captured.out == ""
    # a MODEL that cannot be loaded and an unknown backend are usage errors (2), also one line
    assert main(["compile", "zoo:nope", "-o", str(tmp_path / "x")]) == 2
    assert main(["bench", "zoo:mlp", "--backends", "no_such_backend"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("motorpool compile: error: MODEL 'zoo:nope': no zoo model")
    assert lines[1].startswith("motorpool bench: error: unknown backend 'no_such_backend'. Choose one of:")
    assert len(lines) == 2


def test_python_arguments_become_flags():
    parser = build_parser()
    compile_ = parser._subparsers._group_actions[0].choices["compile"]
    assert cli_words("x exists; pass overwrite=True to replace it", compile_) == "x exists; pass --overwrite to replace it"
    assert cli_words("or verify=False", compile_) == "or --no-verify"
    assert cli_words("use precision='fp16' here", compile_) == "use --precision fp16 here"
    assert cli_words("max_abs_err=0.1 stays", compile_) == "max_abs_err=0.1 stays"


def test_warnings_print_one_line_once_and_library_warnings_only_with_verbose(capsys):
    with cli_warnings(verbose=False):
        for _ in range(3):
            warnings.warn_explicit("the batch was\n  padded", UserWarning, MOTORPOOL_FILE, 10)
        warnings.warn_explicit("LeafSpec is deprecated", FutureWarning, torch.__file__, 1)
        # a motorpool warning class is motorpool's, wherever its stack level points
        warnings.warn_explicit("plugin 'x' skipped", motorpool.PluginWarning, "/somewhere/user.py", 3)
    err = capsys.readouterr().err
    assert err == "motorpool: warning: the batch was padded\nmotorpool: warning: plugin 'x' skipped\n"
    with cli_warnings(verbose=True):
        warnings.warn_explicit("LeafSpec is deprecated", FutureWarning, torch.__file__, 1)
    err = capsys.readouterr().err
    assert err.startswith("motorpool: warning: FutureWarning from __init__.py:1: LeafSpec is deprecated")


def test_help_shows_every_default():
    parser = build_parser()

    def walk(p, name):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from walk(sub, f"{name} {sub_name}")
            elif (action.option_strings and action.default not in (None, argparse.SUPPRESS)
                  and not isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction,
                                              argparse._VersionAction))):
                yield name, p, action

    checked = 0
    for name, p, action in walk(parser, "motorpool"):
        text = " ".join(p.format_help().split())
        assert "default" in (action.help or ""), (name, action.option_strings)
        d = action.default
        shown = {",".join(map(str, d)) if isinstance(d, list) else str(d)} | ({f"{d:g}"} if isinstance(d, float) else set())
        assert any(f"default: {x}" in text or f"default {x}" in text for x in shown), (name, action.option_strings)
        checked += 1
    assert checked > 20
    # an option without a value by default says what happens then
    for name, _, action in walk_none(parser, "motorpool"):
        assert "default" in (action.help or "").lower(), (name, action.option_strings)


def walk_none(p, name):
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from walk_none(sub, f"{name} {sub_name}")
        elif action.option_strings and action.default is None and not action.required:
            yield name, p, action


def test_a_closed_stdout_ends_quietly(tmp_path):
    env = {**os.environ, "MOTORPOOL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "motorpool.cli", "cache", "ls"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # like `| head -0`: the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "BrokenPipe" not in err and "Traceback" not in err and "Exception ignored" not in err, err


# -- 2. --json is JSON only ---------------------------------------------------------------------------------------


def test_doctor_json_and_bench_json_are_only_json(tmp_path, capsys):
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {b["name"] for b in data["backends"]} >= {"eager", "torchscript"}
    assert main(["bench", "zoo:mlp", "--backends", "torchscript", "--batch-sizes", "1", "--time-budget", "0.05",
                 "--no-load", "--out", str(tmp_path / "b"), "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    suite = json.loads(captured.out)
    assert suite["results"][0]["status"] == "ok" and suite["results"][0]["batches"][0]["single_stream"]
    assert "wrote json:" in captured.err


def test_optimize_json_has_no_library_progress_bars_on_stdout():
    pytest.importorskip("nncf", reason="the quantize extra: pip install 'motorpool[quantize,openvino]'")
    pytest.importorskip("openvino", reason="the openvino extra")
    r = _cli("optimize", "zoo:mlp", "--quick", "--techniques", "int8 static openvino", "--budget", "0.1", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)  # the whole of stdout: NNCF's bars would make this fail
    assert any(row["technique"] == "int8 static openvino" for row in data["rows"])
    assert "Statistics collection" not in r.stdout + r.stderr  # NNCF's bar: only with -v
    assert "Traceback" not in r.stderr


# -- 3. the bench table, flags, unsettled figures, what is written ---------------------------------------------------


def _ss(p50, stable=True):
    return {"p50_ms": p50, "p90_ms": p50 * 1.2, "p99_ms": p50 * 2, "stable": stable, "rounds": 3,
            "throughput_per_s": 1e3 / p50, "note": "" if stable else "did not settle"}


def _suite() -> BenchSuite:
    ok = BenchResult("torch_compile", "cpu", "fp32",
                     batches=[BatchFigures(1, _ss(0.2), {"throughput_per_s": 5000.0}),
                              BatchFigures(32, _ss(123.456, stable=False), {"throughput_per_s": 123456.0})],
                     compile_time_s=12.5, load_time_s=0.5, first_call_s=0.01, peak_rss_mb=1234.0,
                     artifact_bytes=123456789,
                     server={"p99_bound_ms": 10.0, "max_rate_per_s": 4321.0, "max_batch_size": 32,
                             "max_delay_ms": 2.0, "trials": [{}]})
    bad = BenchResult("tensorrt", "-", "int8", status="unavailable", reason="torch-tensorrt is not installed; "
                      "fix: pip install \"motorpool[tensorrt]\" " * 3)
    return BenchSuite("zoo:encoder", [ok, bad], {"scenarios": ["single_stream", "offline", "server"]},
                      {"summary": "Intel(R) Xeon(R) Processor (2 cores; amx_bf16 avx512f)", "fingerprint": "x"})


def test_bench_table_fits_80_columns_and_numbers_never_break():
    from rich.console import Console

    from motorpool.measuring import bench_output

    console = Console(width=80, record=True)
    bench_output.print_table(_suite(), console)
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    for figure in ("0.200", "~123.5", "~246.9", "5000", "123456", "4321", "12.50", "117.7 MiB", "1234"):
        assert any(figure in line for line in lines), (figure, text)  # each whole on one line
    assert "did not settle" in text and "tensorrt int8: unavailable: torch-tensorrt is not installed" in text
    assert "4321 queries/s at p99 <= 10 ms" in text
    # a priced run's cost column fits too, each figure whole
    from motorpool.measuring.cost import annotate

    console = Console(width=80, record=True)
    bench_output.print_table(annotate(_suite(), 0.72), console)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    row = next(line for line in lines if line.strip().startswith("32 ") or " 32 " in line and "~123.5" in line)
    assert "~246.9" in row and "123456" in row and "1.62e-06" in row, row


def test_server_rate_is_in_the_table_json_markdown_and_chart(tmp_path):
    from motorpool.measuring import bench_output

    paths = bench_output.write_all(_suite(), tmp_path)
    assert json.loads(paths["json"].read_text())["results"][0]["server"]["max_rate_per_s"] == 4321.0
    md = paths["markdown"].read_text()
    assert "| server /s |" in md and "| 5000 | 4321 | 12.50 |" in md
    assert paths["chart"].read_bytes()[:4] == b"\x89PNG"


def test_bench_cli_threads_device_shape_and_80_columns(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = tmp_path / "b"
    assert main(["bench", "zoo:mlp", "--backends", "torchscript,onnxruntime", "--batch-sizes", "1,2",
                 "--time-budget", "0.05", "--threads", "1", "--device", "cpu", "--shape", "input0=3,32", "--no-load",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert max(len(line) for line in printed.splitlines()) <= 80, printed
    assert "server/s" in printed and "offline/s" in printed
    data = json.loads((out / "bench.json").read_text())
    assert data["config"]["threads"] == 1 and data["config"]["device"] == "cpu"
    assert data["config"]["input_shapes"] == [[3, 32]]
    assert [r["status"] for r in data["results"]] == ["ok", "ok"]  # each backend gets the thread option it has
    assert all(r["device"] == "cpu" for r in data["results"])
    # an input the model does not have is a usage error naming the inputs it has
    assert main(["bench", "zoo:mlp", "--backends", "torchscript", "--shape", "mask=2,3", "--no-progress"]) == 2
    assert "the model has no input 'mask'; its inputs are input0 [" in capsys.readouterr().err


def test_unsettled_figures_are_marked_not_reported():
    text = str(_suite())
    assert "~123.456" in text and "did not settle" in text and " 0.200" in text
    rows = [Row("eager fp32 (baseline)", "eager", "fp32", "ok", p50_ms=1.0, speedup=1.0, stable=True),
            Row("inference mode", "eager", "fp32", "ok", p50_ms=0.0095, speedup=105.56, stable=False)]
    table = OptimizeReport(rows, batch=1, metric="cosine", max_drop=0.01).table()
    line = next(x for x in table.splitlines() if x.startswith("inference mode"))
    assert "~105.56x" in line and "did not settle" in line
    assert " 1.00x" in next(x for x in table.splitlines() if x.startswith("eager fp32"))


def test_a_failed_bench_keeps_earlier_results(tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / "bench.json").write_text('{"earlier": true}')
    assert main(["bench", "zoo:mlp", "--backends", "tensorrt", "--batch-sizes", "1", "--out", str(out),
                 "--no-progress"]) == 1
    assert json.loads((out / "bench.json").read_text()) == {"earlier": True}
    assert sorted(p.name for p in out.iterdir()) == ["bench.json"]
    err = capsys.readouterr().err
    assert f"motorpool bench: error: no engine was measured, so nothing was written to {out}" in err


def test_bench_without_matplotlib_writes_the_rest(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    out = tmp_path / "b"
    assert main(["bench", "zoo:mlp", "--backends", "torchscript", "--batch-sizes", "1", "--time-budget", "0.05",
                 "--no-load", "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md"]
    assert json.loads((out / "bench.json").read_text())["results"][0]["status"] == "ok"
    err = capsys.readouterr().err
    assert 'motorpool: warning: no bench.png: the PNG chart needs matplotlib: pip install "motorpool[bench]"' in err


# -- 4. progress, and the reports' figures ------------------------------------------------------------------------


def test_doctor_and_demo_show_progress_on_stderr_only_when_asked(capsys):
    assert main(["doctor"]) == 0
    quiet = capsys.readouterr()
    assert "probed" not in quiet.err and "eager" in quiet.out
    assert main(["--progress", "doctor"]) == 0
    shown = capsys.readouterr()
    n = len(motorpool.list_backends())
    assert f"motorpool doctor: [{n}/{n}] probed" in shown.err and "probed" not in shown.out
    assert main(["--progress", "demo", "--model", "mlp", "--seconds", "0.02", "--backends", "eager"]) == 0
    shown = capsys.readouterr()
    assert "motorpool demo: [1/1] eager: timing" in shown.err and "eager " in shown.out


def test_precision_auto_report_prints_every_cells_figures(capsys, tmp_path):
    assert main(["compile", "zoo:mlp", "-o", str(tmp_path / "e"), "--backend", "eager", "--precision", "auto",
                 "--no-cache"]) == 0
    out = capsys.readouterr().out
    cells = [line for line in out.splitlines() if line.strip().startswith("eager/")]
    assert len(cells) == 4, out  # fp32, fp16, bf16, int8
    for line in cells:
        if " skipped " in line or " rejected " in line:
            continue
        assert " ms, " in line and "x vs fp32" in line and "gate top1_agreement " in line, line


def test_report_and_selection_quote_the_runoff_that_chose():
    first = {"p50_ms": 1.0, "p99_ms": 2.0, "throughput_per_s": 1000.0, "batch": 1}
    sel = Selection("p50", "fp32", "cpu", "fp",
                    ranking=[Measured("onnxruntime", 0.5, "cpu", dict(first, p50_ms=0.9),
                                      runoff=dict(first, p50_ms=0.5)),
                             Measured("openvino", 0.7, "cpu", dict(first, p50_ms=0.8),
                                      runoff=dict(first, p50_ms=0.7))])
    chosen, other = sel.candidates()
    assert other.reason == ("slower than onnxruntime side by side: p50 0.700 ms at batch 1 vs p50 0.500 ms at "
                            "batch 1")
    report = Report("onnxruntime", "cpu", "fp32", candidates=[
        chosen, other, Candidate("int8 cell", "verified", figures={
            "p50_ms": 0.25, "speedup_vs_best_fp32": 2.0,
            "gate": {"metric": "cosine", "score": 0.9991, "drop": 0.0009, "max_drop": 0.01, "passed": True}})])
    text = str(report)
    assert "onnxruntime    chosen    p50 0.500 ms (run-off)" in text
    assert "int8 cell      verified  p50 0.250 ms, 2.00x vs fp32, gate cosine 0.9991 (drop 0.0009 <= 0.01)" in text


# -- 5. tables where users print things -----------------------------------------------------------------------------


def test_list_backends_and_bench_results_print_as_tables():
    rows = motorpool.list_backends()
    assert isinstance(rows, list) and rows == list(rows)
    text = str(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["backend", "status", "version", "devices", "notes"]
    assert [line.split()[0] for line in lines[1:]] == [r.name for r in rows]
    eager = next(line for line in lines if line.startswith("eager "))
    assert "available" in eager and torch.__version__ in eager
    suite_lines = str(_suite()).splitlines()
    assert suite_lines[1].split() == ["backend", "prec", "batch", "p50", "ms", "p99", "ms", "offline/s",
                                      "server/s", "compile", "s"]
    assert suite_lines[2].split() == ["torch_compile", "fp32", "1", "0.200", "0.400", "5000", "4321", "12.50"]
    assert str(_suite().results[0]).splitlines()[0] == "torch_compile fp32 on cpu"


NOISY = '''
import os, sys, warnings
import torch


class Noisy(torch.nn.Module):
    def forward(self, x):
        print("graph():  %x : [num_users=1] = placeholder[target=x]")  # an FX graph dump on stdout
        sys.stdout.flush()
        os.write(1, b"native banner on fd 1\\n")
        os.write(2, b"USDT probe native line on fd 2\\n")
        warnings.warn("LeafSpec is deprecated", FutureWarning)
        return x * 2


def build():
    return Noisy(), (torch.randn(2, 3),)
'''


def test_library_noise_stays_out_unless_verbose(tmp_path):
    (tmp_path / "noisy_model.py").write_text(NOISY)
    ref = f"{tmp_path / 'noisy_model.py'}:build"
    quiet = _cli("compile", ref, "-o", str(tmp_path / "e1"), "--backend", "eager")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.startswith("backend=eager") and "saved" in quiet.stdout
    for noise in ("graph():", "native banner", "USDT", "LeafSpec"):
        assert noise not in quiet.stdout + quiet.stderr, (noise, quiet.stdout, quiet.stderr)
    loud = _cli("-v", "compile", ref, "-o", str(tmp_path / "e2"), "--backend", "eager")
    assert loud.returncode == 0, loud.stderr
    assert loud.stdout.startswith("backend=eager")  # still only motorpool's output on stdout
    for noise in ("graph():", "native banner", "USDT probe", "LeafSpec is deprecated"):
        assert noise in loud.stderr, (noise, loud.stderr)
    assert loud.stderr.count("LeafSpec is deprecated") == 1  # each warning once


def test_a_torch_export_pt2_file_compiles_and_benches(tmp_path, capsys):
    from motorpool.testing import zoo

    model, x = zoo.get("mlp").build(batch=2)
    torch.export.save(torch.export.export(model.eval(), x), tmp_path / "mlp.pt2")
    assert main(["compile", str(tmp_path / "mlp.pt2"), "-o", str(tmp_path / "e"), "--backend", "onnxruntime"]) == 0
    assert "saved" in capsys.readouterr().out
    assert main(["bench", str(tmp_path / "mlp.pt2"), "--backends", "torchscript", "--batch-sizes", "2",
                 "--time-budget", "0.05", "--no-load", "--out", str(tmp_path / "b"), "--json", "--no-progress"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["status"] == "ok" and row["batches"][0]["single_stream"]["p50_ms"] > 0
