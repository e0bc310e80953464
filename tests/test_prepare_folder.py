"""`prepare folder`: real/ fake/ (or 0_real/ 1_fake/) image folders, with or without splits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdbench.cli import main
from kdbench.data.datasets import open_dataset
from kdbench.data.prepare import prepare_items
from kdbench.data.prepare_folder import check_name, folder_items
from kdbench.data.video import read_frames
from kdbench.errors import DataError, KdbenchError, VideoError

SUFFIXES = (".png", ".jpg", ".bmp", ".webp", ".jpeg")


def write_images(folder: Path, n: int, start: int = 0) -> list[Path]:
    """``n`` flat images of distinct grey levels (lossless png for the level checks)."""
    paths = []
    for k in range(n):
        path = folder / f"img{start + k:03d}{SUFFIXES[k % len(SUFFIXES)]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 48, 3), 10 + 10 * ((start + k) % 24), np.uint8)).save(path)
        paths.append(path)
    return paths


def test_read_frames_reads_an_image_as_one_frame(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (24, 30, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img[..., 0]).save(tmp_path / "grey.PNG")  # greyscale -> RGB, any case
    assert np.array_equal(read_frames(tmp_path / "a.png", 32), img[None])
    grey = read_frames(tmp_path / "grey.PNG")
    assert grey.shape == (1, 24, 30, 3) and np.array_equal(grey[0, ..., 2], img[..., 0])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(VideoError, match="cannot read image .*bad.jpg"):
        read_frames(tmp_path / "bad.jpg")


def test_folder_without_splits_is_split_80_10_10_per_label(tmp_path):
    root = tmp_path / "imgs"
    write_images(root / "real", 20)
    write_images(root / "fake" / "gan", 10, start=20)  # label folder nearest the file counts
    (root / "fake" / "broken.png").write_bytes(b"garbage")
    write_images(root / "misc", 2)  # outside real/ fake/: left out
    items = folder_items(root, seed=3)
    assert len(items) == 31
    got = {(lab, s): sum(1 for it in items if it.label == lab and it.split == s)
           for lab in (0, 1) for s in ("train", "val", "test")}
    assert got == {(0, "train"): 16, (0, "val"): 2, (0, "test"): 2,
                   (1, "train"): 9, (1, "val"): 1, (1, "test"): 1}
    assert folder_items(root, seed=3) == items
    assert [it.split for it in folder_items(root, seed=4)] != [it.split for it in items]
    out = tmp_path / "out"
    counts = prepare_items(items, out, "folder", frames=1, size=16, progress=False)
    assert counts == {"prepared": 30, "skipped": 0, "failed": 1, "frames": 30}
    data = open_dataset("folder", out, 16, 1)
    assert data.frames.shape == (30, 16, 16, 3) and (data.index.frame == 0).all()
    assert "fake/broken.png" not in set(data.index.video)
    broken_split = next(it.split for it in items if it.video == "fake/broken.png")
    per = data.index.groupby(["label", "split"]).size().to_dict()
    assert per == {k: v - (k == (1, broken_split)) for k, v in got.items()}
    lossless = data.index[data.index.video.str.endswith((".png", ".bmp", ".webp"))]
    for _, row in lossless.iterrows():  # each row holds its own image
        k = int(re.search(r"img(\d+)", row.video).group(1))
        assert abs(float(data.frames[row.row].mean()) - (10 + 10 * (k % 24))) <= 1
    assert set(data.index[data.index.label == 1].manipulation) == {"gan"}
    again = prepare_items(items, out, "folder", frames=1, size=16, progress=False)
    assert again == {"prepared": 0, "skipped": 30, "failed": 1, "frames": 0}


def test_forensynths_split_folders(tmp_path):
    root = tmp_path / "cnn"
    write_images(root / "train" / "airplane" / "0_real", 3)
    write_images(root / "train" / "airplane" / "1_fake", 4, start=3)
    write_images(root / "val" / "0_real", 1, start=7)
    write_images(root / "val" / "1_fake", 2, start=8)
    write_images(root / "test" / "progan" / "cat" / "0_real", 2, start=10)
    write_images(root / "test" / "progan" / "cat" / "1_fake", 2, start=12)
    items = folder_items(root)
    got = {(it.split, it.label): 0 for it in items}
    for it in items:
        got[(it.split, it.label)] += 1
    assert got == {("train", 0): 3, ("train", 1): 4, ("val", 0): 1, ("val", 1): 2,
                   ("test", 0): 2, ("test", 1): 2}
    kinds = {it.split: it.manipulation for it in items if it.label == 1}
    assert kinds == {"train": "airplane", "val": "fake", "test": "progan/cat"}
    assert {it.manipulation for it in items if it.label == 0} == {"real"}
    write_images(root / "real", 1)  # a label folder outside the split folders
    with pytest.raises(DataError, match="mixes images inside and outside"):
        folder_items(root)


def test_cli_folder_name_usable_as_dataset(tmp_path, capsys):
    root = tmp_path / "imgs"
    write_images(root / "train" / "real", 3)
    write_images(root / "train" / "fake", 3, start=3)
    write_images(root / "val" / "real", 1, start=6)
    write_images(root / "val" / "fake", 1, start=7)
    write_images(root / "test" / "real", 1, start=8)
    write_images(root / "test" / "fake", 1, start=9)
    out = tmp_path / "prep"
    argv = ["prepare", "folder", "--root", str(root), "--out", str(out), "--size", "16",
            "--name", "mygan", "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    assert re.search(r"prepared 10, skipped \(already done\) 0, failed 0 images in [\d.]+ s "
                     r"\([\d.]+ frames/s, [\d.]+ images/s\)", capsys.readouterr().err)
    meta = json.loads((out / "prepared.json").read_text())
    assert meta["dataset"] == "mygan" and meta["source"] == "folder"
    assert meta["detector"] == "center" and meta["frames"] == 1
    data = open_dataset("mygan", out, 16, 1)  # what `kdbench run --dataset mygan` opens
    assert len(data.split("train")) == 6 and len(data.split("val")) == 2
    with pytest.raises(DataError, match="holds prepared 'mygan'"):
        open_dataset("folder", out, 16, 1)
    with pytest.raises(KdbenchError, match="unknown dataset 'other'"):
        open_dataset("other", out, 16, 1)
    with pytest.raises(DataError, match="prepare folder --root"):
        open_dataset("folder", None, 16, 1)
    assert main(argv) == 0
    assert "prepared 0, skipped (already done) 10, failed 0 images" in capsys.readouterr().err
    assert main(argv[:-5] + ["--frames", "4"]) == 2
    assert "--frames does not apply to prepare folder" in capsys.readouterr().err


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        folder_items(tmp_path / "nope")
    write_images(tmp_path / "x" / "misc", 2)
    with pytest.raises(DataError, match="no images in real/ and fake/"):
        folder_items(tmp_path / "x")
    assert check_name("folder") == "folder" and check_name("my-gan_2") == "my-gan_2"
    for bad in ("ff_c40", "../up", ""):
        with pytest.raises(DataError, match="--name"):
            check_name(bad)
