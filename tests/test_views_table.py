"""The frequency-view table: runs of a wavelet-view teacher (folders <dataset>@view=dwt)
against the same runs of the DCT-view teacher, their teachers' rows, paired intervals; and the
run folders the view names."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kdbench.config import dataset_folder, resolve_config
from kdbench.errors import KdbenchError
from kdbench.report.views import views_report
from kdbench.train.predictions import save_predictions


def test_the_view_names_the_dataset_folder_only_when_not_the_dct():
    assert dataset_folder("synthetic", resolve_config("cpu", "synthetic", {})) == "synthetic"
    dwt = resolve_config("cpu", "synthetic", {"teacher": {"freq_view": "dwt", "levels": 2}})
    assert dataset_folder("synthetic", dwt) == "synthetic@view=dwt,levels=2"
    both = resolve_config("cpu", "synthetic_gen", {"teacher": {"freq_view": "dwt"},
                                                   "data": {"train_generators": "a"}})
    assert dataset_folder("synthetic_gen", both) == "synthetic_gen@train=a,view=dwt"


def _run(root, folder, teacher, seed, prob):
    run = root / "runs" / folder / "s/tokd/both" / f"seed{seed}"
    run.mkdir(parents=True)
    label = np.array([0, 0, 1, 1])
    save_predictions(run / "predictions.npz", np.array(prob), label,
                     np.array(["id_001_a", "id_002_b", "001_002_c", "002_001_d"]))
    auc = float(np.mean([p > q for p in prob[2:] for q in prob[:2]]))
    (run / "metrics.json").write_text(json.dumps({"dataset": "ds", "teacher": f"/x/{teacher}",
                                                  "test": {"auc": auc}}))
    return {"dataset": folder, "student": "s", "method": "tokd", "variant": "", "mode": "both",
            "seed": seed, "status": "finished", "auc": auc, "path": str(run)}


def test_the_table_pairs_each_run_with_its_dct_twin_and_shows_both_teachers(tmp_path):
    for name, auc in (("t-dct", 0.9), ("t-dwt", 0.95)):
        folder = tmp_path / "teachers/ds" / name
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"test": {"auc": auc}}))
    rows = [_run(tmp_path, "ds", "t-dct", s, [0.1, 0.6, 0.5, 0.9]) for s in (0, 1)]
    rows += [_run(tmp_path, "ds@view=dwt", "t-dwt", s, [0.1, 0.2, 0.5, 0.9]) for s in (0, 1)]
    report = views_report(pd.DataFrame(rows), tmp_path, "auc")
    teacher, run = report.rows
    assert teacher[1] == "teacher" and teacher[3].mean == pytest.approx(0.9)
    assert teacher[4].mean == pytest.approx(0.95)
    assert run[3].mean == pytest.approx(0.75) and run[4].mean == pytest.approx(1.0)
    assert run[5].startswith("[+25.00;")
    with pytest.raises(KdbenchError, match="teacher.freq_view=dwt"):
        views_report(pd.DataFrame(rows[:2]), tmp_path, "auc")
