"""``fastest`` times its candidates the way the caller will run the winner: on the caller's threads (in a child
process too), side by side in the caller's process (the run-off, which always holds the best two and decides),
at the objective's batch; and its report names the figures it decided on."""

import sys
from pathlib import Path

import pytest
import torch

import motorpool
from motorpool.backends.onnxruntime import OnnxRuntimeBackend
from motorpool.backends.torchscript import TorchScriptBackend
from motorpool.selection.measured import ALONE_HERE, ALONE_IN_CHILD, RUNOFF
from motorpool.selection.timing import measure_interleaved
from motorpool.testing import zoo

sys.path.insert(0, str(Path(__file__).parent))
import _select_backends as fakes  # noqa: E402


@pytest.fixture
def fake_registry(fresh_registry):
    for cls in (fakes.LateBackend, fakes.FickleBackend, fakes.SlowBackend):
        fresh_registry.register(cls)
    return fresh_registry


@pytest.fixture
def other_threads():
    """torch on a thread count that is not this process's default (so a child's default cannot pass for it)."""
    saved = torch.get_num_threads()
    threads = 1 if saved != 1 else 2
    torch.set_num_threads(threads)
    yield threads
    torch.set_num_threads(saved)


@pytest.mark.backend("onnxruntime")
def test_candidates_run_on_the_callers_threads_in_a_child_too(fresh_registry, other_threads):
    fresh_registry.register(TorchScriptBackend)
    fresh_registry.register(OnnxRuntimeBackend)
    model, x = zoo.get("mlp").build(batch=2)
    sel = motorpool.select(model, x, candidates=["torchscript", "onnxruntime"], isolate=True, budget_s=0.6,
                           use_cache=False)
    assert {m.backend for m in sel.ranking} == {"torchscript", "onnxruntime"}
    for m in sel.ranking:
        # torch's pool in the child, ONNX Runtime's own pool (sized by fastest), and the same once loaded here
        assert m.isolated and m.figures["measurement"] == ALONE_IN_CHILD
        assert m.figures["threads"] == other_threads, m.backend
        assert m.runoff["threads"] == other_threads, m.backend


def test_the_runoff_holds_the_best_two_and_decides(fake_registry):
    # fickle is 20 ms late when timed apart (4x behind late's 5 ms: outside the run-off margin), prompt in
    # the caller's thread: only the run-off in this process sees that it is the faster one here
    model, x = zoo.get("mlp").build(batch=2)
    sel = motorpool.select(model, x, candidates=["late", "fickle"], budget_s=0.8, use_cache=False)
    by_name = {m.backend: m for m in sel.ranking}
    assert by_name["fickle"].figures["p50_ms"] > by_name["late"].figures["p50_ms"] * 2
    assert sel.winner == "fickle"
    assert all(m.runoff and m.runoff["measurement"] == RUNOFF for m in sel.ranking)
    assert by_name["fickle"].runoff["p50_ms"] < by_name["late"].runoff["p50_ms"]
    assert any(n.startswith(f"decided on the {RUNOFF}") for n in sel.notes)


def test_the_report_names_the_figures_decided_on(fake_registry):
    model, x = zoo.get("mlp").build(batch=2)
    engine = motorpool.compile(model, x, backend="fastest", candidates=["late", "fickle", "slow"],
                               objective="p50@3", budget_s=0.9)
    assert engine.backend == "fickle"
    decided = engine.report.info["selection"]["decided_on"]
    assert decided["objective"] == "p50@3"
    rows = decided["candidates"]
    assert [r["backend"] for r in rows] == ["fickle", "late", "slow"]
    for r in rows:  # side by side here, at the objective's batch, on this process's threads
        assert r["measurement"] == RUNOFF and r["batch"] == 3 and r["threads"] == torch.get_num_threads()
    assert rows[0]["score"] < rows[1]["score"] < rows[2]["score"]
    by_name = {c.backend: c for c in engine.report.candidates}
    assert by_name["fickle"].figures["decided_on"]["p50_ms"] == pytest.approx(rows[0]["score"])
    assert by_name["fickle"].figures["timing"]["measurement"] == ALONE_HERE  # its own timing, also kept
    assert "side by side" in by_name["late"].reason
    fresh = torch.randn(3, 32)
    torch.testing.assert_close(engine(fresh), model(fresh))


class _Clock:
    """A virtual ``time`` for the timing module: calls advance it by what they would cost, so the test does not
    depend on how late a loaded machine wakes a sleeping thread."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def _after_a_spinning_neighbour(monkeypatch, settle_s: float) -> dict:
    """b costs 4 ms a call for the first 45 ms after a last ran (a's worker threads still spinning), 1 ms after;
    each turn lasts 50 ms, and b's always follows a's."""
    from motorpool.selection import timing

    clock = _Clock()
    monkeypatch.setattr(timing, "time", clock)
    last_a = [0.0]

    def a():
        clock.now += 0.0001
        last_a[0] = clock.now

    def b():
        clock.now += 0.004 if clock.now - last_a[0] < 0.045 else 0.001

    return measure_interleaved({"a": a, "b": b}, budget_s=0.3, rounds=3, settle=1, settle_s=settle_s,
                               shuffle=False)["b"]


def test_interleaved_timing_discards_the_settling_time_of_each_turn(monkeypatch):
    assert _after_a_spinning_neighbour(monkeypatch, settle_s=0.048)["p50_ms"] == pytest.approx(1.0)
    # the same, counting from the first call: the neighbour's spin is charged to b
    assert _after_a_spinning_neighbour(monkeypatch, settle_s=0.0)["p50_ms"] == pytest.approx(4.0)
