"""The techniques report: every row measured or carrying its reason; the CLI form."""

from __future__ import annotations

import json

import pytest
import torch

import motorpool
from motorpool.cli import main
from motorpool.measuring.technique_report import Technique, default_techniques, optimize_report
from motorpool.testing.zoo import get

PICK = ("eager eval+inference_mode (baseline)", "torchscript", "int8 dynamic eager", "pruned 50% structured, eager")


def test_report_measures_each_technique_against_the_model():
    model, ex = get("mlp").build(8)
    techniques = [t for t in default_techniques() if t.name in PICK] + [Technique("not here", "no_such_backend")]
    labels = [torch.randint(0, 10, (32,))]
    report = optimize_report(model, ex, data=[torch.randn(32, 32)], labels=labels, techniques=techniques,
                             budget_s=0.5, batching=4)
    rows = {r.technique: r for r in report.rows}
    assert report.metric == "accuracy"
    assert [r.technique for r in report.rows] == [t.name for t in techniques]  # no row vanishes
    base = rows[PICK[0]]
    assert base.status == "ok" and base.speedup == pytest.approx(1.0) and base.drop == 0.0
    for name in PICK:
        r = rows[name]
        assert r.status == "ok", r.reason
        assert r.p50_ms > 0 and r.speedup > 0 and r.size_bytes > 0 and r.compile_s > 0
        assert r.score is not None and r.drop is not None
    assert rows[PICK[3]].size_bytes < base.size_bytes  # structured pruning really shrank it
    assert rows["not here"].status == "unsupported" and "no_such_backend" in rows["not here"].reason
    table = report.table()
    assert all(name in table for name in PICK) and "speed-up" in table
    assert any(k.startswith("batching") for k in report.extras)
    json.dumps(report.to_dict())  # plain data


def test_quick_leaves_out_heavy_compilers_with_a_reason():
    model, ex = get("mlp").build(2)
    heavy = [t for t in default_techniques() if t.heavy]
    report = optimize_report(model, ex, techniques=heavy, quick=True, budget_s=0.1, batching=None)
    assert heavy and all(r.status == "unsupported" and "quick" in r.reason for r in report.rows)
    assert report.metric == "top1_agreement"  # a [batch, classes] output


def test_cli_optimize_json(capsys):
    code = main(["optimize", "zoo:mlp", "--techniques", "baseline,int8 dynamic eager", "--budget", "0.3",
                 "--metric", "cosine", "--max-drop", "0.001", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "cosine" and out["max_drop"] == 0.001
    names = [r["technique"] for r in out["rows"]]
    assert names == [PICK[0], PICK[2]]
    assert all(r["status"] == "ok" and r["p50_ms"] > 0 for r in out["rows"])


def test_cli_optimize_rejects_unknown_technique(capsys):
    assert main(["optimize", "zoo:mlp", "--techniques", "warp drive"]) == 2
    assert "matches none" in capsys.readouterr().err


def test_threads_apply_to_every_engine_and_are_restored():
    model, ex = get("mlp").build(2)
    before = torch.get_num_threads()
    baseline = [t for t in default_techniques() if t.name == PICK[0]]
    report = optimize_report(model, ex, techniques=baseline, threads=1, budget_s=0.1, batching=None)
    assert report.rows[0].status == "ok"
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        optimize_report(model, ex, techniques=baseline, threads=0)


def test_the_table_comes_from_declared_capabilities():
    """Every registered backend has its fp32 row, a row per declared int8 way, bf16 where declared; the
    baseline is the backend that declares itself the reference, not a name."""
    rows = default_techniques()
    infos = {b.name: b for b in motorpool.list_backends()}
    names = [t.name for t in rows]
    assert len(names) == len(set(names))
    for name, info in infos.items():
        caps = info.capabilities
        mine = [t for t in rows if t.backend == name and t.transform is None]
        assert any(t.precision == "fp32" for t in mine), name
        assert ("bf16" in caps["precisions"]) == any(t.precision == "bf16" for t in mine), name
        int8 = sorted(t.int8 or "" for t in mine if t.precision == "int8")
        expected = sorted(caps["int8_modes"] or [""]) if "int8" in caps["precisions"] else []
        assert int8 == expected, (name, int8, expected)
        assert all(t.heavy == (caps["compile_cost"] == "high") for t in mine), name
    references = [n for n, i in infos.items() if i.capabilities["reference"]]
    assert references == ["eager"] and rows[0].backend == "eager" and "baseline" in rows[0].name
    assert all(t.backend == "eager" for t in rows if t.transform is not None)
