"""Tests for kdbench.data.video: H.264 write/read round trip, frame selection, errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kdbench.data.video import evenly_spaced, read_frames, write_video
from kdbench.errors import DataError, VideoError


def smooth_clip(frames: int = 8, h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth moving colour gradient, easy for the codec."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    clip = [
        np.stack([40 + 2.5 * xx + 3 * t, 60 + 2.0 * yy, np.full_like(xx, 128.0)], axis=-1)
        for t in range(frames)
    ]
    return np.clip(np.stack(clip), 0, 255).astype(np.uint8)


def levels_clip(levels: list[int], h: int = 32, w: int = 32) -> np.ndarray:
    """Frame t is uniformly grey at ``levels[t]``, so each decoded frame names its index."""
    return np.stack([np.full((h, w, 3), lv, np.uint8) for lv in levels])


def test_round_trip_shape_dtype_and_content(tmp_path: Path) -> None:
    clip = smooth_clip()
    path = tmp_path / "a" / "b" / "clip.mp4"  # parent folders are created
    write_video(path, clip, fps=25, qp=40)
    assert path.is_file() and path.stat().st_size > 0
    out = read_frames(path)
    assert out.shape == clip.shape and out.dtype == np.uint8
    err = np.abs(out.astype(np.int16) - clip.astype(np.int16)).mean()
    assert err < 6.0, f"mean abs error {err:.2f} too large for a smooth clip at QP 40"
    # lossless-ish QP is much closer than QP 40 (the qp option is honoured)
    write_video(tmp_path / "hq.mp4", clip, qp=10)
    err_hq = np.abs(read_frames(tmp_path / "hq.mp4").astype(np.int16) - clip).mean()
    assert err_hq < err


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    write_video(path, smooth_clip(frames=3))
    assert sorted(os.listdir(tmp_path)) == ["v.mp4"]
    with pytest.raises(VideoError):  # odd width cannot be yuv420p
        write_video(tmp_path / "odd.mp4", np.zeros((2, 32, 33, 3), np.uint8))
    with pytest.raises(VideoError):
        write_video(tmp_path / "float.mp4", np.zeros((2, 32, 32, 3), np.float32))
    assert sorted(os.listdir(tmp_path)) == ["v.mp4"]


def test_read_evenly_spaced_frames(tmp_path: Path) -> None:
    levels = [20 + 20 * t for t in range(10)]
    path = tmp_path / "levels.mp4"
    write_video(path, levels_clip(levels), qp=10)
    out = read_frames(path, num=3)  # indices 1, 5, 8 (centres of three equal segments)
    assert out.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(out.reshape(3, -1).mean(1), [40, 120, 180], atol=4)
    one = read_frames(path, num=1)  # index 5
    np.testing.assert_allclose(one.mean(), 120, atol=4)
    assert read_frames(path, num=30).shape[0] == 10  # more than available: all frames


@pytest.mark.parametrize(
    ("total", "num", "expected"),
    [
        (10, 3, [1, 5, 8]),
        (16, 4, [2, 6, 10, 14]),
        (7, 1, [3]),
        (8, 2, [2, 6]),
        (5, 5, [0, 1, 2, 3, 4]),
        (3, 10, [0, 1, 2]),
        (0, 4, []),
    ],
)
def test_evenly_spaced(total: int, num: int, expected: list[int]) -> None:
    assert evenly_spaced(total, num) == expected


def _assert_video_error(path: Path) -> None:
    with pytest.raises(VideoError) as info:
        read_frames(path, num=4)
    message = str(info.value)
    assert str(path) in message and message.startswith("cannot read video")
    assert "\n" not in message
    assert isinstance(info.value, DataError)


def test_random_bytes_raise_video_error(tmp_path: Path) -> None:
    path = tmp_path / "random.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _assert_video_error(path)


def test_truncated_file_raises_video_error(tmp_path: Path) -> None:
    good = tmp_path / "good.mp4"
    write_video(good, smooth_clip())
    data = good.read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])
    _assert_video_error(path)


def test_empty_and_missing_files_raise_video_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _assert_video_error(empty)
    _assert_video_error(tmp_path / "missing.mp4")
    text = tmp_path / "text.mp4"
    text.write_text("not a video\n")
    _assert_video_error(text)
