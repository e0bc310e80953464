"""The students table (AUC beside cost) and the table a run ends with."""

from __future__ import annotations

import json
from pathlib import Path

from kdbench.report.listing import collect_runs
from kdbench.report.plan_table import plan_report
from kdbench.report.students import students_report

STUDENTS = {"mobilenetv3_large_100": (4.2e6, 0.018), "resnet18_thin": (2.8e6, 0.047)}


def _run(root: Path, student: str, method: str, mode: str, seed: int, auc: float) -> Path:
    run = root / f"runs/synthetic/{student}/{method}/{mode}/seed{seed}"
    run.mkdir(parents=True)
    params, gflops = STUDENTS[student]
    (run / "metrics.json").write_text(json.dumps(
        {"status": "finished", "params": params, "gflops": gflops,
         "test": {"acc": 0.8, "auc": auc, "eer": 0.2, "video_auc": auc}}))
    return run


def _deploy(run: Path, b1: float, b32: float) -> None:
    (run / "deploy").mkdir()
    label = "/".join(run.parts[-4:])
    (run / "deploy" / "deploy.json").write_text(json.dumps(
        {"label": label, "threads": 2, "formats": {"onnx_int8": {"latency_ms_b1": b1,
                                                                 "latency_ms_b32": b32}}}))


def test_each_student_row_puts_auc_per_method_beside_its_cost(tmp_path):
    for student in STUDENTS:
        for seed, auc in enumerate((0.90, 0.92)):
            run = _run(tmp_path, student, "vanilla", "none", seed, auc)
            _run(tmp_path, student, "pkt", "both", seed, auc + 0.02)
            if seed == 0 and student == "resnet18_thin":
                _deploy(run, 0.36, 0.16)
    _run(tmp_path, "resnet18_thin", "at", "rgb", 0, 0.5)  # only one student has it: no column
    report = students_report(collect_runs(tmp_path), tmp_path, ["vanilla", "at", "pkt"], "auc")
    assert report.columns[-2:] == ["vanilla", "pkt both"]
    rows = {r[1]: r for r in report.rows}
    assert [r[1] for r in report.rows] == ["resnet18_thin", "mobilenetv3_large_100"]  # by size
    small = rows["resnet18_thin"]
    assert small[2:6] == ["2.80", "0.047", "0.36", "0.16"]
    assert rows["mobilenetv3_large_100"][4] == "-"  # not quantized yet
    assert small[-2].mean == 0.91 and small[-2].n == 2 and round(small[-1].mean, 4) == 0.93
    assert any("kdbench quantize" in n for n in report.notes)


def test_the_plan_table_names_the_teacher_and_keeps_the_plan_order(tmp_path):
    teacher = tmp_path / "teachers/synthetic/resnet18-abc"
    teacher.mkdir(parents=True)
    (teacher / "metrics.json").write_text(json.dumps(
        {"status": "finished", "kind": "single", "backbone": "resnet18",
         "test": {"acc": 0.9, "auc": 0.95}}))
    runs = [_run(tmp_path, "resnet18_thin", "pkt", "rgb", 0, 0.9),
            _run(tmp_path, "resnet18_thin", "kd", "rgb", 0, 0.8),
            tmp_path / "runs/synthetic/resnet18_thin/kd/rgb/seed1"]  # not finished
    report = plan_report(tmp_path, runs, teacher)
    assert [r[0] for r in report.rows] == ["teacher (single resnet18)", "resnet18_thin pkt",
                                           "resnet18_thin kd"]
    assert report.rows[0][3].mean == 0.95 and report.rows[2][3].mean == 0.8
    assert "1 of the plan's 3 runs not finished" in report.notes
