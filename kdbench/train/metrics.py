"""Detection metrics: frame accuracy, AUC, AP, EER and video-level AUC (label 1 = fake)."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def _two_classes(labels: np.ndarray) -> bool:
    return np.unique(labels).size == 2


def accuracy(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of frames whose fake probability lands on the right side of ``threshold``."""
    return float(np.mean((np.asarray(probs) > threshold).astype(int) == np.asarray(labels)))


def best_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """The decision threshold on the fake probability with the highest frame accuracy on these
    (validation) frames: a midpoint between two consecutive distinct probabilities, or 0.5 when
    that is as accurate; ties go to the one nearest 0.5. 0.5 when only one class is present."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels)
    if not _two_classes(labels):
        return 0.5
    values = np.unique(probs)
    candidates = np.concatenate([[0.5], (values[:-1] + values[1:]) / 2, [values[0] - 1e-6]])
    order = np.argsort(probs)
    sorted_p, sorted_y = probs[order], labels[order]
    # frames above t are called fake: correct = fakes above + reals at or below
    below = np.searchsorted(sorted_p, candidates, side="right")
    fakes_below = np.concatenate([[0], np.cumsum(sorted_y == 1)])[below]
    reals_below = below - fakes_below
    fakes_above = int((sorted_y == 1).sum()) - fakes_below
    correct = reals_below + fakes_above
    best = np.flatnonzero(correct == correct.max())
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of the fake probability; NaN when only one class is present."""
    labels = np.asarray(labels)
    return float(roc_auc_score(labels, probs)) if _two_classes(labels) else math.nan


def average_precision(probs: np.ndarray, labels: np.ndarray) -> float:
    """Average precision of the fake class (the area under the precision-recall curve as
    sklearn and DeepfakeBench compute it); NaN when only one class is present."""
    labels = np.asarray(labels)
    return float(average_precision_score(labels, probs)) if _two_classes(labels) else math.nan


def eer(probs: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate: where the false-positive rate equals the false-negative rate
    (linear interpolation between the two ROC points around the crossing)."""
    labels = np.asarray(labels)
    if not _two_classes(labels):
        return math.nan
    fpr, tpr, _ = roc_curve(labels, probs)
    fnr = 1.0 - tpr
    diff = fpr - fnr  # increases from -1 to +1 along the curve
    i = int(np.argmax(diff >= 0))
    if i == 0 or diff[i] == 0:
        return float(fpr[i])
    w = -diff[i - 1] / (diff[i] - diff[i - 1])
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def video_auc(probs: np.ndarray, labels: np.ndarray, videos: np.ndarray) -> float:
    """AUC over videos, each scored by the mean fake probability of its frames."""
    videos = np.asarray(videos)
    keys, inverse = np.unique(videos, return_inverse=True)
    score = np.bincount(inverse, weights=np.asarray(probs, dtype=float)) / np.bincount(inverse)
    vlabel = np.zeros(len(keys))
    vlabel[inverse] = np.asarray(labels)
    return auc(score, vlabel.astype(int))


def detection_metrics(
    probs: np.ndarray, labels: np.ndarray, videos: np.ndarray
) -> dict[str, float]:
    """All metrics of one split, plus its size and fake fraction (the majority baseline)."""
    labels = np.asarray(labels)
    return {
        "acc": accuracy(probs, labels),
        "auc": auc(probs, labels),
        "ap": average_precision(probs, labels),
        "eer": eer(probs, labels),
        "video_auc": video_auc(probs, labels, videos),
        "n_frames": int(labels.size),
        "fake_fraction": float(labels.mean()) if labels.size else math.nan,
    }
