"""The two-level bootstrap (seeds, then identity pairs of test videos), Holm's correction and
the paired t-test over seeds."""

import numpy as np
import pytest
from scipy import stats

from kdbench.report.intervals import (
    Comparison,
    holm,
    identity_clusters,
    procedure_note,
    two_level_bootstrap,
)
from kdbench.report.paired import paired_bootstrap
from kdbench.train.predictions import Predictions


def _split(pairs=60, frames=4):
    """FF++-style test videos: reals a, b and fakes M/a_b, M/b_a of each pair."""
    videos, labels = [], []
    for i in range(pairs):
        a, b = f"{2 * i:03d}", f"{2 * i + 1:03d}"
        for name, label in ((a, 0), (b, 0), (f"M/{a}_{b}", 1), (f"M/{b}_{a}", 1)):
            videos += [name] * frames
            labels += [label] * frames
    return np.array(videos), np.array(labels)


def _run(videos, labels, accuracy, seed):
    """Predictions right on about ``accuracy`` of the frames (a random set of them)."""
    rng = np.random.default_rng(seed)
    right = rng.random(len(labels)) < accuracy
    score = rng.uniform(0.55, 0.95, len(labels))
    prob = np.where(right == (labels == 1), score, 1 - score)
    return Predictions(prob.astype(np.float32), labels, videos)


def test_identity_clusters_join_each_pair_and_leave_other_names_alone():
    index, paired = identity_clusters(["000", "001", "M/000_001", "N/001_000", "002", "003",
                                       "M/002_003", "id7_0001"])
    assert paired
    assert len(set(index[:4])) == 1 and len(set(index[4:7])) == 1
    assert len(set(index)) == 3 and index[0] != index[4]
    _, paired = identity_clusters(["Celeb-real/id0_0000", "Celeb-synthesis/id0_id1_0000"])
    assert not paired


def test_seeds_that_disagree_in_sign_give_an_interval_with_0_the_test_level_alone_does_not():
    videos, labels = _split()
    diffs = {0: (0.90, 0.80), 1: (0.80, 0.86), 2: (0.90, 0.80)}  # A - B: +, -, +
    a = {s: _run(videos, labels, acc_a, 10 + s) for s, (acc_a, _) in diffs.items()}
    b = {s: _run(videos, labels, acc_b, 20 + s) for s, (_, acc_b) in diffs.items()}
    per_seed = [(a[s].prob > 0.5).astype(int) == labels for s in a]
    assert np.mean(per_seed[1]) < np.mean((b[1].prob > 0.5).astype(int) == labels)
    old = paired_bootstrap(a, b, "acc", n_boot=500)
    new = two_level_bootstrap(a, b, "acc", n_boot=500).interval()
    assert old.lo > 0  # videos alone: "A is better"
    assert new.lo < 0 < new.hi  # with the seeds resampled: not shown
    assert new.diff == pytest.approx(old.diff)


def test_identical_runs_give_an_interval_holding_0():
    videos, labels = _split(pairs=20)
    runs = {s: _run(videos, labels, 0.85, s) for s in range(3)}
    c = two_level_bootstrap(runs, runs, "auc", n_boot=300)
    iv = c.interval()
    assert iv.lo <= 0 <= iv.hi and c.diff == 0 and c.p_value == 1.0
    assert c.clustered and c.t_test == 1.0


def test_clusters_widen_the_interval_when_a_pair_moves_together():
    """Frames of one pair share their error: resampling pairs must see that, not videos."""
    videos, labels = _split(pairs=40)
    rng = np.random.default_rng(0)
    pair_of = identity_clusters(list(dict.fromkeys(videos)))[0]
    video_index = {v: i for i, v in enumerate(dict.fromkeys(videos))}
    good_pair = rng.random(pair_of.max() + 1) < 0.5
    good = good_pair[[pair_of[video_index[v]] for v in videos]]
    prob = np.where(good == (labels == 1), 0.8, 0.2).astype(np.float32)
    a = {0: Predictions(prob, labels, videos)}
    b = {0: Predictions(np.full_like(prob, 0.5) + 0.01 * (labels - 0.5), labels, videos)}
    pairs = two_level_bootstrap(a, b, "acc", n_boot=400).interval()
    plain = paired_bootstrap(a, b, "acc", n_boot=400)
    assert (pairs.hi - pairs.lo) > 1.3 * (plain.hi - plain.lo)


def _fixed(p, diff=1.0, label=""):
    """A comparison whose bootstrap p-value is ``p`` (replicates on one side of 0)."""
    n = 1000
    reps = np.full(n, diff)
    reps[: int(round(p / 2 * n))] = -diff
    return Comparison(diff, reps, np.array([diff] * 3), (0, 1, 2), True, n, label)


def test_holm_steps_down_and_stops_at_the_first_failure():
    ps = [0.010, 0.040, 0.030, 0.004]  # sorted: .004 (<=.0125) .010 (<=.0167) .030 (>.025)
    cs = holm([_fixed(p) for p in ps])
    assert [c.marked for c in cs] == [True, False, False, True]
    assert cs[2].level == pytest.approx(1 - 0.05 / 2) and cs[1].level == cs[2].level
    for c in cs:  # an interval excludes 0 exactly when the difference is declared
        iv = c.interval()
        assert (iv.lo > 0 or iv.hi < 0) == c.marked
    assert "Holm" in procedure_note(cs, "both - rgb")


def test_t_test_equals_scipys_paired_test():
    d = np.array([0.02, -0.01, 0.03, 0.015])
    c = Comparison(float(d.mean()), np.zeros(10), d, (0, 1, 2, 3), True, 10)
    assert c.t_test == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    assert Comparison(0.0, np.zeros(3), d[:2], (0, 1), True, 3).t_test is None


def test_a_comparison_without_replicates_is_never_declared_and_stops_nothing():
    empty = Comparison(0.0, np.full(100, np.nan), np.zeros(3), (0, 1, 2), True, 100)
    cs = holm([empty, _fixed(0.0), _fixed(0.0)])
    assert [c.marked for c in cs] == [False, True, True]  # m = 2: the NaN one is not counted
    assert cs[1].level == pytest.approx(1 - 0.05 / 2)
