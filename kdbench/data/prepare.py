"""Preparation: videos -> evenly spaced frames -> face crops -> one uint8 array + an index.

A prepared folder holds ``frames.npy`` (uint8 [N, S, S, 3], memory-mappable), ``index.csv``
(row, video, label, manipulation, split, frame) and ``prepared.json`` (what was prepared, how).
Per-video crops are cached under ``cache/`` first, so an interrupted preparation resumes.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from kdbench.data.detectors import Detector, fill_boxes, make_detector, square_crop
from kdbench.data.video import read_frames, read_image
from kdbench.errors import DataError, KdbenchError
from kdbench.files import atomic_path, atomic_save_npy, atomic_write_json, atomic_write_text
from kdbench.progress import keeping, progress_bar

log = logging.getLogger(__name__)
FF_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class VideoItem:
    """One video to prepare. label: 0 real, 1 fake. ``frames``: image files that are the video's
    frames already extracted (then ``path`` is only named in messages)."""

    path: str
    video: str
    label: int
    manipulation: str
    split: str
    frames: tuple[str, ...] = ()


def _read_split(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise DataError(
            f"split file {path} not found; FF++ needs splits/train.json, val.json, test.json "
            "(the official split files) beside the videos or given with --splits"
        )
    try:
        pairs = json.loads(path.read_text())
        return [(str(a), str(b)) for a, b in pairs]
    except (ValueError, TypeError) as exc:
        raise DataError(f"split file {path} is not a JSON list of id pairs") from exc


def ffpp_items(
    root: Path,
    compression: str = "c40",
    methods: tuple[str, ...] = FF_METHODS,
    splits_dir: Path | None = None,
) -> list[VideoItem]:
    """Videos of the official FF++ layout; a pair (a, b) puts reals a, b and fakes a_b, b_a
    of every manipulation in that pair's split."""
    root = Path(root)
    real_dir = root / "original_sequences" / "youtube" / compression / "videos"
    if not real_dir.is_dir():
        raise DataError(
            f"{real_dir} not found; --root must be the FaceForensics++ folder holding "
            f"original_sequences/ and manipulated_sequences/ at compression {compression}"
        )
    splits_dir = Path(splits_dir) if splits_dir else root / "splits"
    items: list[VideoItem] = []
    for split in SPLITS:
        for a, b in _read_split(splits_dir / f"{split}.json"):
            for video in (a, b):
                items.append(VideoItem(str(real_dir / f"{video}.mp4"), video, 0, "real", split))
            for method in methods:
                fake_dir = root / "manipulated_sequences" / method / compression / "videos"
                for t, s in ((a, b), (b, a)):
                    key = f"{t}_{s}"
                    items.append(
                        VideoItem(str(fake_dir / f"{key}.mp4"), f"{method}/{key}", 1, method, split)
                    )
    return items


def _cache_path(out: Path, item: VideoItem) -> Path:
    return out / "cache" / (item.video.replace("/", "__") + ".npy")


@cache
def _worker_detector(name: str) -> Detector:
    """One detector per process, created where it runs (dlib's is not picklable)."""
    return make_detector(name)


def crop_video(video: Sequence[np.ndarray], detector: Detector, size: int) -> np.ndarray | None:
    """Square face crops [T, size, size, 3] of the frames of ``video``; a frame without a face
    reuses the nearest detected frame's box. None when no frame has a face."""
    return crop_faces(video, detector, size)[0]


def crop_faces(video: Sequence[np.ndarray], detector: Detector,
               size: int) -> tuple[np.ndarray | None, int]:
    """:func:`crop_video`'s crops and the number of frames in which a face was found."""
    if getattr(detector, "stretch", False):  # the whole image, resized (prepare --crop resize)
        from PIL import Image

        return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC),
                                    np.uint8) for f in video]), len(video)
    found = [detector(frame) for frame in video]
    boxes = fill_boxes(found)
    faces = sum(b is not None for b in found)
    if boxes is None:
        return None, 0
    crops = np.stack([square_crop(f, b, detector.enlarge, size) for f, b in zip(video, boxes)])
    return crops, faces


def _read_listed(item: VideoItem) -> tuple[list[np.ndarray], int]:
    """The readable images of ``item.frames`` and how many of them are missing or unreadable."""
    images, missing = [], 0
    for path in item.frames:
        try:
            images.append(read_image(Path(path)))
        except KdbenchError:
            missing += 1
    return images, missing


def _prepare_one(args: tuple[VideoItem, Path, int, int, str, tuple[str, int | None]]
                 ) -> tuple[str, str, int, int]:
    """Crop one video into its cache file (each frame re-encoded first as ``reencode`` says).
    Returns (status, message, frames written, listed frames missing)."""
    from kdbench.data.reencode import reencode as recode

    item, out, frames, size, detector_name, reencode = args
    target = _cache_path(out, item)
    if target.is_file():
        return "skipped", "", 0, 0
    missing = 0
    if item.frames:
        video, missing = _read_listed(item)
        if not video:
            return "failed", f"none of the {missing} frames of {item.video} is readable", 0, missing
    else:
        try:
            video = read_frames(Path(item.path), frames)
        except KdbenchError as exc:
            return "failed", str(exc), 0, 0
    video = [recode(frame, reencode) for frame in video]
    crops = crop_video(video, _worker_detector(detector_name), size)
    if crops is None:
        return "failed", f"no face found in {item.path}", 0, missing
    atomic_save_npy(target, crops)
    return "prepared", "", len(crops), missing


