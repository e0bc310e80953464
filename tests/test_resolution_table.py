"""The resolution table: students at smaller inputs beside the same student at the data's
size, per method and mode, with their recorded GFLOPs and measured latency."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from kdbench.errors import KdbenchError
from kdbench.report.resolution import resolution_report


def _listing(tmp_path) -> pd.DataFrame:
    plain = tmp_path / "runs/ds/resnet18_thin/kd/both/seed0"
    plain.mkdir(parents=True)
    (plain / "metrics.json").write_text(json.dumps({"config": {"data": {"size": 64}}}))
    rows = []
    for student, seed, auc, gfl in (("resnet18_thin", 0, 0.9, 0.04),
                                    ("resnet18_thin", 1, 0.8, 0.04),
                                    ("resnet18_thin@32px", 0, 0.7, 0.01),
                                    ("resnet18_thin@32px", 1, 0.6, 0.01),
                                    ("resnet18_thin@48px", 0, 0.75, 0.0225),
                                    ("resnet18_thin@32px-jpeg75", 0, 0.55, 0.01)):
        rows.append({"student": student, "method": "kd", "variant": "", "mode": "both",
                     "seed": seed, "status": "finished", "auc": auc, "gflops": gfl,
                     "path": str(plain) if "@" not in student else str(tmp_path / student)})
    rows.append({"student": "resnet18_thin", "method": "teacher", "variant": "",
                 "mode": "both", "seed": 0, "status": "finished", "auc": 0.95,
                 "gflops": 1.0, "path": str(tmp_path)})
    return pd.DataFrame(rows)


def test_the_table_lists_each_side_with_its_cost_and_auc(tmp_path):
    report = resolution_report(_listing(tmp_path), "auc", measure=False)
    sides = [(r[3], r[5], r[8]) for r in report.rows]
    assert [s for s, _, _ in sides] == ["64", "48", "32", "32"]
    assert [r[4] for r in report.rows] == ["-", "-", "-", "jpeg75"]  # its own row
    assert report.rows[3][8].mean == pytest.approx(0.55)
    sides = sides[:3]
    assert [g for _, g, _ in sides] == ["0.0400", "0.0225", "0.0100"]
    cells = {s: c for s, _, c in sides}
    assert cells["64"].mean == pytest.approx(0.85) and cells["64"].n == 2
    assert cells["32"].mean == pytest.approx(0.65) and cells["48"].n == 1
    assert all(r[6] == "-" for r in report.rows)  # not measured


def test_latency_is_measured_for_each_side(tmp_path):
    report = resolution_report(_listing(tmp_path), "auc", measure=True)
    ms = {r[3]: float(r[7]) for r in report.rows[:3]}
    assert set(ms) == {"64", "48", "32"} and all(v > 0 for v in ms.values())


def test_no_small_student_is_one_line(tmp_path):
    listing = _listing(tmp_path)
    with pytest.raises(KdbenchError, match="student.size=32"):
        resolution_report(listing[~listing["student"].str.contains("@")], "auc")


def test_the_resolution_plan_trains_the_plain_student_and_the_best_distillers_smaller(tmp_path):
    from kdbench import api
    from kdbench.request import RunRequest
    from kdbench.resolution_plan import resolution_plans

    main = api.plan(RunRequest.make("reproduce", preset="cpu", results=tmp_path, device="cpu",
                                    resolution=True))
    plans = resolution_plans(main)  # no finished run yet: no best distiller, the plain one
    assert [p.config["student"]["size"] for p in plans] == [32, 48]
    for p, side in zip(plans, (32, 48)):
        assert {r.spec.method for r in p.runs} == {"vanilla"}
        assert all(f"resnet18_thin@{side}px/vanilla/none/seed" in str(r.run_dir) for r in p.runs)
        assert len(p.runs) == 3  # seeds 0, 1, 2
        assert p.config["teacher"] == main.config["teacher"]


def test_the_pareto_figure_gets_one_point_per_smaller_student(tmp_path):
    from kdbench.report.pareto import resolution_points

    for seed, auc in ((0, 0.7), (1, 0.6)):
        run = tmp_path / f"runs/ds/resnet18_thin@32px/kd/both/seed{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"status": "finished", "gflops": 0.01,
                                                      "test": {"auc": auc}}))
    points = resolution_points(tmp_path, "gflops")
    assert len(points) == 1 and points[0]["name"] == "ds/resnet18_thin@32px/kd/both"
    assert points[0]["x"] == pytest.approx(0.01) and points[0]["auc"] == pytest.approx(65.0)
    assert points[0]["family"] == "resolution"
    assert resolution_points(tmp_path, "latency") == []  # not exported: no latency
