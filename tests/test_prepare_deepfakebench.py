"""`prepare deepfakebench`: DeepfakeBench's rearranged JSON and extracted frames -> a prepared
folder with DeepfakeBench's splits and video ids; missing frames counted and skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdbench.cli import main
from kdbench.data.datasets import open_dataset
from kdbench.data.prepare_deepfakebench import deepfakebench_items
from kdbench.errors import DataError

FF = "FaceForensics++"
SPLIT_PAIRS = {"train": [("000", "001"), ("002", "003")], "val": [("004", "005")],
               "test": [("006", "007")]}


def write_frames(folder: Path, n: int, level: int) -> list[Path]:
    """``n`` flat 24x24 PNG frames of grey ``level`` (+ frame number), as DeepfakeBench's
    preprocess.py names them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = folder / f"{k * 10:03d}.png"
        Image.fromarray(np.full((24, 24, 3), level + k, np.uint8)).save(path)
        paths.append(path)
    return paths


def ff_tree(rgb: Path, old_prefix: str = "/mnt/elsewhere/rgb") -> Path:
    """FF++ c23 frames under ``rgb`` (DeepfakeBench's rgb_dir) and its FF-DF.json. Real frame
    paths are absolute from another machine (``old_prefix``), fake ones relative to rgb_dir,
    as in DeepfakeBench's released JSONs; fake ``006_007`` lists a frame that is not there."""
    real = {s: {} for s in SPLIT_PAIRS}
    fake = {s: {} for s in SPLIT_PAIRS}
    level = 20
    for split, pairs in SPLIT_PAIRS.items():
        for a, b in pairs:
            for vid in (a, b):
                rel = Path(FF, "original_sequences", "youtube", "c23", "frames", vid)
                write_frames(rgb / rel, 4, level)
                real[split][vid] = {"label": "FF-real", "frames": [
                    f"{old_prefix}/{rel.as_posix()}/{k * 10:03d}.png" for k in (3, 1, 0, 2)]}
                level += 10
            key = f"{a}_{b}"
            rel = Path(FF, "manipulated_sequences", "Deepfakes", "c23", "frames", key)
            write_frames(rgb / rel, 4, level)
            listed = [f"{rel.as_posix()}/{k * 10:03d}.png" for k in range(4)]
            if key == "006_007":
                listed.append(f"{rel.as_posix()}/999.png")  # listed, never extracted
            fake[split][key] = {"label": "FF-DF", "frames": listed, "masks": []}
            level += 10
    data = {"FF-DF": {"FF-real": {s: {"c23": v} for s, v in real.items()},
                      "FF-DF": {s: {"c23": v} for s, v in fake.items()}}}
    path = rgb.parent / "FF-DF.json"
    path.write_text(json.dumps(data))
    return path


def test_listing_keeps_splits_ids_and_frame_order(tmp_path):
    rgb = tmp_path / "rgb"
    json_path = ff_tree(rgb)
    listing = deepfakebench_items(rgb, json_path)
    assert listing.compression == "c23" and listing.datasets == ["FF-DF"]
    by_id = {it.video: it for it in listing.items}
    assert len(by_id) == 12
    assert by_id["FF-real/004"].split == "val" and by_id["FF-real/004"].label == 0
    assert by_id["FF-DF/006_007"].split == "test" and by_id["FF-DF/006_007"].label == 1
    assert by_id["FF-DF/006_007"].manipulation == "FF-DF"
    assert by_id["FF-real/000"].manipulation == "real"
    real_frames = by_id["FF-real/000"].frames  # re-rooted at rgb, in frame order
    assert [Path(p).name for p in real_frames] == ["000.png", "010.png", "020.png", "030.png"]
    assert all(Path(p).is_file() and Path(p).is_relative_to(rgb) for p in real_frames)
    thinned = deepfakebench_items(rgb, json_path, frames=2).items
    assert [Path(p).name for p in thinned[0].frames] == ["010.png", "030.png"]  # centres


