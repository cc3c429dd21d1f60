"""scripts/ci_summary.py: a JUnit report of the backend suite becomes a backend x device table."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ci_summary.py"

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="7">
  <testcase classname="tests.test_backends.TestBackends" name="test_compile_and_run[mlp-eager-cpu]"/>
  <testcase classname="tests.test_backends.TestBackends" name="test_dynamic_batch[mlp-eager-cpu]"/>
  <testcase classname="tests.test_backends.TestBackends" name="test_compile_and_run[mlp-eager-cuda]">
    <skipped type="pytest.skip" message="eager sees no cuda device here (it sees cpu)"/></testcase>
  <testcase classname="tests.test_backends.TestBackends" name="test_declared_precisions[cnn-int8-torch_compile-cpu]">
    <failure message="AssertionError: does not match eager PyTorch at int8">trace</failure></testcase>
  <testcase classname="tests.test_backends.TestBackends" name="test_availability_is_well_formed[tensorrt]">
    <skipped type="pytest.skip" message="tensorrt is not available: torch-tensorrt is not installed"/></testcase>
  <testcase classname="tests.test_conformance.TestIree" name="test_dynamic_shapes[iree-cpu]">
    <skipped type="pytest.xfail" message="notyet (not yet supported by the runtime): IREE miscompiles"/></testcase>
  <testcase classname="tests.test_meta" name="test_there_are_hooks"/>
</testsuite></testsuites>
"""


def test_table_counts_cells_and_lists_reasons_and_failures(tmp_path):
    (tmp_path / "junit.xml").write_text(JUNIT)
    doctor = {"hardware": {"cpu": {"model": "Test CPU", "cores": 2}, "hardware_class": "cpu"},
              "backends": [{"name": n} for n in ("eager", "torch_compile", "tensorrt", "iree")],
              "skipped_plugins": []}
    (tmp_path / "doctor.json").write_text(json.dumps(doctor))
    out = tmp_path / "summary.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "junit.xml"), str(tmp_path / "missing.xml"),
                           "--doctor", str(tmp_path / "doctor.json"), "--title", "Linux CPU", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "## Linux CPU" in text and "Test CPU (2 cores)" in text
    assert "| `eager-cpu` | 2 | 0 | 0 | 0 | passed |" in text
    assert "| `eager-cuda` | 0 | 1 | 0 | 0 | skipped |" in text
    assert "| `torch_compile-cpu` | 0 | 0 | 0 | 1 | FAILED |" in text
    assert "| `tensorrt` | 0 | 1 | 0 | 0 | skipped |" in text
    assert "| `iree-cpu` | 0 | 0 | 1 | 0 | skipped |" in text
    assert "test_declared_precisions[cnn-int8-torch_compile-cpu]: AssertionError" in text
    assert "`eager-cuda` (1): eager sees no cuda device here (it sees cpu)" in text
    assert "`iree-cpu` (1): notyet (not yet supported by the runtime): IREE miscompiles" in text
    assert "test_there_are_hooks" not in text  # not a backend cell
    assert "No test report at" in text and "missing.xml" in text


def test_without_doctor_cells_are_found_by_their_device(tmp_path):
    (tmp_path / "junit.xml").write_text(JUNIT)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "junit.xml")], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "| `torch_compile-cpu` |" in proc.stdout and "| `eager-cuda` |" in proc.stdout
