"""What a reviewer reads: collapsed runs and exact ties marked, Table 3 read both ways
(both_weighting), the claims table, and the gradient-cosine figure of any method."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kdbench import api
from kdbench.registry import load_registry
from kdbench.report.listing import collect_runs
from kdbench.report.marks import COLLAPSED, TIED, collapse_reason
from kdbench.report.tables import build
from kdbench.train.predictions import PREDICTIONS, save_predictions

VIDEOS = [name for i in range(30) for name in
          (f"{2 * i:03d}", f"{2 * i + 1:03d}", f"M/{2 * i:03d}_{2 * i + 1:03d}",
           f"M/{2 * i + 1:03d}_{2 * i:03d}")]
LABELS = np.array([0, 0, 1, 1] * 30)


def _preds(accuracy: float, seed: int, constant: float | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if constant is not None:
        return np.full(len(LABELS), constant, np.float32)
    right = rng.random(len(LABELS)) < accuracy
    score = rng.uniform(0.55, 0.95, len(LABELS))
    return np.where(right == (LABELS == 1), score, 1 - score).astype(np.float32)


def _run(root: Path, label: str, mode: str, seed: int, prob: np.ndarray,
         train_acc: list[float] | None = None, extra: dict | None = None) -> Path:
    run = root / "runs/synthetic/resnet18_thin" / label / mode / f"seed{seed}"
    run.mkdir(parents=True)
    save_predictions(run / PREDICTIONS, prob, LABELS, np.array(VIDEOS))
    acc = float(np.mean((prob > 0.5) == LABELS))
    (run / "metrics.json").write_text(json.dumps(
        {"status": "finished", "seed": seed, "test": {"acc": acc, "auc": 0.8,
                                                       "fake_fraction": 0.5}, **(extra or {})}))
    rows = [{"epoch": i + 1, "train_acc": a} for i, a in enumerate(train_acc or [0.6, 0.9])]
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_collapsed_runs_are_flagged_by_their_predictions_or_their_training(tmp_path):
    one_class = _run(tmp_path, "crd", "rgb", 0, _preds(0, 0, constant=0.9))
    stuck = _run(tmp_path, "crd", "rgb", 1, _preds(0.7, 1), train_acc=[0.50, 0.51, 0.52])
    fine = _run(tmp_path, "crd", "rgb", 2, _preds(0.7, 2))
    assert "100.0 % of the test frames called fake" in collapse_reason(
        one_class, json.loads((one_class / "metrics.json").read_text()))
    assert "train accuracy at most 52.0 %" in collapse_reason(
        stuck, json.loads((stuck / "metrics.json").read_text()))
    assert collapse_reason(fine, json.loads((fine / "metrics.json").read_text())) == ""
    _run(tmp_path, "crd", "both", 0, _preds(0.7, 3))
    report = build("comparison", collect_runs(tmp_path), load_registry())
    cell = report.rows[0][2]
    assert COLLAPSED in cell.mark
    note = next(n for n in report.notes if n.startswith(COLLAPSED))
    assert "crd rgb seeds 0,1" in note and "called fake" in note


def test_a_cell_whose_seeds_tie_exactly_says_so(tmp_path):
    for seed in range(3):  # three different models, each right on the same number of frames
        prob = _preds(1.0, seed)
        prob[seed * 4:(seed + 1) * 4] = 1 - prob[seed * 4:(seed + 1) * 4]
        _run(tmp_path, "rkd", "both", seed, prob)
        _run(tmp_path, "rkd", "rgb", seed, _preds(0.8, 10 + seed))
    report = build("comparison", collect_runs(tmp_path), load_registry())
    both = report.rows[0][3]
    assert both.std == 0 and TIED in both.mark
    assert any(n.startswith(TIED) for n in report.notes)


def test_table_3_read_both_ways_compares_sum_and_mean_with_rgb(tmp_path):
    for seed in range(3):
        _run(tmp_path, "kd", "rgb", seed, _preds(0.75, seed))
        _run(tmp_path, "kd", "both", seed, _preds(0.75, 10 + seed))
        _run(tmp_path, "kd@both_weighting=mean", "both", seed, _preds(0.95, 20 + seed))
    _run(tmp_path, "at", "rgb", 0, _preds(0.75, 30))  # no mean runs: no row
    report = api.report("weighting", results=tmp_path)
    assert [r[2] for r in report.rows] == ["kd"]
    row = report.text_rows()[0]
    assert report.columns[3:8] == ["rgb", "both (sum)", "both (mean)",
                                   "both - rgb, sum (acc)", "both - rgb, mean (acc)"]
    assert row[7].endswith("↑") and row[7].startswith("[+")  # mean well above rgb
    assert any("Holm" in n for n in report.notes)


def _teacher(root: Path, prob: np.ndarray) -> None:
    t = root / "teachers/synthetic/resnet18_thin-abc"
    t.mkdir(parents=True)
    save_predictions(t / PREDICTIONS, prob, LABELS, np.array(VIDEOS))
    (t / "metrics.json").write_text(json.dumps({"status": "finished", "test": {"acc": 0.7}}))


def test_the_claims_table_tests_each_declared_claim_on_the_store(tmp_path):
    for seed in range(3):
        for method in ("at", "kd"):  # baselines: both clearly below rgb
            _run(tmp_path, method, "rgb", seed, _preds(0.92, 100 + seed))
            _run(tmp_path, method, "both", seed, _preds(0.70, 200 + seed))
        _run(tmp_path, "tokd", "rgb", seed, _preds(0.80, 300 + seed))
        both = _run(tmp_path, "tokd", "both", seed, _preds(0.97, 400 + seed),
                    extra={"run_info": {"d_effective": 1024}})
        (both / "gradsim.jsonl").write_text(
            "".join(json.dumps({"step": i, "cos_full": 0.5, "cos_sub": 0.02}) + "\n"
                    for i in range(3)))
        norot = _run(tmp_path, "tokd@rotation=false", "both", seed, _preds(0.8, 500 + seed))
        (norot / "gradsim.jsonl").write_text(
            "".join(json.dumps({"step": i, "cos_full": -0.2 - 0.01 * seed, "cos_sub": -0.2})
                    + "\n" for i in range(3)))
        for d in (2048,):  # clamped to the 1024 values at this size
            _run(tmp_path, f"tokd@d={d}", "both", seed, _preds(0.97, 400 + seed),
                 extra={"run_info": {"d_effective": 1024}})
        _run(tmp_path, "tokd@d=128", "both", seed, _preds(0.9, 600 + seed),
             extra={"run_info": {"d_effective": 128}})
    _teacher(tmp_path, _preds(0.75, 7))
    report = api.report("claims", results=tmp_path)
    verdict = {r[0]: r[4] for r in report.text_rows()}
    assert verdict["baselines: both < rgb (Table 3)"] == "yes"
    assert verdict["TOKD: both > rgb (Table 3)"] == "yes"
    assert verdict["TOKD both is the best cell (Table 3)"] == "yes"
    assert verdict["the student outperforms its teacher (Table 4)"] == "yes"
    assert verdict["accuracy peaks at d = 1024 (Table 5)"].startswith(
        "untestable: d=2048 ran as d=1024")
    assert verdict["gradient cosine negative without rotation (Fig. 4)"] == "yes"
    assert verdict["rotated gradients about orthogonal (Fig. 4)"] == "yes"
    assert verdict["robust to alpha in 1 ... 1000 (Fig. 3)"].startswith("untestable")
    assert verdict["TOKD's student generalises across datasets (Table 7)"].startswith(
        "untestable: no cross-dataset test")
    measured = {r[0]: r[3] for r in report.text_rows()}
    assert "lower in 2 of 2" in measured["baselines: both < rgb (Table 3)"]


def test_plot_gradcos_draws_any_method_per_epoch_and_gradsim_adds_it(tmp_path, capsys):
    from kdbench.cli import main

    for seed in range(2):
        run = _run(tmp_path, "at", "both", seed, _preds(0.8, seed))
        (run / "gradcos.jsonl").write_text("".join(
            json.dumps({"step": 10 * i, "epoch": 1 + i // 2, "stage": 4,
                        "cos": -0.5 + 0.1 * seed, "norm_ratio": 1.0}) + "\n" for i in range(4)))
    assert main(["plot", "gradcos", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "gradcos.png").is_file()
    assert "at/both: mean cos -0.4500 (2 seeds, 4 records)" in out
    assert main(["plot", "gradsim", "--results", str(tmp_path)]) == 0  # no TOKD run: engine
    assert (tmp_path / "gradsim.png").is_file()
    empty = tmp_path / "empty"
    (empty / "runs").mkdir(parents=True)
    assert main(["plot", "gradcos", "--results", str(empty)]) == 2
    assert "kdbench diagnose" in capsys.readouterr().err


def test_a_run_stored_before_a_legacy_setting_is_listed_under_its_old_value(tmp_path):
    """crd's `negatives` came with another default than the old behaviour (registry legacy):
    a crd run that recorded no `negatives` is the reference rule's, not the default's."""
    old = _run(tmp_path, "crd", "rgb", 0, _preds(0.8, 0), extra={"hparams": {"beta": 0.8}})
    new = _run(tmp_path, "crd", "rgb", 1, _preds(0.8, 1),
               extra={"hparams": {"beta": 0.8, "negatives": "any"}})
    listing = collect_runs(tmp_path).set_index("seed")
    assert listing.loc[0, "variant"] == "negatives=other_class"
    assert listing.loc[1, "variant"] == ""
    assert old.is_dir() and new.is_dir()
