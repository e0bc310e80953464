import math

import numpy as np
import pytest

from kdbench.train.metrics import (
    accuracy,
    auc,
    best_threshold,
    detection_metrics,
    eer,
    video_auc,
)


def test_accuracy_threshold_half():
    assert accuracy(np.array([0.2, 0.6, 0.51, 0.5]), np.array([0, 1, 0, 1])) == 0.5


def test_auc_by_hand():
    # pairs (fake, real): (0.35,0.1) ok, (0.35,0.4) wrong, (0.8,0.1) ok, (0.8,0.4) ok -> 3/4
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    # a tie counts one half: (0.5, 0.5) -> 0.5, (0.9, 0.5) -> 1 -> 0.75
    assert auc(np.array([0.5, 0.5, 0.9]), np.array([0, 1, 1])) == 0.75


def test_eer_by_hand():
    # threshold between 0.35 and 0.4: one of two reals flagged (FPR 0.5), one of two fakes
    # missed (FNR 0.5)
    assert eer(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.5)
    assert eer(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1])) == 0.0
    assert eer(np.array([0.9, 0.8, 0.3, 0.4]), np.array([0, 0, 1, 1])) == 1.0
    # 3 reals (0.1, 0.2, 0.9), 1 fake (0.5): ROC (fpr, fnr) goes (0, 1) -> (1/3, 1) at 0.9
    # -> (1/3, 0) at 0.5; FPR = FNR on that vertical segment at 1/3
    probs, labels = np.array([0.1, 0.2, 0.9, 0.5]), np.array([0, 0, 0, 1])
    assert eer(probs, labels) == pytest.approx(1 / 3)
    # 2 reals (0.2, 0.6), 2 fakes (0.4, 0.8): points (0, .5) at 0.8, (.5, .5) at 0.6 -> EER .5
    assert eer(np.array([0.2, 0.6, 0.4, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.5)


def test_single_class_gives_nan():
    assert math.isnan(auc(np.array([0.1, 0.9]), np.array([1, 1])))
    assert math.isnan(eer(np.array([0.1, 0.9]), np.array([0, 0])))


def test_video_auc_averages_frames_per_video():
    probs = np.array([0.9, 0.0, 0.4, 0.4, 0.6, 0.6])
    labels = np.array([0, 0, 1, 1, 1, 1])
    videos = np.array(["a", "a", "b", "b", "c", "c"])
    # video scores a 0.45 (real), b 0.4 (fake), c 0.6 (fake): pairs ok for c only -> 0.5
    assert video_auc(probs, labels, videos) == 0.5
    m = detection_metrics(probs, labels, videos)
    assert m["n_frames"] == 6 and m["fake_fraction"] == pytest.approx(4 / 6)
    assert m["acc"] == pytest.approx(3 / 6)


def test_best_threshold_maximises_validation_accuracy():
    probs = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    t = best_threshold(probs, labels)
    assert t == pytest.approx(0.325)  # between the last real and the first fake: accuracy 1
    assert accuracy(probs, labels, t) == 1.0 > accuracy(probs, labels, 0.5)


def test_best_threshold_keeps_half_when_it_is_as_good_and_one_class_gives_half():
    assert best_threshold(np.array([0.2, 0.8]), np.array([0, 1])) == 0.5
    assert best_threshold(np.array([0.2, 0.8]), np.array([1, 1])) == 0.5
    # a student whose probabilities all lie above 0.5: the threshold moves up between classes
    assert best_threshold(np.array([0.6, 0.7, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 0.75
