"""Preparation path (videos -> crops + index) on a tiny synthetic FF++ tree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdbench.data.datasets import load_prepared
from kdbench.data.detectors import CenterDetector, square_crop
from kdbench.data.prepare import ffpp_items, prepare_items, summary_line
from kdbench.data.synthetic import MANIPULATIONS, SynthConfig, generate
from kdbench.errors import DataError, KdbenchError

TINY = SynthConfig(seed=1, pairs=(2, 1, 1), size=32, frames=4)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("ff") / "ff", TINY, workers=1, progress=False)


def test_ffpp_pairing_rule(tree):
    items = ffpp_items(tree, "c40", MANIPULATIONS)
    assert len(items) == 2 * 4 * (1 + len(MANIPULATIONS))  # 4 pairs, 2 reals + 2 fakes/method
    pairs = {s: json.loads((tree / "splits" / f"{s}.json").read_text())
             for s in ("train", "val", "test")}
    by_video = {it.video: it for it in items}
    for split, plist in pairs.items():
        for a, b in plist:
            assert by_video[a].split == by_video[b].split == split
            assert by_video[a].label == 0
            for m in MANIPULATIONS:  # both a_b and b_a belong to the pair's split
                assert by_video[f"{m}/{a}_{b}"].split == split
                assert by_video[f"{m}/{b}_{a}"].split == split
                assert by_video[f"{m}/{a}_{b}"].label == 1


def test_prepare_writes_index_skips_corrupt_and_resumes(tree, tmp_path):
    root = tmp_path / "ff"
    shutil.copytree(tree, root)
    corrupt = root / "manipulated_sequences/FaceSwap/c40/videos"
    victim = sorted(corrupt.glob("*.mp4"))[0]
    victim.write_bytes(b"not an mp4 at all")
    items = ffpp_items(root, "c40", MANIPULATIONS)
    out = tmp_path / "prep"
    counts = prepare_items(items, out, "ff_c40", frames=3, size=24, progress=False)
    n = len(items) - 1
    assert counts == {"prepared": n, "skipped": 0, "failed": 1, "frames": 3 * n}
    data = load_prepared(out, "ff_c40")
    assert data.frames.shape == ((len(items) - 1) * 3, 24, 24, 3)
    assert data.frames.dtype == np.uint8
    idx = data.index
    assert f"FaceSwap/{victim.stem}" not in set(idx.video)
    assert set(idx.columns) >= {"row", "video", "label", "manipulation", "split", "frame"}
    per_split = idx.groupby(["split", "label"]).video.nunique()
    victim_split = next(it.split for it in items if it.path == str(victim))
    expected = {"train": (4, 16), "val": (2, 8), "test": (2, 8)}
    for split, (reals, fakes) in expected.items():
        assert per_split[(split, 0)] == reals
        assert per_split[(split, 1)] == fakes - (split == victim_split)
    assert json.loads((out / "prepared.json").read_text())["failed"] == 1
    # resumed: nothing prepared twice, same output
    again = prepare_items(items, out, "ff_c40", frames=3, size=24, progress=False)
    assert again == {"prepared": 0, "skipped": n, "failed": 1, "frames": 0}
    pd.testing.assert_frame_equal(load_prepared(out, "ff_c40").index, idx)
    # the cache resumes only with the settings it was made with
    with pytest.raises(DataError, match="prepared with size 24"):
        prepare_items(items, out, "ff_c40", frames=3, size=32, progress=False)
    with pytest.raises(KdbenchError, match="unknown detector 'hog'"):
        prepare_items(items, out, "ff_c40", frames=3, size=24, detector="hog", progress=False)


def test_summary_line_reports_throughput():
    counts = {"prepared": 10, "skipped": 3, "failed": 1, "frames": 320}
    assert summary_line(counts, 4.0, Path("out")) == (
        "prepared 10, skipped (already done) 3, failed 1 videos in 4.0 s (80.0 frames/s, "
        "2.50 videos/s) -> out")


def test_prepare_errors(tmp_path, tree):
    with pytest.raises(DataError, match="original_sequences"):
        ffpp_items(tmp_path, "c40")
    root = tmp_path / "nosplits"
    shutil.copytree(tree, root)
    shutil.rmtree(root / "splits")
    with pytest.raises(DataError, match="split file"):
        ffpp_items(root, "c40")


def test_center_crop_box_and_padding():
    frame = np.zeros((40, 60, 3), np.uint8)
    assert CenterDetector(0.5)(frame) == (20, 10, 40, 30)
    frame[:, :30] = 255
    crop = square_crop(frame, (20, 10, 40, 30), enlarge=1.0, size=20)
    assert crop.shape == (20, 20, 3)
    assert crop[:, :8].mean() > 250 and crop[:, 12:].mean() < 5  # left half white
    # a box past the border is zero-padded, not shifted
    edge = square_crop(np.full((10, 10, 3), 200, np.uint8), (-5, 0, 5, 10), 1.0, 10)
    assert edge[:, :4].max() == 0 and edge[:, 6:].min() == 200


def test_a_preset_keeps_evenly_spaced_frames_of_each_video():
    import pandas as pd

    from kdbench.data.datasets import keep_frames

    index = pd.DataFrame({"row": range(7), "video": ["a"] * 5 + ["b"] * 2,
                          "frame": [0, 1, 2, 3, 4, 0, 1]})
    kept = keep_frames(index, 3)
    assert kept[kept.video == "a"]["frame"].tolist() == [0, 2, 4]
    assert kept[kept.video == "b"]["frame"].tolist() == [0, 1]
    assert kept["row"].tolist() == [0, 2, 4, 5, 6]
