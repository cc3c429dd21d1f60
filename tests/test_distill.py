"""motorpool's distillation on real data (scikit-learn digits): a student a tenth of its teacher's size."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import motorpool
from motorpool.techniques.distill import DistillReport, distill

import _digits
from _teachers import params, student_mlp, trained_teacher


@pytest.fixture(autouse=True)
def one_thread():
    # tiny batches: one thread is fastest, kind to a shared machine, and keeps the runs bit-for-bit repeatable
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train_split():
    x, y, _, _ = _digits.digits_data()
    return x.flatten(1), y


def _top1(model, x):
    with torch.no_grad():
        return model(x).argmax(-1)


def test_student_a_tenth_the_size_matches_the_teacher_on_held_out_digits():
    teacher = trained_teacher()
    before = copy.deepcopy(teacher.state_dict())
    x, y = _train_split()
    student = student_mlp()
    assert params(student) * 10 <= params(teacher)

    trained, report = distill(teacher, student, x, labels=y, seed=0)

    assert trained is student and not trained.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher is untouched
    assert not teacher.training
    x_test, y_test = _digits.held_out("mlp")
    teacher_top, student_top = _top1(teacher, x_test), _top1(student, x_test)
    agreement = float((teacher_top == student_top).double().mean())
    teacher_acc = float((teacher_top == y_test).double().mean())
    student_acc = float((student_top == y_test).double().mean())
    assert agreement >= 0.95, (agreement, report)
    assert student_acc >= teacher_acc - 0.02, (teacher_acc, student_acc, report)
    # the report's own figures are on its held-out split of the training data
    assert isinstance(report, DistillReport)
    assert report.measured_on == "held-out" and report.val_samples == 140 and report.train_samples == 1260
    assert report.agreement >= 0.9 and report.student_accuracy is not None and report.teacher_accuracy is not None
    assert report.params_before == params(teacher) and report.params_after == params(student)
    # FLOPs of one sample: 2 * in * out per Linear layer
    assert report.flops_before == 2 * (64 * 128 + 128 * 128 + 128 * 10)
    assert report.flops_after == 2 * (64 * 32 + 32 * 10)
    assert 1 <= report.best_epoch <= report.epochs_run <= 60
    assert "agreement" in str(report) and report.to_dict()["params_after"] == params(student)


def test_unlabeled_data_is_labelled_by_the_teacher():
    teacher = trained_teacher()
    x, _ = _train_split()
    student, report = distill(teacher, student_mlp(), x.numpy(), seed=0)  # NumPy data works too
    assert report.student_accuracy is None and report.teacher_accuracy is None
    x_test, _ = _digits.held_out("mlp")
    assert float((_top1(teacher, x_test) == _top1(student, x_test)).double().mean()) >= 0.93


def test_early_stop_keeps_the_best_epoch():
    teacher = trained_teacher()
    x, y = _train_split()
    kept, report = distill(teacher, student_mlp(), x, labels=y, epochs=300, patience=2, lr=0.05, seed=3)
    assert report.stopped_early and report.epochs_run < 300
    assert report.epochs_run == report.best_epoch + 2
    # the student kept the best epoch's weights: training just that long from the same start gives them
    again, again_report = distill(teacher, student_mlp(), x, labels=y, epochs=report.best_epoch, patience=2,
                                  lr=0.05, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), again.state_dict().values()))
    assert again_report.best_val_loss == pytest.approx(report.best_val_loss, rel=1e-6)


def test_a_training_teacher_is_run_in_eval_mode_and_left_training():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(64, 64), nn.Dropout(0.5), nn.ReLU(), nn.Linear(64, 10)).train()
    x, _ = _train_split()
    student, report = distill(teacher, student_mlp(), x[:200], epochs=2, seed=0)
    assert teacher.training and not student.training
    # in eval mode dropout is off, so the teacher's targets are deterministic: the same run twice agrees
    _, again = distill(teacher, student_mlp(), x[:200], epochs=2, seed=0)
    assert again.best_val_loss == report.best_val_loss


def test_tuple_outputs_pick_the_logits_and_an_engine_can_teach():
    class Pair(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            logits = self.inner(x)
            return {"embedding": logits[:, :4] * 2, "logits": logits}

    x, y = _train_split()
    engine = motorpool.compile(Pair(trained_teacher()), (x[:4],), backend="eager")
    student, report = distill(engine, Pair(student_mlp()), x, labels=y, output="logits", seed=0)
    assert report.params_before is None and report.flops_before is None  # an engine has no parameters to count
    assert report.agreement >= 0.9


def test_progress_bar_on_stderr_only_when_asked(capsys):
    x, _ = _train_split()
    distill(trained_teacher(), student_mlp(), x[:300], epochs=2, seed=0, progress=True)
    err = capsys.readouterr().err
    assert "motorpool distill" in err and "epoch 2/2" in err
    distill(trained_teacher(), student_mlp(), x[:300], epochs=2, seed=0)  # not a terminal: silent
    assert capsys.readouterr().err == ""


def test_bad_inputs_get_clear_errors():
    teacher = trained_teacher()
    x, y = _train_split()
    with pytest.raises(motorpool.InputError, match=r"5 classes but the teacher outputs 10"):
        distill(teacher, nn.Linear(64, 5), x[:50])
    with pytest.raises(motorpool.InputError, match=r"no samples"):
        distill(teacher, student_mlp(), x[:0])
    with pytest.raises(motorpool.InputError, match=r"expected 100 labels.*got 99"):
        distill(teacher, student_mlp(), x[:100], labels=y[:99])
    with pytest.raises(motorpool.InputError, match=r"class indices in 0\.\.9.*got -1\.\.9"):
        distill(teacher, student_mlp(), x[:100], labels=torch.cat([y[:99], torch.tensor([-1])]))
    with pytest.raises(motorpool.InputError, match=r"1-d integer"):
        distill(teacher, student_mlp(), x[:100], labels=y[:100].float())
    with pytest.raises(motorpool.InputError, match=r"same number of rows"):
        distill(teacher, student_mlp(), (x[:10], x[:9]))
    with pytest.raises(motorpool.InputError, match=r"student: expected a torch.nn.Module"):
        distill(teacher, lambda v: v, x[:10])
    with pytest.raises(motorpool.InputError, match=r"same object"):
        distill(teacher, teacher, x[:10])
    with pytest.raises(motorpool.InputError, match=r"temperature: expected a number > 0, got 0"):
        distill(teacher, student_mlp(), x[:10], temperature=0)
    with pytest.raises(motorpool.InputError, match=r"alpha: expected a number >= 0 and <= 1, got 1.5"):
        distill(teacher, student_mlp(), x[:10], alpha=1.5)
    with pytest.raises(motorpool.InputError, match=r"data: expected a tensor"):
        distill(teacher, student_mlp(), "digits")
    with pytest.raises(motorpool.InputError, match=r"cannot be split"):
        distill(teacher, student_mlp(), x[:1])
    with pytest.raises(motorpool.InputError, match=r"logits: expected a float tensor \[batch, classes\]"):
        distill(lambda v: v.sum(-1), student_mlp(), x[:10])


def test_distillation_transform_makes_one_student_per_teacher_and_leaves_the_given_one_alone():
    from motorpool.techniques.distill import distillation_transform

    x, y = _train_split()
    given = student_mlp()
    before = copy.deepcopy(given.state_dict())
    transform = distillation_transform(given, x, labels=y, seed=0)
    made = transform(trained_teacher(), (x[:4],))
    assert transform(trained_teacher(), (x[:4],)) is made and len(transform.reports) == 1
    assert made is not given and all(torch.equal(before[k], v) for k, v in given.state_dict().items())
    assert transform.reports[0].agreement >= 0.9
    # without data: random inputs of the examples' spec, and the student is faithful to the teacher on them
    spread = distillation_transform(student_mlp(), samples=512, epochs=20, seed=0)
    spread(trained_teacher(), (x[:4],))
    assert spread.reports[0].val_samples == 51 and spread.reports[0].student_accuracy is None
    with pytest.raises(motorpool.InputError, match=r"student: expected a torch.nn.Module"):
        distillation_transform("small")


def test_optimize_report_lists_distillation_compiled_and_gated_like_every_technique():
    pytest.importorskip("onnxruntime", reason="needs the onnxruntime extra: pip install 'motorpool[onnxruntime]'")
    from motorpool.measuring.technique_report import default_techniques

    x, y = _train_split()
    x_test, y_test = _digits.held_out("mlp")
    chosen = [t for t in default_techniques() if "baseline" in t.name or t.name == "onnxruntime"]
    assert {t.backend for t in chosen} == {"eager", "onnxruntime"}
    report = motorpool.optimize_report(trained_teacher(), (x_test[:32],), data=[x_test], labels=[y_test],
                                       techniques=chosen, budget_s=0.3, batching=None, student=student_mlp(),
                                       distill_data=x, distill_labels=y, distill_options={"seed": 0})
    rows = {r.technique: r for r in report.rows}
    distilled = [name for name in rows if name.startswith("distilled student")]
    assert sorted(distilled) == ["distilled student, eager", "distilled student, int8 dynamic eager",
                                 "distilled student, int8 dynamic onnxruntime", "distilled student, onnxruntime"]
    for name in distilled:
        row = rows[name]
        assert row.status == "ok", (name, row.reason)
        assert row.metric == "accuracy" and row.score >= 0.93 and row.p50_ms > 0 and row.size_bytes
        assert row.drop == pytest.approx(rows["eager eval+inference_mode (baseline)"].score - row.score, abs=1e-9)
    # the student (a tenth of the teacher) is smaller on disk than the teacher's engine
    assert rows["distilled student, onnxruntime"].size_bytes < rows["onnxruntime"].size_bytes
    assert "agreement with the teacher" in report.extras["distillation"]
    assert "distilled student, onnxruntime" in report.table()


CLI_MODELS = '''
import torch
from torch import nn


def teacher():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 5)).eval(), (torch.randn(4, 16),)


def student():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5)), (torch.randn(4, 16),)


def wrong_classes():
    return nn.Linear(16, 3), (torch.randn(4, 16),)
'''


def test_cli_optimize_student_adds_the_distillation_rows(tmp_path, monkeypatch, capsys):
    import json

    from motorpool.cli import main

    (tmp_path / "mp_distill_models.py").write_text(CLI_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["optimize", "mp_distill_models:teacher", "--student", "mp_distill_models:student",
                 "--techniques", "baseline,int8 dynamic eager", "--budget", "0.3", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["technique"]: r for r in data["rows"]}
    assert set(rows) == {"eager eval+inference_mode (baseline)", "int8 dynamic eager",
                         "distilled student, int8 dynamic eager"}
    row = rows["distilled student, int8 dynamic eager"]
    assert row["status"] == "ok" and row["metric"] == "top1_agreement" and row["score"] > 0.5
    assert "params 2,821 -> 269" in data["extras"]["distillation"]

    assert main(["optimize", "mp_distill_models:teacher", "--student", "mp_distill_models:nope"]) == 2
    assert "--student" in capsys.readouterr().err
    # a student whose outputs do not match is that row's reason, not a crash
    assert main(["optimize", "mp_distill_models:teacher", "--student", "mp_distill_models:wrong_classes",
                 "--techniques", "baseline,int8 dynamic eager", "--budget", "0.2", "--json"]) == 0
    rows = {r["technique"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    bad = rows["distilled student, int8 dynamic eager"]
    assert bad["status"] == "failed" and "3 classes but the teacher outputs 5" in bad["reason"]
