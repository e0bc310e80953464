"""synthetic_gen: the embedded AI-generated image stand-in: its layout and manifest, drawn the
same every time, and each generator's trace present as its docstring says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdbench.data.datasets import open_dataset
from kdbench.data.synthetic import generated
from kdbench.data.synthetic.generated import GENERATORS, real


def _high_frequency(img: np.ndarray) -> float:
    """Mean energy of the horizontal and vertical pixel differences (grey)."""
    g = img.astype(float).mean(axis=2)
    return float((np.diff(g, axis=0) ** 2).mean() + (np.diff(g, axis=1) ** 2).mean())


def _draw(name: str, n: int = 12, size: int = 64) -> list[np.ndarray]:
    return [GENERATORS[name][1](np.random.default_rng([7, k]), size) for k in range(n)]


def _reals(n: int = 12, size: int = 64) -> list[np.ndarray]:
    return [real(np.random.default_rng([7, k]), size) for k in range(n)]


def test_nearest_up_repeats_each_pixel_in_2x2_blocks():
    for img in _draw("nearest-up", 3):
        assert np.array_equal(img[0::2], img[1::2]) and np.array_equal(img[:, 0::2],
                                                                        img[:, 1::2])
    assert not all(np.array_equal(r[0::2], r[1::2]) for r in _reals(3))


def test_periodic_puts_a_peak_at_the_4_pixel_frequency():
    def peak(img: np.ndarray) -> float:
        f = np.abs(np.fft.fft2(img.astype(float).mean(axis=2) - img.mean()))
        return float(f[16, 16] / np.median(f))  # 64 / 4 = 16 cycles in both directions

    assert np.median([peak(i) for i in _draw("periodic")]) > 3 * np.median(
        [peak(i) for i in _reals()])


@pytest.mark.parametrize("name", ["bilinear-up", "denoised"])
def test_the_diffusion_like_generators_lack_the_finest_detail(name):
    assert np.median([_high_frequency(i) for i in _draw(name)]) < np.median(
        [_high_frequency(i) for i in _reals()])


def test_synthetic_gen_is_drawn_once_the_same_with_its_manifest(tmp_path, monkeypatch):
    monkeypatch.setattr(generated, "PER_SPLIT", {"train": 4, "val": 2, "test": 2})
    data = open_dataset("synthetic_gen", tmp_path, 32, 8, progress=False)
    n = len(GENERATORS) * 2 * 8
    assert data.frames.shape == (n, 32, 32, 3) and len(data.index) == n
    assert data.index.groupby("split").size().to_dict() == {"train": n // 2, "val": n // 4,
                                                            "test": n // 4}
    manifest = pd.read_csv(data.root / "manifest.csv")
    fakes = manifest[manifest.label == 1].groupby("generator")["family"].first().to_dict()
    assert fakes == {name: family for name, (family, _) in GENERATORS.items()}
    assert set(manifest.loc[manifest.label == 0, "family"]) == {"real"}
    (tmp_path / "other").mkdir()
    again = open_dataset("synthetic_gen", tmp_path / "other", 32, 8, progress=False)
    assert np.array_equal(np.asarray(data.frames), np.asarray(again.frames))


@pytest.mark.slow
def test_a_run_trains_on_synthetic_gen(tmp_path, monkeypatch):
    from kdbench import api

    monkeypatch.setattr(generated, "PER_SPLIT", {"train": 16, "val": 4, "test": 4})
    (tmp_path / "data").mkdir()
    summary = api.run("vanilla", "synthetic_gen", data_root=tmp_path / "data", preset="quick",
                      results=tmp_path / "R", settings={"data.size": 32, "train.epochs": 1},
                      progress=False)
    assert summary.trained == 1


def test_a_protocol_keeps_its_generators_fakes_and_their_reals(tmp_path, monkeypatch):
    from kdbench.data.generators import fake_generators, select, with_generators
    from kdbench.errors import DataError

    monkeypatch.setattr(generated, "PER_SPLIT", {"train": 2, "val": 1, "test": 1})
    data = open_dataset("synthetic_gen", tmp_path, 16, 1, progress=False)
    index = with_generators(data.index, data.root)
    assert fake_generators(index) == sorted(GENERATORS)
    held_out = "periodic"
    kept = select(index, train=[g for g in GENERATORS if g != held_out], test=[held_out])
    train = kept[kept.split.isin(["train", "val"])]
    assert held_out not in set(train.generator) and len(train) == 4 * 2 * 3
    assert set(kept.loc[kept.split == "test", "generator"]) == {held_out}
    assert kept.loc[kept.split == "test", "label"].tolist().count(0) == 1  # its own real
    assert len(select(index)) == len(index)
    with pytest.raises(DataError, match="unknown generator 'periodc' \\(did you mean "
                       "'periodic'\\?\\); the test split holds"):
        select(index, test=["periodc"])


def test_reals_of_no_generator_stay_in_every_selection():
    from kdbench.data.generators import select, with_generators

    index = pd.DataFrame({"row": range(6), "video": list("abcdef"), "label": [0, 0, 1, 1, 1, 1],
                          "manipulation": ["real", "real", "A", "B", "A", "B"],
                          "split": ["train", "test", "train", "train", "test", "test"]})
    index = with_generators(index, Path("/nonexistent"))
    kept = select(index, train=["A"], test=["B"])
    assert kept["video"].tolist() == ["a", "b", "c", "f"]


def test_every_generator_draws_odd_sizes_too():
    for name, (_, draw) in GENERATORS.items():
        assert draw(np.random.default_rng(0), 33).shape == (33, 33, 3), name


def test_another_draw_gets_another_folder(tmp_path, monkeypatch):
    from kdbench.data.synthetic.generated import generated_folder

    first = generated_folder(tmp_path, 32)
    monkeypatch.setattr(generated, "PER_SPLIT", {"train": 1, "val": 1, "test": 1})
    assert generated_folder(tmp_path, 32) != first
    assert generated_folder(tmp_path, 32) != generated_folder(tmp_path, 64)
