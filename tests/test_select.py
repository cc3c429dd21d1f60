"""Choosing a backend: the declared ranking ("auto"), measuring ("fastest", motorpool.select), the decision
cache, objectives, and candidates that crash, hang or compute the wrong numbers."""

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import motorpool
from motorpool import Availability, Backend, Capabilities
from motorpool.backends.eager import EagerBackend
from motorpool.backends.torchscript import TorchScriptBackend
from motorpool.plugin.registry import safe_availability
from motorpool.engine.fingerprint import model_fingerprint
from motorpool.selection.decisions import Decision, DecisionCache, decision_key
from motorpool.selection.progress import Progress
from motorpool.selection.ranking import rank
from motorpool.plugin.priority import Situation
from motorpool.plugin.spec import InputSpec
from motorpool.testing import zoo
from motorpool.selection.timing import Objective, measure

# fastest's child processes import the fake backends by module path: make that path importable everywhere
sys.path.insert(0, str(Path(__file__).parent))
import _select_backends as fakes  # noqa: E402


def _fake(name, *, priority, precisions=("fp32",), dynamic_batch=True, dynamic_shapes=False, available=True):
    class Fake(Backend):
        capabilities = Capabilities(precisions=frozenset(precisions), priority=priority,
                                    dynamic_batch=dynamic_batch, dynamic_shapes=dynamic_shapes)

        def availability(self):
            if available:
                return Availability.ok(version="1", devices=["cpu"])
            return Availability.not_installed(f"{name}-runtime", name)

        def compile(self, model, example_inputs, options):
            raise NotImplementedError

        def load(self, directory, metadata, options):
            raise NotImplementedError

    Fake.name = name
    Fake.__name__ = f"Fake_{name}"
    return Fake


# -- auto: the declared ranking ----------------------------------------------------------------------

@pytest.mark.parametrize("situation, expected", [
    (Situation("nvidia"), ["gpu_first", "portable", "avx_attention"]),
    (Situation("cpu", frozenset({"avx512f"}), frozenset({"attention", "fp32"})),
     ["avx_attention", "portable", "gpu_first"]),
    (Situation("cpu", frozenset({"avx2"}), frozenset({"attention", "fp32"})), ["portable", "gpu_first", "avx_attention"]),
    (Situation("cpu", frozenset({"avx512f"}), frozenset({"convolution", "fp32"})),
     ["portable", "gpu_first", "avx_attention"]),
    (Situation("apple"), ["portable", "gpu_first", "avx_attention"]),
])
def test_ranking_follows_each_backends_declared_priority(fresh_registry, situation, expected):
    fresh_registry.register(_fake("gpu_first", priority={"nvidia": 1, "*": 50}))
    fresh_registry.register(_fake("avx_attention", priority={"cpu+avx512f/attention": 1, "*": 60}))
    fresh_registry.register(_fake("portable", priority={"*": 20}))
    ranking = rank("fp32", situation=situation)
    assert ranking.names == expected and ranking.hardware_class == situation.hardware
    first = ranking.kept[0]
    assert first.rule in fresh_registry.get(first.name).capabilities.priority


def test_builtin_backends_declare_the_intended_orders():
    reg = motorpool.get_registry()
    present = set(reg.names())

    def order(hardware, features=(), traits=()):
        situation = Situation(hardware, frozenset(features), frozenset(traits) | {"fp32"})
        return rank("fp32", situation=situation, check_availability=False, names=sorted(present)).names

    def assert_before(names, sequence):
        got = [n for n in names if n in sequence]
        assert got == [n for n in sequence if n in present], names

    avx512 = ("avx2", "avx512f", "avx512_vnni")
    assert_before(order("cpu", avx512, ["attention"]), ["openvino", "onnxruntime", "torch_compile", "torchscript",
                                                         "eager"])
    for traits in (["convolution"], ["attention", "dynamic"]):
        assert_before(order("cpu", avx512, traits), ["onnxruntime", "openvino", "torch_compile", "eager"])
    assert_before(order("cpu", avx512, ["attention", "causal"]), ["onnxruntime", "torch_compile", "openvino", "eager"])
    assert_before(order("nvidia"), ["tensorrt", "torch_compile", "onnxruntime", "eager"])
    assert_before(order("apple"), ["coreml", "eager"])
    if "coreml" in present:
        assert order("apple")[0] == "coreml"


