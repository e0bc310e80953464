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
from kdbench.data.prepare import ffpp_items, prepare_items
from kdbench.data.synthetic import MANIPULATIONS, SynthConfig, generate
from kdbench.errors import DataError

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
    assert counts == {"prepared": len(items) - 1, "skipped": 0, "failed": 1}
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
    assert again == {"prepared": 0, "skipped": len(items) - 1, "failed": 1}
    pd.testing.assert_frame_equal(load_prepared(out, "ff_c40").index, idx)


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