def _check_cache(out: Path, dataset: str, frames: int, size: int, detector: str,
                 reencode: tuple[str, int | None]) -> None:
    """The cache may only be resumed with the settings it was started with."""
    settings = {"dataset": dataset, "frames": frames, "size": size, "detector": detector}
    if reencode[0] != "none":  # (caches made before --reencode existed stay valid)
        settings["reencode"] = ":".join(str(v) for v in reencode if v is not None)
    path = out / "cache" / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != settings:
            diff = ", ".join(f"{k} {old.get(k)!r}" for k in sorted(set(old) | set(settings))
                             if old.get(k) != settings.get(k))
            raise DataError(
                f"{out} was prepared with {diff}; use another --out, or delete {out} to start "
                "over with the new settings"
            )
    else:
        atomic_write_json(path, settings)


def prepare_items(
    items: list[VideoItem],
    out: Path,
    dataset: str,
    frames: int,
    size: int,
    detector: str = "center",
    workers: int = 1,
    progress: bool = True,
    meta: dict | None = None,
    reencode: tuple[str, int | None] = ("none", None),
) -> dict[str, int]:
    """Prepare ``items`` into ``out``; failed videos are logged and skipped. ``meta`` is added to
    ``prepared.json``; ``reencode`` (:mod:`kdbench.data.reencode`) is applied to every frame
    before it is cropped. Returns counts of videos (prepared, skipped, failed) and of frames
    newly cropped (frames); with listed frames (``VideoItem.frames``) also of those listed but
    missing or unreadable (missing_frames), which are skipped."""
    if frames < 1 or size < 1:
        raise KdbenchError(f"--frames and --size must be positive, got {frames} and {size}")
    out = Path(out)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    make_detector(detector)  # validate the name (and dlib's presence) before starting workers
    _check_cache(out, dataset, frames, size, detector, reencode)
    jobs = [(item, out, frames, size, detector, reencode) for item in items]
    counts = {"prepared": 0, "skipped": 0, "failed": 0, "frames": 0}
    if any(item.frames for item in items):
        counts["missing_frames"] = 0
    failures: list[str] = []
    with progress_bar(progress) as bar, keeping(
            "the videos prepared so far are kept - run the same command again to prepare the "
            "rest"):
        task = bar.add_task(f"prepare {dataset}", total=len(jobs))
        # spawned, not forked: a fork copies the locks that PyAV's (FFmpeg's) and torch's
        # threads hold at that moment, and a worker then waits on one forever
        pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
                if workers > 1 else None)
        try:
            results = pool.map(_prepare_one, jobs, chunksize=4) if pool else map(_prepare_one, jobs)
            for status, msg, n, missing in results:
                counts[status] += 1
                counts["frames"] += n
                if missing:
                    counts["missing_frames"] += missing
                if msg:
                    failures.append(msg)
                bar.advance(task)
        finally:
            if pool:
                pool.shutdown()
    for msg in failures:
        log.warning("skipped: %s", msg)
    if counts.get("missing_frames"):
        log.warning("skipped %d listed frames that are missing or unreadable",
                    counts["missing_frames"])
    _consolidate(items, out, dataset, frames, size, detector, counts, meta or {})
    return counts


def summary_line(counts: dict[str, int], seconds: float, out: Path, noun: str = "videos") -> str:
    """The one-line report of a preparation, with its throughput."""
    secs = max(seconds, 1e-9)
    missing = (f" ({counts['missing_frames']} listed frames missing, skipped)"
               if counts.get("missing_frames") else "")
    return (
        f"prepared {counts['prepared']}, skipped (already done) {counts['skipped']}, failed "
        f"{counts['failed']} {noun}{missing} in {seconds:.1f} s "
        f"({counts.get('frames', 0) / secs:.1f} frames/s, "
        f"{counts['prepared'] / secs:.2f} {noun}/s) -> {out}"
    )


def _consolidate(
    items: list[VideoItem], out: Path, dataset: str, frames: int, size: int, detector: str,
    counts: dict[str, int], extra: dict,
) -> None:
    good = [it for it in items if _cache_path(out, it).is_file()]
    if not good:
        raise DataError(f"no video of {dataset} could be prepared; check the paths under --root")
    lengths = [np.load(_cache_path(out, it), mmap_mode="r").shape[0] for it in good]
    columns = [f.name for f in fields(VideoItem) if f.name not in ("path", "frames")]
    rows = [{**{c: getattr(it, c) for c in columns}, "frame": k}
            for it, n in zip(good, lengths) for k in range(n)]
    index = pd.DataFrame(rows)
    index.insert(0, "row", np.arange(len(index)))
    with atomic_path(out / "frames.npy") as tmp:
        dest = np.lib.format.open_memmap(tmp, "w+", np.uint8, (len(index), size, size, 3))
        start = 0
        for item, n in zip(good, lengths):
            dest[start : start + n] = np.load(_cache_path(out, item))
            start += n
        dest.flush()
        del dest
    atomic_write_text(out / "index.csv", index.to_csv(index=False))
    meta = {
        "dataset": dataset, "frames": frames, "size": size, "detector": detector,
        "videos": len(good), "rows": len(index), "failed": counts["failed"],
        **({"missing_frames": counts["missing_frames"]} if "missing_frames" in counts else {}),
        "per_split": {s: int((index.split == s).sum()) for s in SPLITS},
        **extra,
    }
    atomic_write_json(out / "prepared.json", meta)
