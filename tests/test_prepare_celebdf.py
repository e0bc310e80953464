"""`prepare celebdf` on a tiny tree in the official Celeb-DF v2 layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from kdbench.cli import main
from kdbench.data.datasets import open_dataset
from kdbench.data.prepare import prepare_items
from kdbench.data.prepare_celebdf import TEST_LIST, celebdf_items, identities
from kdbench.data.video import write_video
from kdbench.errors import DataError

IDS = range(6)
REAL = [f"Celeb-real/id{k}_{n:04d}" for k in IDS for n in range(2)]
YOUTUBE = [f"YouTube-real/{n:05d}" for n in range(5)]
SYNTH = [f"Celeb-synthesis/id{a}_id{(a + d) % 6}_0000" for a in IDS for d in (1, 2)]
TESTS = {"Celeb-real/id0_0001": 1, "YouTube-real/00004": 1,
         "Celeb-synthesis/id1_id2_0000": 0, "Celeb-synthesis/id3_id5_0000": 0}
MISSING = "Celeb-synthesis/id4_id0_0007"  # listed for test, absent on disk
ALL = REAL + YOUTUBE + SYNTH


def level(name: str) -> int:
    """Each video is flat grey at its own level, so a prepared frame names its video."""
    return 12 + 7 * ALL.index(name)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("celebdf") / "Celeb-DF-v2"
    for name in ALL:
        write_video(root / f"{name}.mp4", np.full((8, 64, 64, 3), level(name), np.uint8))
    lines = [f"{lab} {name}.mp4" for name, lab in {**TESTS, MISSING: 0}.items()]
    (root / TEST_LIST).write_text("\n".join(lines) + "\n")
    return root


def _ids(videos) -> set[str]:
    return {i for v in videos for i in identities(v)}


def test_test_list_honoured_and_identities_disjoint(tree):
    split = celebdf_items(tree, val_fraction=0.3, seed=0)
    by_split = {s: {it.video for it in split.items if it.split == s} for s in ("train", "val",
                                                                               "test")}
    assert by_split["test"] == set(TESTS) | {MISSING}
    assert not by_split["test"] & (by_split["train"] | by_split["val"])
    # no identity of val appears in train; both ids of a synthesis video count
    assert by_split["val"] and not _ids(by_split["val"]) & _ids(by_split["train"])
    assert identities("Celeb-synthesis/id3_id5_0000") == {"id3", "id5"}
    assert identities("YouTube-real/00001") == {"YouTube-real/00001"}
    # 2 of 6 Celeb identities (0.3 of them) and 1 of 4 YouTube videos are held out
    celeb_val = {i for i in split.val_identities if i.startswith("id")}
    assert len(celeb_val) == 2 and len(split.val_identities) == 3
    assert _ids(by_split["val"]) == set(split.val_identities)
    # every other video is in train, val, or left out because it mixes train and val ids
    rest = set(ALL) - set(TESTS)
    assert by_split["train"] | by_split["val"] | set(split.excluded) == rest
    for name in split.excluded:
        ids = identities(name)
        assert ids & set(split.val_identities) and ids - set(split.val_identities)
    labels = {it.video: it.label for it in split.items}
    assert {labels[v] for v in by_split["val"]} == {0, 1}  # greedy choice keeps a fake in val
    assert all(labels[v] == int(v.startswith("Celeb-synthesis")) for v in labels)
    # seeded: the same seed gives the same split, other seeds other ones
    assert celebdf_items(tree, 0.3, seed=0).items == split.items
    others = {tuple(celebdf_items(tree, 0.3, seed=s).val_identities) for s in range(1, 6)}
    assert len(others | {tuple(split.val_identities)}) > 1


def test_prepare_index_counts_and_resume(tree, tmp_path):
    split = celebdf_items(tree, val_fraction=0.3, seed=0)
    out = tmp_path / "prep"
    counts = prepare_items(split.items, out, "celebdf", frames=4, size=32, progress=False,
                           meta={"excluded": split.excluded})
    n = len(split.items) - 1  # the missing test video fails
    assert counts == {"prepared": n, "skipped": 0, "failed": 1, "frames": 4 * n}
    data = open_dataset("celebdf", out, 32, 4)
    idx = data.index
    assert len(idx) == 4 * n and data.frames.shape == (4 * n, 32, 32, 3)
    per = idx.groupby(["split", "label"]).video.nunique().to_dict()
    expected = {}
    for it in split.items:
        if it.video != MISSING:
            expected[(it.split, it.label)] = expected.get((it.split, it.label), 0) + 1
    assert per == expected
    assert per[("test", 0)] == 2 and per[("test", 1)] == 2  # the list's 1 is real
    for video, rows in idx.groupby("video"):  # each frame row holds its own video
        assert abs(float(data.frames[rows.row.to_numpy()].mean()) - level(video)) < 3
    assert set(idx[idx.label == 1].manipulation) == {"Celeb-synthesis"}
    assert json.loads((out / "prepared.json").read_text())["excluded"] == split.excluded
    again = prepare_items(split.items, out, "celebdf", frames=4, size=32, progress=False)
    assert again == {"prepared": 0, "skipped": n, "failed": 1, "frames": 0}


def test_cli_prepare_celebdf_summary(tree, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["prepare", "celebdf", "--root", str(tree), "--out", str(out), "--frames", "2",
            "--size", "16", "--detector", "center", "--workers", "1", "--val-fraction", "0.3",
            "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    n = len(celebdf_items(tree, 0.3, 0).items) - 1
    assert re.search(rf"prepared {n}, skipped \(already done\) 0, failed 1 videos in [\d.]+ s "
                     r"\([\d.]+ frames/s, [\d.]+ videos/s\) -> ", err)
    meta = json.loads((out / "prepared.json").read_text())
    assert meta["source"] == "celebdf" and meta["val_fraction"] == 0.3 and meta["failed"] == 1
    assert main(argv) == 0
    assert f"prepared 0, skipped (already done) {n}, failed 1" in capsys.readouterr().err


def test_errors(tree, tmp_path):
    with pytest.raises(DataError, match="no videos under"):
        celebdf_items(tmp_path)
    root = tmp_path / "nolist"
    (root / "Celeb-real").mkdir(parents=True)
    (root / "Celeb-real" / "id0_0000.mp4").write_bytes((tree / f"{REAL[0]}.mp4").read_bytes())
    with pytest.raises(DataError, match=f"{TEST_LIST} in the dataset root"):
        celebdf_items(root)
    (root / TEST_LIST).write_text("1 Celeb-real/id0_0000.mp4\nreal id0_0000\n")
    with pytest.raises(DataError, match="line 2"):
        celebdf_items(root)
    with pytest.raises(DataError, match="--val-fraction"):
        celebdf_items(tree, val_fraction=1.5)
