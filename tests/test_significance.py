"""Per-frame predictions, AP, the paired bootstrap over test videos, the marks and intervals
of the comparison table, `kdbench compare`, and TensorBoard event files."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.report.paired import (
    paired_bootstrap,
    weighted_acc,
    weighted_ap,
    weighted_auc,
    weighted_eer,
)
from kdbench.report.tables import comparison
from kdbench.train.metrics import accuracy, average_precision, eer
from kdbench.train.predictions import PREDICTIONS, Predictions, load_predictions, save_predictions
from tests.conftest import write_prepared


def test_weighted_metrics_are_the_metrics_of_the_resampled_frames():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(np.clip(0.3 * y + 0.7 * rng.random(300), 0, 1), 2)  # many ties
    w = rng.integers(0, 3, (5, 300)).astype(float)
    for r in range(5):
        idx = np.repeat(np.arange(300), w[r].astype(int))
        assert weighted_auc(p, y, w[r:r + 1])[0] == pytest.approx(roc_auc_score(y[idx], p[idx]))
        assert weighted_ap(p, y, w[r:r + 1])[0] == pytest.approx(
            average_precision_score(y[idx], p[idx]))
        assert weighted_eer(p, y, w[r:r + 1])[0] == pytest.approx(eer(p[idx], y[idx]))
        assert weighted_acc(p, y, w[r:r + 1])[0] == pytest.approx(accuracy(p[idx], y[idx]))


def test_average_precision_by_hand():
    # ranked: fake (p .9), real (.8), fake (.7): precision 1 at recall .5, 2/3 at recall 1
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1])) == pytest.approx(
        0.5 * 1 + 0.5 * 2 / 3)


def _runs(shift: float, seeds=(0, 1, 2), videos=40, frames=8, seed=0):
    """Two cells' predictions on one split: B random-ish, A = B moved towards the truth."""
    rng = np.random.default_rng(seed)
    label = np.repeat(np.arange(videos) % 2, frames)
    video = np.repeat([f"v{i:03d}" for i in range(videos)], frames)
    a, b = {}, {}
    for s in seeds:
        base = np.clip(0.5 + 0.15 * (2 * label - 1) + rng.normal(0, 0.25, label.size), 0, 1)
        b[s] = Predictions(base, label, video)
        a[s] = Predictions(np.clip(base + shift * (2 * label - 1), 0, 1), label, video)
    return a, b


def test_identical_runs_give_an_interval_around_zero_and_a_shifted_run_excludes_it():
    a, b = _runs(0.0)
    same = paired_bootstrap(a, b, "auc", n_boot=500)
    assert same.diff == 0 and same.lo <= 0 <= same.hi and not same.excludes_zero
    a, b = _runs(0.2)
    better = paired_bootstrap(a, b, "auc", n_boot=500)
    assert better.diff > 0 and better.lo > 0 and better.excludes_zero
    worse = paired_bootstrap(b, a, "eer", n_boot=500)  # B has the higher error rate
    assert worse.hi < 0 or worse.lo > 0


def test_the_bootstrap_resamples_videos_not_frames():
    # repeating every frame of a video adds no evidence: the interval stays the same
    a1, b1 = _runs(0.03, frames=1)
    a8 = {s: Predictions(np.repeat(p.prob, 8), np.repeat(p.label, 8), np.repeat(p.video, 8))
          for s, p in a1.items()}
    b8 = {s: Predictions(np.repeat(p.prob, 8), np.repeat(p.label, 8), np.repeat(p.video, 8))
          for s, p in b1.items()}
    one, eight = (paired_bootstrap(a, b, "acc", n_boot=400, seed=1)
                  for a, b in ((a1, b1), (a8, b8)))
    assert (one.lo, one.hi) == pytest.approx((eight.lo, eight.hi))


def test_pairing_needs_a_shared_seed_and_the_same_frames():
    a, b = _runs(0.1, seeds=(0,))
    _, c = _runs(0.1, seeds=(1,))
    with pytest.raises(KdbenchError, match="share no seed"):
        paired_bootstrap(a, c, "acc")
    other = {0: Predictions(a[0].prob[:-8], a[0].label[:-8], a[0].video[:-8])}
    with pytest.raises(KdbenchError, match="different frames"):
        paired_bootstrap(a, other, "acc")


def _store(tmp_path, cells):
    """Run folders with metrics and predictions; a listing like kdbench.report.listing's."""
    rows = []
    for (method, mode), preds in cells.items():
        for seed, p in preds.items():
            folder = tmp_path / method / mode / f"seed{seed}"
            save_predictions(folder / PREDICTIONS, p.prob, p.label, p.video)
            rows.append({"dataset": "d", "student": "s", "method": method, "variant": "",
                         "mode": mode, "seed": seed, "status": "finished",
                         "acc": accuracy(p.prob, p.label), "path": str(folder)})
    return pd.DataFrame(rows)


def test_the_comparison_marks_follow_the_intervals(tmp_path):
    better, base = _runs(0.25)
    same, _ = _runs(0.0)
    runs = _store(tmp_path, {("x", "both"): better, ("x", "rgb"): base,
                             ("y", "both"): same, ("y", "rgb"): base})
    report = comparison(runs, ["x", "y"], "acc", ci=True)
    row = report.rows[0]
    x_both, y_both = row[3], row[5]
    assert x_both.mark == "↑" and y_both.mark == ""
    assert x_both.interval.startswith("[+") and y_both.interval == "[+0.00; +0.00, +0.00; t p=1.00]"
    assert any("two-level bootstrap" in n and "Holm" in n for n in report.notes)
    plain = comparison(runs, ["x", "y"], "acc")  # marks without --ci, no intervals printed
    assert plain.rows[0][3].mark == "↑" and plain.rows[0][3].interval == ""


@pytest.mark.slow
def test_a_run_keeps_its_predictions_and_ap_and_the_cli_compares_and_logs(tmp_path):
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    results = tmp_path / "R"
    assert main(["run", "--methods", "vanilla,at", "--modes", "both", "--dataset", "ff_c40",
                 "--data-root", str(data), "--preset", "quick", "--set", "data.size=16",
                 "--set", "train.epochs=2", "--seeds", "0,1", "--results", str(results),
                 "--no-progress", "--tensorboard"]) == 0
    run = results / "runs" / "ff_c40" / "resnet18_thin" / "at" / "both" / "seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    p = load_predictions(run / PREDICTIONS)
    assert len(p) == metrics["test"]["n_frames"] and set(p.label) == {0, 1}
    assert metrics["test"]["acc"] == pytest.approx(accuracy(p.prob, p.label))
    assert metrics["test"]["ap"] == pytest.approx(average_precision(p.prob, p.label))
    assert main(["compare", "at/both", "vanilla/none", "--results", str(results),
                 "--resamples", "200"]) == 0
    assert main(["table", "--kind", "comparison", "--ci", "--results", str(results)]) == 0
    assert main(["compare", "at/rgb", "vanilla/none", "--results", str(results)]) == 2
    pytest.importorskip("tensorboard", reason="the tb extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"step/loss_ce", "step/loss_kd_rgb", "step/loss_kd_freq", "step/lr",
            "epoch/val_acc", "epoch/val_auc", "epoch/train_loss"} <= tags
    assert [e.step for e in events.Scalars("epoch/val_acc")] == [1, 2]