def test_ranking_drops_what_cannot_serve_the_model_with_reasons(fresh_registry):
    fresh_registry.register(_fake("fp32_only", priority={"*": 1}))
    fresh_registry.register(_fake("halves", priority={"*": 2}, precisions=("fp32", "fp16")))
    fresh_registry.register(_fake("static", priority={"*": 3}, precisions=("fp16",), dynamic_batch=False))
    fresh_registry.register(_fake("absent", priority={"*": 0}, precisions=("fp16",), available=False))
    dynamic = InputSpec.from_examples([torch.randn(2, 4)])
    ranking = rank("fp16", spec=dynamic, hardware_class="cpu")
    assert ranking.names == ["halves"]
    reasons = {r.name: r.reason for r in ranking.dropped}
    assert "does not support precision 'fp16'" in reasons["fp32_only"]
    assert "static batch" in reasons["static"] and "dynamic_batch=False" in reasons["static"]
    assert "absent-runtime is not installed" in reasons["absent"] and 'pip install "motorpool[absent]"' in \
        reasons["absent"]
    static = InputSpec.from_examples([torch.randn(2, 4)], dynamic_batch=False)
    assert rank("fp16", spec=static, hardware_class="cpu").names == ["halves", "static"]
    seq = InputSpec.from_examples([torch.randn(2, 4)], dynamic_dims={"input0": {1: "seq"}})
    dropped = {r.name: r.reason for r in rank("fp16", spec=seq, hardware_class="cpu").dropped}
    assert "seq" in dropped["halves"]


# -- the decision cache --------------------------------------------------------------------------------

def _decision(key, winner="torchscript", versions=None):
    return Decision(key, winner, "p50", ranking=[{"backend": winner, "score": 1.0, "figures": {}}],
                    versions=versions or {winner: {"torch": "2.13"}})


def test_decision_cache_hit_miss_stale_and_corrupt(tmp_path):
    cache = DecisionCache(tmp_path)
    assert cache.get("nope") is None
    path = cache.put(_decision("k1"))
    assert path.parent == tmp_path and not list(tmp_path.glob(".*tmp*"))  # atomic: no temp file left
    assert cache.get("k1", {"torchscript": {"torch": "2.13"}}).winner == "torchscript"
    assert cache.get("k1", {"torchscript": {"torch": "2.14"}}) is None  # a backend was upgraded: stale
    assert cache.get("k1", {}) is None  # the measured backend is gone
    path.write_text("{ not json")
    with pytest.warns(UserWarning, match="corrupt decision cache file"):
        assert cache.get("k1") is None
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.warns(UserWarning, match="corrupt"):
        assert cache.get("k1") is None
    cache.put(_decision("k1", winner="eager", versions={"eager": {"torch": "2.13"}}))  # replaces the bad one
    assert cache.get("k1").winner == "eager"


def test_decision_key_separates_what_changes_the_answer():
    model, (x,) = zoo.get("mlp").build(batch=4)
    spec = InputSpec.from_examples([x])
    fp = model_fingerprint(model)
    base = dict(model_fp=fp, spec=spec, precision="fp32", device="auto", objective="p50", hardware_fp="hw1")
    key = decision_key(**base)
    assert key == decision_key(**base)
    assert key != decision_key(**{**base, "precision": "fp16"})
    assert key != decision_key(**{**base, "objective": "p99"})
    assert key != decision_key(**{**base, "hardware_fp": "hw2"})
    assert key == decision_key(**base, threads=torch.get_num_threads())
    assert key != decision_key(**base, threads=torch.get_num_threads() + 1)
    assert key != decision_key(**{**base, "spec": InputSpec.from_examples([torch.randn(8, 32)])})
    with torch.no_grad():
        model.net[0].weight[0, 0] += 1.0
    assert model_fingerprint(model) != fp  # same class, other weights: another model


# -- objectives and timing -----------------------------------------------------------------------------

