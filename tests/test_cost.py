"""Cost per 1000 inferences from real bench runs, and runs from different machines side by side."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import motorpool
from motorpool.measuring.cost import annotate, compare, cost_per_1000, load_run


@pytest.fixture(scope="module")
def suite_dict():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    suite = motorpool.bench_model(model, (torch.randn(4, 16),), backends=["eager"], precisions=["fp32"],
                                  batch_sizes=[1, 8], scenarios=["single_stream", "offline"], time_budget_s=0.2,
                                  measure_load=False, verify=False, model_name="mlp")
    assert suite.results[0].status == "ok", suite.results[0].reason
    return suite.to_dict()


def test_cost_per_1000_is_the_price_of_the_seconds_1000_inferences_take():
    # $3.60 an hour is $0.001 a second; at 1000 samples/s, 1000 samples take one second
    assert cost_per_1000(1000.0, 3.6) == pytest.approx(0.001)
    assert cost_per_1000(2000.0, 3.6) == pytest.approx(0.0005)
    assert cost_per_1000(0.0, 3.6) is None and cost_per_1000(None, 3.6) is None
    assert cost_per_1000(float("nan"), 3.6) is None


def test_annotate_adds_cost_to_every_offline_figure(suite_dict):
    run = json.loads(json.dumps(suite_dict))
    annotate(run, 0.5)
    assert run["config"]["price_per_hour_usd"] == 0.5
    for b in run["results"][0]["batches"]:
        off = b["offline"]
        assert off["cost_per_1000_usd"] == pytest.approx(0.5 / 3600 / off["throughput_per_s"] * 1000)
    with pytest.raises(motorpool.InputError, match=r"price_per_hour: expected a positive price.*got -1"):
        annotate(run, -1)


def test_compare_puts_runs_side_by_side(suite_dict, tmp_path):
    cheap, dear = json.loads(json.dumps(suite_dict)), json.loads(json.dumps(suite_dict))
    annotate(cheap, 0.1)
    dear["machine"]["summary"] = "a bigger machine"
    paths = [tmp_path / "cheap.json", tmp_path / "dear.json"]
    paths[0].write_text(json.dumps(cheap))
    paths[1].write_text(json.dumps(dear))
    runs = [load_run(p) for p in paths]
    comparison = compare(runs, prices=[None, 2.0])  # the second run recorded no price: given here
    rows = comparison.rows
    assert set(rows) == {("eager", "fp32", "1"), ("eager", "fp32", "8")}
    for (_, _, batch), (a, b) in rows.items():
        off = next(x for x in suite_dict["results"][0]["batches"] if str(x["batch"]) == batch)
        assert a.throughput_per_s == b.throughput_per_s == off["offline"]["throughput_per_s"]
        assert a.p99_ms == off["single_stream"]["p99_ms"]
        assert b.cost_per_1000_usd == pytest.approx(a.cost_per_1000_usd * 20)
    best = comparison.best()
    assert best["cheapest"]["run"] == "A"
    text = comparison.table()
    assert "A $/1000" in text and "B p99 ms" in text and "a bigger machine" in text and "$2/hour" in text
    assert "| backend | precision | batch |" in comparison.markdown()
    assert comparison.to_dict()["runs"][1]["price_per_hour_usd"] == 2.0


def test_bad_runs_get_clear_errors(tmp_path):
    with pytest.raises(motorpool.InputError, match=r"no such file"):
        load_run(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(motorpool.InputError, match=r"not a bench JSON file"):
        load_run(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"rows": []}')
    with pytest.raises(motorpool.InputError, match=r"expected keys 'results' and 'machine', got \['rows'\]"):
        load_run(tmp_path / "y.json")
    with pytest.raises(motorpool.InputError, match=r"at least one"):
        compare([])


MODEL = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval(), (torch.randn(2, 16),)
'''


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "mp_cost_model.py").write_text(MODEL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "mp_cost_model:build"


def test_bench_cli_price_per_hour_adds_cost_to_table_json_markdown_and_chart(factory, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="motorpool bench needs the bench extra: pip install 'motorpool[bench]'")
    from motorpool.cli import main

    out = tmp_path / "priced"
    code = main(["bench", factory, "--backends", "eager", "--batch-sizes", "1,4", "--time-budget", "0.1",
                 "--no-load", "--out", str(out), "--no-progress", "--price-per-hour", "0.72"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "$/1000 offline" in printed
    data = json.loads((out / "bench.json").read_text())
    assert data["config"]["price_per_hour_usd"] == 0.72
    for b in data["results"][0]["batches"]:
        assert b["offline"]["cost_per_1000_usd"] == pytest.approx(0.72 / 3600 / b["offline"]["throughput_per_s"]
                                                                  * 1000)
    md = (out / "bench.md").read_text()
    assert "| $/1000 offline |" in md and "price $0.72 per hour" in md
    assert (out / "bench.png").stat().st_size > 10_000

    # a second "machine": the same run at another price, then both side by side
    other = tmp_path / "other"
    assert main(["bench", factory, "--backends", "eager", "--batch-sizes", "1,4", "--time-budget", "0.1",
                 "--no-load", "--out", str(other), "--no-progress"]) == 0
    capsys.readouterr()
    code = main(["bench", "compare", str(out / "bench.json"), str(other / "bench.json"), "--price-per-hour",
                 "0.72,3.0", "--out", str(tmp_path / "cmp")])
    assert code == 0
    text = capsys.readouterr().out
    assert "priced $/1000" in text and "other p99 ms" in text and "cheapest per 1000 inferences" in text
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["price_per_hour_usd"] for r in cmp["runs"]] == [0.72, 3.0]
    assert {(r["backend"], r["batch"]) for r in cmp["rows"]} == {("eager", "1"), ("eager", "4")}
    assert (tmp_path / "cmp" / "compare.md").read_text().startswith("# motorpool bench compare")


def test_bench_cli_usage_errors_exit_2(factory, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="motorpool bench needs the bench extra: pip install 'motorpool[bench]'")
    from motorpool.cli import main

    assert main(["bench", factory, "--backends", "eager", "--price-per-hour", "free", "--no-progress"]) == 2
    assert "--price-per-hour: expected one positive price" in capsys.readouterr().err
    assert main(["bench", "compare"]) == 2
    assert "expected one or more bench.json" in capsys.readouterr().err
    assert main(["bench", "compare", str(tmp_path / "nope.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "a.json").write_text(json.dumps({"machine": {}, "results": []}))
    assert main(["bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "a.json"), "--price-per-hour",
                 "1,2,3"]) == 2
    assert "or 2 comma-separated, one per run" in capsys.readouterr().err
    assert main(["bench", factory, "extra.json"]) == 2
    assert "unexpected arguments" in capsys.readouterr().err
