"""The AI-generated image datasets' layouts listed for preparation: ForenSynths, Synthbuster
(splits by RAISE id), GenImage (its val as the test split, its corrupt-file lists)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kdbench.data.prepare_generated import (
    forensynths_items,
    genimage_items,
    manifest,
    read_skip_lists,
    synthbuster_items,
)
from kdbench.data.reencode import parse_reencode, reencode
from kdbench.errors import DataError


def _image(path: Path, value: int = 0, suffix: str = ".png") -> Path:
    path = path.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(path)
    return path


def test_forensynths_lists_progan_classes_and_each_test_generator_with_its_reals(tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "car"):
            for k in range(2):
                _image(tmp_path / split / cls / "0_real" / f"r{k}")
                _image(tmp_path / split / cls / "1_fake" / f"f{k}")
    _image(tmp_path / "test/biggan/0_real/a")  # flat
    _image(tmp_path / "test/biggan/1_fake/b")
    _image(tmp_path / "test/stylegan/bedroom/0_real/c", suffix=".jpg")  # with classes
    _image(tmp_path / "test/stylegan/bedroom/1_fake/d")
    rows = forensynths_items(tmp_path)
    assert Counter(r.item.split for r in rows) == {"train": 8, "val": 8, "test": 4}
    train = [r for r in rows if r.item.split == "train"]
    assert {r.generator for r in train} == {"progan"} and {r.content for r in train} == {"cat",
                                                                                       "car"}
    test = {r.item.video: r for r in rows if r.item.split == "test"}
    assert test["test/biggan/0_real/a.png"].generator == "biggan"  # its own reals
    assert test["test/biggan/0_real/a.png"].family == "real"
    assert test["test/biggan/1_fake/b.png"].family == "gan"
    assert test["test/stylegan/bedroom/1_fake/d.png"].content == "bedroom"
    assert test["test/stylegan/bedroom/0_real/c.jpg"].item.label == 0
    with pytest.raises(DataError, match="not a ForenSynths folder"):
        forensynths_items(tmp_path / "test")


def test_synthbuster_splits_by_raise_id_so_no_id_is_in_two_splits(tmp_path):
    ids = [f"r{k:08x}t" for k in range(30)]
    for gen in ("dalle2", "stable-diffusion-xl"):
        for i in ids:
            _image(tmp_path / "sb" / gen / i)
    for i in ids:
        _image(tmp_path / "raise" / i, suffix=".tif")
    rows = synthbuster_items(tmp_path / "sb", tmp_path / "raise", seed=3)
    assert len(rows) == 90 and Counter(r.item.label for r in rows) == {1: 60, 0: 30}
    split_of: dict[str, set[str]] = {}
    for r in rows:
        split_of.setdefault(r.pair, set()).add(r.item.split)
    assert all(len(s) == 1 for s in split_of.values())  # an id's fakes and real: one split
    assert Counter(next(iter(s)) for s in split_of.values()) == {"train": 24, "val": 3,
                                                               "test": 3}
    assert {r.family for r in rows if r.item.label} == {"diffusion"}
    assert rows == synthbuster_items(tmp_path / "sb", tmp_path / "raise", seed=3)  # seeded
    with pytest.raises(DataError, match="--raise DIR"):
        synthbuster_items(tmp_path / "sb", tmp_path / "nothing")


def test_genimage_takes_val_as_test_holds_out_val_and_skips_listed_corrupt_files(tmp_path):
    root = tmp_path / "genimage"
    for folder in ("imagenet_ai_0419_sdv4", "imagenet_ai_0419_biggan"):
        for split, n in (("train", 20), ("val", 3)):
            for k in range(n):
                _image(root / folder / split / "ai" / f"{k:03d}_x_{k}")
                _image(root / folder / split / "nature" / f"n{k}", suffix=".JPEG")
    listed = tmp_path / "corrupted_files" / "imagenet_ai_0419_sdv4.txt"
    listed.parent.mkdir()
    listed.write_text("./imagenet_ai_0419_sdv4/train/nature/n0.JPEG\n"
                      "./data/imagenet_ai_0419_sdv4/train/ai/001_x_1.png\n")
    skip = read_skip_lists([listed])
    rows = genimage_items(root, skip, seed=0)
    videos = {r.item.video for r in rows}
    assert "imagenet_ai_0419_sdv4/train/nature/n0.JPEG" not in videos
    assert "imagenet_ai_0419_sdv4/train/ai/001_x_1.png" not in videos
    assert len(rows) == 2 * (40 + 6) - 2
    assert Counter(r.item.split for r in rows)["test"] == 12  # GenImage's val
    assert 0 < Counter(r.item.split for r in rows)["val"] < 20
    fakes = {r.generator: r.family for r in rows if r.item.label}
    assert fakes == {"sd-v1.4": "diffusion", "biggan": "gan"}
    assert {r.content for r in rows if r.item.label} >= {"000", "019"}  # ImageNet class ids
    with pytest.raises(DataError, match="not a GenImage folder"):
        genimage_items(tmp_path / "corrupted_files")


def test_the_manifest_keeps_each_images_original_format_and_size(tmp_path):
    _image(tmp_path / "train/cat/0_real/r", suffix=".jpg")
    _image(tmp_path / "train/cat/1_fake/f")
    _image(tmp_path / "test/san/1_fake/g")
    (tmp_path / "test/san/0_real").mkdir(parents=True)
    (tmp_path / "test/san/0_real/broken.png").write_bytes(b"not an image")
    table = manifest(forensynths_items(tmp_path)).set_index("video")
    assert table.loc["train/cat/0_real/r.jpg", ["format", "width", "family"]].tolist() == [
        "jpeg", 4, "real"]
    assert table.loc["train/cat/1_fake/f.png", "format"] == "png"
    assert table.loc["test/san/0_real/broken.png", "format"] == "unreadable"
    assert table.loc["test/san/1_fake/g.png", ["generator", "split"]].tolist() == ["san", "test"]


def test_reencoding_gives_reals_and_fakes_one_compression(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert reencode(image, parse_reencode("none")) is image
    lossy = reencode(image, parse_reencode("jpeg:50"))
    assert lossy.shape == image.shape and not np.array_equal(lossy, image)
    assert np.abs(reencode(image, parse_reencode("jpeg:100")).astype(int) - image).mean() < \
        np.abs(lossy.astype(int) - image).mean()
    for bad in ("jpeg", "jpeg:0", "jpeg:101", "webp", "png"):
        with pytest.raises(DataError, match="--reencode"):
            parse_reencode(bad)


def _forensynths_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for cls in ("cat", "car"):
            for k in range(n):
                _image(root / split / cls / "0_real" / f"r{k}", int(rng.integers(0, 120)),
                       ".jpg")
                _image(root / split / cls / "1_fake" / f"f{k}", int(rng.integers(120, 256)))
    for gen in ("biggan", "san"):
        for k in range(3):
            _image(root / "test" / gen / "0_real" / f"r{k}", int(rng.integers(0, 120)), ".jpg")
            _image(root / "test" / gen / "1_fake" / f"f{k}", int(rng.integers(120, 256)))
    (root / "test/san/1_fake/broken.png").write_bytes(b"not an image")


@pytest.mark.slow
def test_prepare_forensynths_writes_the_manifest_and_a_run_trains_on_it(tmp_path, capsys):
    from kdbench import api
    from kdbench.cli import main

    _forensynths_tree(tmp_path / "fs")
    out = tmp_path / "prep"
    assert main(["prepare", "forensynths", "--root", str(tmp_path / "fs"), "--out", str(out),
                 "--size", "16", "--reencode", "jpeg:90", "--workers", "1",
                 "--no-progress"]) == 0
    assert "failed 1 images" in capsys.readouterr().err  # the unreadable one, counted
    table = pd.read_csv(out / "manifest.csv")
    assert len(table) == 49 and table["prepared"].sum() == 48
    assert set(table.loc[table.label == 0, "format"]) == {"jpeg"}
    assert set(table.loc[(table.label == 1) & table.prepared, "format"]) == {"png"}
    meta = json.loads((out / "prepared.json").read_text())
    assert meta["reencode"] == "jpeg:90" and meta["crop"] == "center" and meta["failed"] == 1
    assert main(["table", "--kind", "shortcut", "--data-root", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "| format | 24 | 12 | 100.00 | 100.00 |" in shown  # JPEG reals, PNG fakes
    assert main(["table", "--kind", "shortcut"]) == 2
    assert "--data-root DIR" in capsys.readouterr().err
    summary = api.run("vanilla", "forensynths", data_root=out, preset="quick",
                      results=tmp_path / "R", settings={"data.size": 16, "train.epochs": 1},
                      progress=False)
    assert summary.trained == 1
    run = tmp_path / "R/runs/forensynths/resnet18_thin/vanilla/none/seed0"
    assert json.loads((run / "metrics.json").read_text())["prepared"]["reencode"] == "jpeg:90"
    scores, student = api.predict([tmp_path / "fs/test/biggan/1_fake/f0.png"], run=run,
                                  progress=False)
    assert student.reencode == "jpeg:90" and scores[0].error is None  # re-encoded as prepared
    assert main(["prepare", "forensynths", "--root", str(tmp_path / "fs"), "--out",
                 str(tmp_path / "p2"), "--reencode", "jpeg:0"]) == 2
    assert "--reencode 'jpeg:0'" in capsys.readouterr().err
    assert main(["prepare", "synthbuster", "--root", str(tmp_path / "fs"), "--out",
                 str(tmp_path / "p3")]) == 2
    assert "needs --raise" in capsys.readouterr().err


def test_the_shortcut_baseline_sees_a_format_difference_and_nothing_where_there_is_none():
    from kdbench.data.shortcut import shortcut_baseline

    rng = np.random.default_rng(0)
    n = 200
    label = rng.integers(0, 2, n)
    base = {"label": label, "split": np.where(np.arange(n) < 120, "train", "test"),
            "width": rng.choice([256, 512], n), "height": rng.choice([256, 512], n)}
    leaky = pd.DataFrame({**base, "format": np.where(label == 1, "png", "jpeg")})
    rows = {r["features"]: r for r in shortcut_baseline(leaky)}
    assert rows["format"]["auc"] == 1.0 and rows["format"]["acc"] == 1.0
    assert abs(rows["size"]["auc"] - 0.5) < 0.2  # sizes drawn apart from the label
    clean = pd.DataFrame({**base, "format": "jpeg"})
    assert {r["features"]: r["auc"] for r in shortcut_baseline(clean)}["format"] == 0.5


def test_genimage_splits_do_not_depend_on_what_else_is_listed(tmp_path):
    root = tmp_path / "genimage"
    for k in range(30):
        _image(root / "imagenet_glide" / "train" / "ai" / f"{k:03d}_g")
        _image(root / "imagenet_glide" / "train" / "nature" / f"n{k}", suffix=".JPEG")
    _image(root / "imagenet_glide" / "val" / "ai" / "000_v")
    _image(root / "imagenet_glide" / "val" / "nature" / "nv", suffix=".JPEG")
    first = {r.item.video: r.item.split for r in genimage_items(root, seed=1)}
    skip = {"imagenet_glide/train/ai/000_g.png"}
    second = {r.item.video: r.item.split for r in genimage_items(root, skip, seed=1)}
    assert all(second[v] == first[v] for v in second) and len(second) == len(first) - 1
    assert set(first.values()) == {"train", "val", "test"}


def test_a_cache_resumed_with_other_reencoding_or_crop_settings_is_one_line(tmp_path, capsys):
    from kdbench.cli import main

    _forensynths_tree(tmp_path / "fs")
    out = str(tmp_path / "prep")
    common = ["prepare", "forensynths", "--root", str(tmp_path / "fs"), "--size", "8",
              "--workers", "1", "--no-progress"]
    assert main([*common, "--out", out, "--reencode", "jpeg:90"]) == 0
    capsys.readouterr()
    assert main([*common, "--out", out]) == 2
    assert "was prepared with reencode 'jpeg:90'" in capsys.readouterr().err
    assert main([*common, "--out", out, "--crop", "resize", "--detector", "dlib"]) == 2
    assert "give --crop or --detector, not both" in capsys.readouterr().err


def test_the_archives_folder_names_and_wrappers_are_understood(tmp_path):
    for split in ("progan_train", "progan_val"):
        _image(tmp_path / "fs" / split / "cat" / "0_real" / "r")
        _image(tmp_path / "fs" / split / "cat" / "1_fake" / "f")
    _image(tmp_path / "fs/CNN_synth_testset/crn/0_real/r")
    _image(tmp_path / "fs/CNN_synth_testset/crn/1_fake/f")
    rows = forensynths_items(tmp_path / "fs")
    assert Counter(r.item.split for r in rows) == {"train": 2, "val": 2, "test": 2}
    (tmp_path / "fs/CNN_synth_testset/empty").mkdir()
    with pytest.raises(DataError, match="empty holds no images"):
        forensynths_items(tmp_path / "fs")

    ids = [f"r{k:08x}t" for k in range(10)]
    for i in ids:
        _image(tmp_path / "sb" / "synthbuster" / "dalle3" / i)  # a wrapper folder
        _image(tmp_path / "raise" / i, suffix=".tif")
    _image(tmp_path / "raise" / ids[0], suffix=".png")  # a converted copy: one real per id
    _image(tmp_path / "raise" / "r99999999t", suffix=".tif")  # an id without fakes
    rows = synthbuster_items(tmp_path / "sb", tmp_path / "raise")
    reals = [r for r in rows if r.item.label == 0]
    assert len(reals) == 10 and {Path(r.item.path).suffix for r in reals} == {".tif"}
    with pytest.raises(DataError, match="none of Synthbuster's generator folders"):
        synthbuster_items(tmp_path / "raise", tmp_path / "raise")


def test_genimage_drive_and_readme_layouts_and_its_class_names(tmp_path):
    drive = tmp_path / "drive" / "ADM" / "imagenet_ai_0508_adm"
    _image(drive / "train/ai/007_adm_1")
    _image(drive / "train/nature/n01440764_10", suffix=".JPEG")
    _image(drive / "val/ai/008_adm_2")
    _image(drive / "val/nature/ILSVRC2012_val_00000001", suffix=".JPEG")
    readme = tmp_path / "drive" / "glide"  # a README-named folder holding train/ and val/
    _image(readme / "train/ai/GLIDE_1000_200_08_808_glide_00033")
    _image(readme / "val/ai/GLIDE_1000_200_08_809_glide_00034")
    skip = {"imagenet_glide/val/ai/GLIDE_1000_200_08_809_glide_00034.png", "imagenet_x/a.png"}
    rows = genimage_items(tmp_path / "drive", skip)
    fakes = {r.generator: r.family for r in rows if r.item.label}
    assert fakes == {"adm": "diffusion", "glide": "diffusion"}
    content = {Path(r.item.path).stem: r.content for r in rows}
    assert content == {"007_adm_1": "007", "n01440764_10": "n01440764", "008_adm_2": "008",
                       "ILSVRC2012_val_00000001": "", "GLIDE_1000_200_08_808_glide_00033": "808"}