def test_cli_prepare_then_open_and_run(tmp_path, capsys):
    rgb = tmp_path / "rgb"
    json_path = ff_tree(rgb)
    out = tmp_path / "prepared"
    argv = ["prepare", "deepfakebench", "--root", str(rgb), "--json", str(json_path),
            "--name", "dfb_ff", "--out", str(out), "--size", "16", "--workers", "1",
            "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "prepared 12, skipped (already done) 0, failed 0 videos (1 listed frames missing" in err
    meta = json.loads((out / "prepared.json").read_text())
    assert meta["source"] == "deepfakebench" and meta["dataset"] == "dfb_ff"
    assert meta["detector"] == "full" and meta["compression"] == "c23"
    assert meta["missing_frames"] == 1 and meta["rows"] == 48
    data = open_dataset("dfb_ff", out, 16, 4)  # what `kdbench run --dataset dfb_ff` opens
    assert data.index.groupby("split").video.nunique().to_dict() == {"train": 6, "val": 3,
                                                                     "test": 3}
    rows = data.index[data.index.video == "FF-real/000"].sort_values("frame")
    means = [float(data.frames[r].mean()) for r in rows.row]
    assert np.allclose(means, [20, 21, 22, 23], atol=1)  # whole frame, in frame order
    results = tmp_path / "results"
    run = ["run", "--dataset", "dfb_ff", "--data-root", str(out), "--methods", "vanilla",
           "--preset", "quick", "--set", "data.size=16", "--set", "train.epochs=1",
           "--set", "data.frames=2", "--results", str(results), "--no-progress"]
    assert main(run) == 0
    metrics = list(results.rglob("metrics.json"))
    assert metrics and "auc" in json.loads(metrics[0].read_text())["test"]
    assert main(argv) == 0  # resumes
    assert "prepared 0, skipped (already done) 12" in capsys.readouterr().err


def test_several_splits_and_levels(tmp_path, capsys):
    rgb = tmp_path / "rgb"
    frames = [p.relative_to(rgb).as_posix() for p in write_frames(rgb / "Celeb-DF-v2" / "v", 2, 9)]
    entry = {"label": "CelebDFv2_real", "frames": frames}
    fake = {"label": "CelebDFv2_fake", "frames": frames}
    celeb = {"Celeb-DF-v2": {  # as rearrange.py writes it: the test videos also val and train
        "CelebDFv2_real": {"train": {"a": entry, "b": entry}, "val": {"b": entry},
                           "test": {"b": entry}},
        "CelebDFv2_fake": {"train": {"c": fake}, "val": {}, "test": {}}}}
    path = tmp_path / "Celeb-DF-v2.json"
    path.write_text(json.dumps(celeb))
    listing = deepfakebench_items(rgb, path)
    assert {it.video: it.split for it in listing.items} == {
        "CelebDFv2_fake/c": "train", "CelebDFv2_real/a": "train", "CelebDFv2_real/b": "test"}
    assert listing.overlaps == {"train+val+test": 1} and listing.compression is None
    with pytest.raises(DataError, match="no compression levels; leave out --compression"):
        deepfakebench_items(rgb, path, compression="c23")
    out = tmp_path / "out"
    assert main(["prepare", "deepfakebench", "--root", str(rgb), "--json", str(path), "--name",
                 "cdf", "--out", str(out), "--size", "8", "--workers", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "(train+val+test: 1) are kept once, in test over val over train" in err
    assert "lists no val videos" in err
    levels = {"X": {"X-real": {"train": {"c23": {"a": entry}, "c40": {"a": entry}}}}}
    path.write_text(json.dumps(levels))
    with pytest.raises(DataError, match="levels c23, c40; choose one with --compression"):
        deepfakebench_items(rgb, path)
    assert [it.video for it in deepfakebench_items(rgb, path, "c40").items] == ["X-real/a"]
    with pytest.raises(DataError, match="has no compression raw; it holds c23, c40"):
        deepfakebench_items(rgb, path, "raw")


def test_errors(tmp_path, capsys):
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    with pytest.raises(DataError, match="JSON .*nope.json not found"):
        deepfakebench_items(rgb, tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="is not valid JSON"):
        deepfakebench_items(rgb, tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not a DeepfakeBench dataset JSON"):
        deepfakebench_items(rgb, tmp_path / "list.json")
    (tmp_path / "empty.json").write_text('{"D": {"D-real": {"train": {}}}}')
    with pytest.raises(DataError, match="lists no videos with frames"):
        deepfakebench_items(rgb, tmp_path / "empty.json")
    with pytest.raises(DataError, match="not found; --root is DeepfakeBench's rgb_dir"):
        deepfakebench_items(tmp_path / "none", tmp_path / "empty.json")
    base = ["prepare", "deepfakebench", "--root", str(rgb), "--out", str(tmp_path / "o")]
    assert main([*base, "--name", "x"]) == 2
    assert "prepare deepfakebench needs --json" in capsys.readouterr().err
    assert main([*base, "--json", str(tmp_path / "empty.json")]) == 2
    assert "prepare deepfakebench needs --name" in capsys.readouterr().err
    assert main([*base, "--json", "j", "--name", "ff_c40"]) == 2
    assert "--name 'ff_c40' is not usable" in capsys.readouterr().err
    assert main(["prepare", "folder", "--root", str(rgb), "--out", "o", "--json", "j"]) == 2
    assert "--json does not apply to prepare folder" in capsys.readouterr().err
