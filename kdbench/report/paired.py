"""The weighted metrics every bootstrap of kdbench computes, and the test-video-only paired
bootstrap (kdbench 0.3's procedure; the tables now use :mod:`kdbench.report.intervals`, which
also resamples the seeds, and this one stays as the test level alone, for comparison).

Frames of one video are not independent, so the bootstrap resamples test *videos* (with
replacement, every frame of a drawn video comes along) and weighs each frame by how often its
video was drawn. The two cells' runs are paired by seed (same seed, same test frames) and the
seeds pooled: each replicate's difference is the mean over the paired seeds of
``metric(A) - metric(B)`` on the same resampled videos. The 95 % interval is the percentile
interval of the replicates. The metrics are computed with those weights directly (all
replicates at once), which gives what the metric of the resampled frames would be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kdbench.errors import KdbenchError
from kdbench.train.predictions import Predictions

N_BOOT = 2000
CHUNK = 200  # replicates computed at once


@dataclass(frozen=True)
class Interval:
    """The difference A - B (mean over paired seeds) and its bootstrap interval."""

    diff: float
    lo: float
    hi: float
    seeds: tuple[int, ...]
    n_boot: int
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def text(self, scale: float = 100.0) -> str:
        return f"{self.diff * scale:+.2f} [{self.lo * scale:+.2f}, {self.hi * scale:+.2f}]"


def weighted_auc(prob: np.ndarray, label: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of weights ``w`` [R, n] (ties count one half); NaN without both
    classes."""
    order = np.argsort(prob, kind="mergesort")
    p, y, w = prob[order], label[order].astype(float), w[:, order]
    _, start = np.unique(p, return_index=True)
    pos = np.add.reduceat(w * y, start, axis=1)
    neg = np.add.reduceat(w * (1 - y), start, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    denom = pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (pos * (below + 0.5 * neg)).sum(1) / denom, np.nan)


def _roc_counts(prob: np.ndarray, label: np.ndarray, w: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Weighted true and false positives at each distinct threshold, highest first."""
    order = np.argsort(-prob, kind="mergesort")
    p, y, w = prob[order], label[order].astype(float), w[:, order]
    _, start = np.unique(-p, return_index=True)
    tps = np.cumsum(np.add.reduceat(w * y, start, axis=1), axis=1)
    fps = np.cumsum(np.add.reduceat(w * (1 - y), start, axis=1), axis=1)
    return tps, fps


def weighted_ap(prob: np.ndarray, label: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision (sklearn's step-wise sum) of each row of weights ``w``."""
    tps, fps = _roc_counts(prob, label, w)
    total = tps[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tps / (tps + fps)
        recall = tps / total
        gained = np.diff(np.concatenate([np.zeros_like(total), recall], 1), axis=1)
        ap = np.nansum(gained * precision, axis=1)
    return np.where((total[:, 0] > 0) & (fps[:, -1] > 0), ap, np.nan)


def weighted_eer(prob: np.ndarray, label: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Equal error rate of each row of weights ``w`` (the crossing of FPR and FNR, linearly
    interpolated, as :func:`kdbench.train.metrics.eer`)."""
    tps, fps = _roc_counts(prob, label, w)
    zero = np.zeros((len(w), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.concatenate([zero, tps / tps[:, -1:]], 1)
        fpr = np.concatenate([zero, fps / fps[:, -1:]], 1)
    diff = fpr - (1 - tpr)
    i = np.argmax(diff >= 0, axis=1)
    rows = np.arange(len(w))
    d1, d0 = diff[rows, i], diff[rows, np.maximum(i - 1, 0)]
    f1, f0 = fpr[rows, i], fpr[rows, np.maximum(i - 1, 0)]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where((i == 0) | (d1 == 0), 1.0, -d0 / (d1 - d0))
    out = f0 + t * (f1 - f0)
    return np.where((tps[:, -1] > 0) & (fps[:, -1] > 0), out, np.nan)


def weighted_acc(prob: np.ndarray, label: np.ndarray, w: np.ndarray) -> np.ndarray:
    right = ((prob > 0.5).astype(int) == label).astype(float)
    return (w * right).sum(1) / w.sum(1)


class _Videos:
    """The videos of a test split: each frame's video, each video's label."""

    def __init__(self, ref: Predictions) -> None:
        self.keys, self.of_frame = np.unique(ref.video, return_inverse=True)
        self.label = np.zeros(len(self.keys), int)
        self.label[self.of_frame] = ref.label

    def score(self, prob: np.ndarray) -> np.ndarray:
        """Each video's mean fake probability."""
        return (np.bincount(self.of_frame, weights=prob, minlength=len(self.keys))
                / np.bincount(self.of_frame, minlength=len(self.keys)))


def _metric(name: str, p: Predictions, videos: _Videos, counts: np.ndarray) -> np.ndarray:
    """``name`` of ``p`` for each row of video counts [R, V]."""
    if name == "video_auc":
        return weighted_auc(videos.score(p.prob), videos.label, counts)
    frame_w = counts[:, videos.of_frame]
    fn = {"acc": weighted_acc, "auc": weighted_auc, "ap": weighted_ap, "eer": weighted_eer}
    if name not in fn:
        raise KdbenchError(f"no paired bootstrap for metric {name!r}; use one of "
                           "acc, auc, ap, eer, video_auc")
    return fn[name](p.prob, p.label, frame_w)


def check_same_frames(runs: list[Predictions]) -> None:
    """All ``runs`` were tested on the same frames (a one-line error otherwise)."""
    ref = runs[0]
    for p in runs:
        if len(p) != len(ref) or not (np.array_equal(p.video, ref.video)
                                      and np.array_equal(p.label, ref.label)):
            raise KdbenchError("the runs were tested on different frames (another dataset "
                               "or preparation); compare runs of one test split")


def paired_bootstrap(a: dict[int, Predictions], b: dict[int, Predictions], metric: str,
                     n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> Interval:
    """The difference ``metric(A) - metric(B)``, A's and B's runs paired by seed (the keys),
    with its ``level`` percentile interval over ``n_boot`` resamplings of the test videos."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise KdbenchError(f"the two cells share no seed (A: {sorted(a)}, B: {sorted(b)}); "
                           "run both with the same --seeds to compare them")
    check_same_frames([a[s] for s in seeds] + [b[s] for s in seeds])
    videos = _Videos(a[seeds[0]])
    ones = np.ones((1, len(videos.keys)))
    diff = float(np.mean([_metric(metric, a[s], videos, ones)[0]
                          - _metric(metric, b[s], videos, ones)[0] for s in seeds]))
    rng = np.random.default_rng(seed)
    reps = []
    for start in range(0, n_boot, CHUNK):
        r = min(CHUNK, n_boot - start)
        draws = rng.integers(0, len(videos.keys), size=(r, len(videos.keys)))
        counts = np.zeros((r, len(videos.keys)))
        np.add.at(counts, (np.arange(r)[:, None], draws), 1.0)
        reps.append(np.mean([_metric(metric, a[s], videos, counts)
                             - _metric(metric, b[s], videos, counts) for s in seeds], axis=0))
    values = np.concatenate(reps)
    values = values[~np.isnan(values)]
    tail = 100 * (1 - level) / 2
    lo, hi = (np.percentile(values, [tail, 100 - tail]) if values.size
              else (math.nan, math.nan))
    return Interval(diff, float(lo), float(hi), tuple(seeds), n_boot, level)