def test_objectives_parse_and_choose():
    assert Objective.parse("p50") == Objective("p50") and str(Objective.parse("throughput@32")) == "throughput@32"
    with pytest.raises(ValueError, match="not one of: p50, p90, p99"):
        Objective.parse("fastest")
    steady = {"p50_ms": 2.0, "p99_ms": 2.2, "throughput_per_s": 900.0, "batch": 4}
    spiky = {"p50_ms": 1.5, "p99_ms": 9.0, "throughput_per_s": 1000.0, "batch": 4}
    pick = {obj: min({"steady": steady, "spiky": spiky}.items(), key=lambda kv: Objective.parse(obj).score(kv[1]))[0]
            for obj in ("p50", "p99", "throughput")}
    assert pick == {"p50": "spiky", "p99": "steady", "throughput": "spiky"}


def test_measure_figures_are_consistent():
    calls = []
    figures = measure(lambda: calls.append(torch.randn(64, 64) @ torch.randn(64, 64)), budget_s=0.2, batch=3)
    assert figures["reps"] >= 10 and figures["warmup"] >= 3 and len(calls) == figures["reps"] + figures["warmup"]
    assert 0 < figures["min_ms"] <= figures["p50_ms"] <= figures["p90_ms"] <= figures["p99_ms"]
    assert figures["throughput_per_s"] == pytest.approx(3 / (figures["mean_ms"] / 1e3))


# -- fastest and select -----------------------------------------------------------------------------------

@pytest.fixture
def fake_registry(fresh_registry):
    for cls in (EagerBackend, TorchScriptBackend, fakes.CrashyBackend, fakes.HangyBackend, fakes.WrongBackend,
                fakes.SlowBackend):
        fresh_registry.register(cls)
    return fresh_registry


def test_select_drops_wrong_and_ranks_by_objective(fake_registry):
    model, x = zoo.get("tuple_out").build(batch=4)
    sel = motorpool.select(model, x, candidates=["eager", "slow", "wrong"], budget_s=0.6, use_cache=False)
    assert [m.backend for m in sel.ranking] == ["eager", "slow"]  # slow is 20 ms late on every call
    assert sel.ranking[0].figures["p50_ms"] < sel.ranking[1].figures["p50_ms"]
    assert sel.ranking[0].verification["passed"] and sel.ranking[0].verification["checks"] >= 2
    dropped = {d.backend: d for d in sel.dropped}
    assert dropped["wrong"].status == "rejected" and "does not match eager PyTorch" in dropped["wrong"].reason
    thr = motorpool.select(model, x, candidates=["eager", "slow"], objective="throughput@16", budget_s=0.4,
                           use_cache=False)
    assert thr.winner == "eager" and thr.ranking[0].figures["batch"] == 16 and thr.objective == "throughput@16"
    assert "eager" in str(sel) and "wrong" in str(sel)


def test_crashing_and_hanging_children_are_dropped_with_reasons(fake_registry):
    model, x = zoo.get("mlp").build(batch=2)
    sel = motorpool.select(model, x, candidates=["eager", "crashy", "hangy"], timeout_s=25, budget_s=0.3,
                           use_cache=False)
    assert sel.winner == "eager"
    dropped = {d.backend: d.reason for d in sel.dropped}
    assert dropped["crashy"].startswith("crashed") and "SIGABRT" in dropped["crashy"]
    assert dropped["hangy"].startswith("hung") and "killed" in dropped["hangy"]


def test_a_hang_in_process_is_abandoned(fake_registry):
    model, x = zoo.get("mlp").build(batch=2)
    fakes.RELEASE.clear()
    try:
        sel = motorpool.select(model, x, candidates=["eager", "hangy"], isolate=False, timeout_s=1.0, budget_s=0.2,
                               use_cache=False)
    finally:
        fakes.RELEASE.set()  # let the abandoned thread finish
    assert sel.winner == "eager"
    assert "hung" in {d.backend: d.reason for d in sel.dropped}["hangy"]


def test_no_candidate_left_raises_with_every_reason(fake_registry):
    model, x = zoo.get("mlp").build(batch=2)
    with pytest.raises(motorpool.CompileError, match=r"wrong: .*does not match") as info:
        motorpool.select(model, x, candidates=["wrong"], use_cache=False)
    assert "wrong" in info.value.reasons


