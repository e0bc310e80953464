"""Tests for the synthetic FF++-shaped dataset generator (tiny configs, seconds)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import kdbench.data.synthetic.tree as synthetic
from kdbench.data.synthetic import (
    MANIPULATIONS,
    SynthConfig,
    face_masks,
    fake_path,
    generate,
    make_splits,
    real_path,
    synthesize,
)
from kdbench.data.video import read_frames
from kdbench.errors import DataError

TINY = SynthConfig(seed=0, pairs=(2, 1, 1), size=32, frames=4)


def all_videos(root: Path) -> list[Path]:
    return sorted(root.rglob("*.mp4"))


def decoded(root: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(root)): read_frames(p) for p in all_videos(root)}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "ff"
    return generate(root, TINY, workers=1, progress=False)


def test_layout_and_file_counts(tiny_root: Path) -> None:
    n_pairs = sum(TINY.pairs)
    reals = sorted((tiny_root / "original_sequences/youtube/c40/videos").glob("*.mp4"))
    assert len(reals) == 2 * n_pairs
    for method in MANIPULATIONS:
        fakes = sorted((tiny_root / f"manipulated_sequences/{method}/c40/videos").glob("*.mp4"))
        assert len(fakes) == 2 * n_pairs
    assert len(all_videos(tiny_root)) == 2 * n_pairs * (1 + len(MANIPULATIONS))
    for split in ("train", "val", "test"):
        for a, b in json.loads((tiny_root / "splits" / f"{split}.json").read_text()):
            assert real_path(tiny_root, a).is_file() and real_path(tiny_root, b).is_file()
            for method in MANIPULATIONS:
                assert fake_path(tiny_root, method, a, b).is_file()
                assert fake_path(tiny_root, method, b, a).is_file()
    frames = read_frames(reals[0])
    assert frames.shape == (TINY.frames, TINY.size, TINY.size, 3)
    marker = json.loads((tiny_root / "synth.json").read_text())
    assert marker["config"] == TINY.to_dict() and "format" in marker
    assert SynthConfig.from_dict(marker["config"]) == TINY
    assert not list(tiny_root.rglob("*.tmp")) and not (tiny_root / ".synth-partial.json").exists()


def test_splits_format_and_disjoint_identities(tiny_root: Path) -> None:
    seen: set[str] = set()
    for split, n in zip(("train", "val", "test"), TINY.pairs, strict=True):
        pairs = json.loads((tiny_root / "splits" / f"{split}.json").read_text())
        assert isinstance(pairs, list) and len(pairs) == n
        ids = set()
        for pair in pairs:
            assert isinstance(pair, list) and len(pair) == 2
            for ident in pair:
                assert isinstance(ident, str) and len(ident) == 3 and ident.isdigit()
            ids.update(pair)
        assert len(ids) == 2 * n  # no identity twice within a split
        assert not ids & seen  # nor across splits
        seen |= ids
    assert make_splits(TINY) == {
        s: json.loads((tiny_root / "splits" / f"{s}.json").read_text())
        for s in ("train", "val", "test")
    }


def test_deterministic_and_independent_of_workers(tiny_root: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", TINY, workers=2, progress=False)
    first, second = decoded(tiny_root), decoded(again)
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    other = generate(
        tmp_path / "other", SynthConfig(**{**TINY.__dict__, "seed": 1}), workers=1, progress=False
    )
    a, _ = make_splits(TINY)["train"][0]
    other_frames = read_frames(real_path(other, a))
    assert (
        np.abs(
            other_frames.astype(int) - first[str(real_path(tiny_root, a).relative_to(tiny_root))]
        ).mean()
        > 5
    )


def test_second_call_does_no_work(tiny_root: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny_root.rglob("*") if p.is_file()}
    start = time.perf_counter()
    assert generate(tiny_root, TINY, workers=1, progress=False) == tiny_root
    assert time.perf_counter() - start < 1.0
    after = {p: p.stat().st_mtime_ns for p in tiny_root.rglob("*") if p.is_file()}
    assert after == before


def test_different_config_raises(tiny_root: Path) -> None:
    with pytest.raises(DataError, match="different synthetic dataset.*--data-root"):
        generate(tiny_root, SynthConfig(**{**TINY.__dict__, "seed": 7}), progress=False)


def test_foreign_dataset_folder_is_not_overwritten(tmp_path: Path) -> None:
    video = tmp_path / "original_sequences" / "youtube" / "c40" / "videos" / "000.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"precious")
    with pytest.raises(DataError, match="--data-root"):
        generate(tmp_path, TINY, progress=False)
    assert video.read_bytes() == b"precious"


def test_interrupted_run_resumes_to_the_same_result(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = synthetic.write_video
    calls = {"n": 0}

    def flaky_write(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] > 7:
            raise KeyboardInterrupt
        real_write(*args, **kwargs)

    monkeypatch.setattr(synthetic, "write_video", flaky_write)
    root = tmp_path / "resume"
    with pytest.raises(KeyboardInterrupt):
        generate(root, TINY, workers=1, progress=False)
    assert not (root / "synth.json").exists() and len(all_videos(root)) == 7
    monkeypatch.setattr(synthetic, "write_video", real_write)
    with pytest.raises(DataError):  # an unfinished run with another config is refused
        generate(root, SynthConfig(**{**TINY.__dict__, "seed": 3}), progress=False)
    generate(root, TINY, workers=1, progress=False)
    assert (root / "synth.json").exists()
    first, resumed = decoded(tiny_root), decoded(root)
    assert first.keys() == resumed.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], resumed[key], err_msg=key)


def test_fakes_differ_from_real_mainly_inside_the_face(tmp_path: Path) -> None:
    cfg = SynthConfig(seed=3, pairs=(1, 0, 0), size=64, frames=3)
    root = generate(tmp_path / "ff", cfg, workers=1, progress=False)
    a, b = make_splits(cfg)["train"][0]
    masks = face_masks(cfg, int(a))
    assert masks.shape == (3, 64, 64) and masks.max() > 0.99 and masks.min() < 0.01
    real = read_frames(real_path(root, a)).astype(np.float64)
    raw = synthesize(cfg, int(a), int(b))
    assert set(raw) == {"real", *MANIPULATIONS}
    for method in MANIPULATIONS:
        fake = read_frames(fake_path(root, method, a, b)).astype(np.float64)
        assert fake.shape == real.shape
        diff = np.abs(fake - real).mean(-1)
        raw_diff = np.abs(raw[method].astype(np.float64) - raw["real"]).mean(-1)
        for i, mask in enumerate(masks):
            inside, outside = mask > 0.5, mask < 0.05
            assert diff[i][inside].mean() > diff[i][outside].mean(), (method, i)
            # before compression the manipulation touches (almost) nothing outside the face
            assert raw_diff[i][inside].mean() > 0.5 and raw_diff[i][outside].mean() < 0.5


def test_config_validation() -> None:
    with pytest.raises(DataError):
        SynthConfig(size=33)
    with pytest.raises(DataError):
        SynthConfig(pairs=(0, 0, 0))
    assert SynthConfig.from_dict(SynthConfig().to_dict()) == SynthConfig()