def test_child_gets_a_model_whose_class_it_cannot_import(fake_registry):
    class Local(torch.nn.Module):  # defined in a function: a child cannot import it, so it gets an export
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(6, 3)

        def forward(self, x):
            return torch.tanh(self.fc(x))

    model = Local().eval()
    sel = motorpool.select(model, torch.randn(2, 6), candidates=["torchscript"], isolate=True, budget_s=0.3,
                           use_cache=False)
    assert sel.winner == "torchscript" and sel.ranking[0].isolated
    assert any("torch.export" in n for n in sel.notes)


@pytest.fixture(scope="module")
def real_candidates():
    names = ["eager", "torchscript"]
    reg = motorpool.get_registry()
    if "onnxruntime" in reg.names() and safe_availability(reg.get("onnxruntime")).available:
        names.append("onnxruntime")
    return names


def test_fastest_returns_a_verified_engine_and_auto_reuses_the_decision(real_candidates):
    model, x = zoo.get("dict_out").build(batch=4)
    engine = motorpool.compile(model, x, backend="fastest", candidates=real_candidates, budget_s=1.5)
    report = engine.report
    assert engine.backend in real_candidates and report.verification["passed"]
    statuses = {c.backend: c.status for c in report.candidates}
    assert statuses[engine.backend] == "chosen" and set(statuses) == set(real_candidates)
    for c in report.candidates:
        if c.status in ("chosen", "verified"):
            assert c.figures["timing"]["p50_ms"] > 0 and c.figures["verification"]["passed"]
        else:
            assert c.reason
    fresh = torch.randn(5, 12)
    got, want = engine(fresh), model(fresh)
    torch.testing.assert_close(got["logits"], want["logits"], rtol=1e-4, atol=1e-4)
    assert report.info["selection"]["mode"] == "fastest" and not report.info["selection"]["from_cache"]

    auto = motorpool.compile(model, x, backend="auto", candidates=real_candidates)
    assert auto.backend == engine.backend
    assert auto.report.info["selection"]["source"] == "decision cache"
    again = motorpool.compile(model, x, backend="fastest", candidates=real_candidates, budget_s=1.5)
    assert again.backend == engine.backend and again.report.info["selection"]["from_cache"]
    sel = motorpool.select(model, x, candidates=real_candidates)
    assert sel.from_cache and sel.winner == engine.backend


# -- progress ------------------------------------------------------------------------------------------------

def test_progress_is_quiet_off_a_terminal_and_says_each_stage_on_one(capsys):
    quiet = Progress(2)  # pytest captures stdout: not a terminal
    assert not quiet.enabled
    quiet.candidate("eager")
    quiet.done("ok")
    assert capsys.readouterr().err == ""
    stream = io.StringIO()
    loud = Progress(2, enabled=True, stream=stream)
    loud.candidate("onnxruntime", "child process")
    for stage in ("compile", "verify", "time"):
        loud.stage(stage)
    loud.done("p50 1.000 ms at batch 4")
    text = stream.getvalue()
    assert "[1/2] onnxruntime: compile" in text and "verify" in text and "p50 1.000 ms" in text


def test_fastest_works_for_a_model_class_defined_in_the_users_script(tmp_path):
    """The README's pattern: `class MyModel` in the script being run (__main__), which a child process cannot
    import. The children compile its torch.export capture; no candidate is dropped for it (issue 16)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import json, torch, motorpool
        from torch import nn

        class MyModel(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
            def forward(self, x):
                return self.net(x)

        if __name__ == "__main__":
            sel = motorpool.select(MyModel().eval(), torch.randn(4, 16), candidates=["eager", "torchscript"],
                                   isolate=True, budget_s=0.5, use_cache=False)
            print(json.dumps({"measured": [m.backend for m in sel.ranking],
                              "dropped": [[d.backend, d.reason] for d in sel.dropped], "notes": sel.notes}))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MOTORPOOL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(out["measured"]) == ["eager", "torchscript"] and not out["dropped"], out
    assert any("torch.export capture" in n for n in out["notes"]), out["notes"]


def test_select_takes_candidates_like_compile_and_warns_on_the_old_name():
    model, x = zoo.get("mlp").build(2)
    with pytest.warns(DeprecationWarning, match="candidates="):
        sel = motorpool.select(model, x, backends=["eager"], budget_s=0.2, use_cache=False)
    assert sel.winner == "eager"
    with pytest.raises(TypeError, match="not both"):
        motorpool.select(model, x, backends=["eager"], candidates=["eager"])
