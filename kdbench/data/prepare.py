"""Preparation: videos -> evenly spaced frames -> face crops -> one uint8 array + an index.

A prepared folder holds ``frames.npy`` (uint8 [N, S, S, 3], memory-mappable), ``index.csv``
(row, video, label, manipulation, split, frame) and ``prepared.json`` (what was prepared, how).
Per-video crops are cached under ``cache/`` first, so an interrupted preparation resumes.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kdbench.data.detectors import make_detector, square_crop
from kdbench.data.video import read_frames
from kdbench.errors import DataError, KdbenchError
from kdbench.progress import progress_bar
from kdbench.train.store import atomic_path, atomic_save_npy, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)
FF_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class VideoItem:
    """One video to prepare. label: 0 real, 1 fake."""

    path: str
    video: str
    label: int
    manipulation: str
    split: str


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
            for vid in (a, b):
                items.append(VideoItem(str(real_dir / f"{vid}.mp4"), vid, 0, "real", split))
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


def _prepare_one(args: tuple[VideoItem, Path, int, int, str]) -> tuple[str, str]:
    """Crop one video into its cache file. Returns (status, message)."""
    item, out, frames, size, detector_name = args
    target = _cache_path(out, item)
    if target.is_file():
        return "skipped", ""
    try:
        video = read_frames(Path(item.path), frames)
    except KdbenchError as exc:
        return "failed", str(exc)
    detector = make_detector(detector_name)
    boxes = [detector(frame) for frame in video]
    found = [i for i, b in enumerate(boxes) if b is not None]
    if not found:
        return "failed", f"no face found in {item.path}"
    crops = []
    for i, frame in enumerate(video):
        nearest = min(found, key=lambda j: abs(j - i))  # reuse the nearest detected box
        crops.append(square_crop(frame, boxes[nearest], detector.enlarge, size))
    atomic_save_npy(target, np.stack(crops))
    return "prepared", ""


def prepare_items(
    items: list[VideoItem],
    out: Path,
    dataset: str,
    frames: int,
    size: int,
    detector: str = "center",
    workers: int = 1,
    progress: bool = True,
) -> dict[str, int]:
    """Prepare ``items`` into ``out``; failed videos are logged and skipped. Returns counts."""
    out = Path(out)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    make_detector(detector)  # validate the name before starting workers
    jobs = [(item, out, frames, size, detector) for item in items]
    counts = {"prepared": 0, "skipped": 0, "failed": 0}
    failures: list[str] = []
    with progress_bar(progress) as bar:
        task = bar.add_task(f"prepare {dataset}", total=len(jobs))
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                results = pool.map(_prepare_one, jobs, chunksize=4)
                for status, msg in results:
                    counts[status] += 1
                    if msg:
                        failures.append(msg)
                    bar.advance(task)
        else:
            for job in jobs:
                status, msg = _prepare_one(job)
                counts[status] += 1
                if msg:
                    failures.append(msg)
                bar.advance(task)
    for msg in failures:
        log.warning("skipped: %s", msg)
    _consolidate(items, out, dataset, frames, size, detector, counts)
    return counts


def _consolidate(
    items: list[VideoItem], out: Path, dataset: str, frames: int, size: int, detector: str,
    counts: dict[str, int],
) -> None:
    good = [it for it in items if _cache_path(out, it).is_file()]
    if not good:
        raise DataError(f"no video of {dataset} could be prepared; check the paths under --root")
    lengths = [np.load(_cache_path(out, it), mmap_mode="r").shape[0] for it in good]
    rows = [{**asdict(it), "frame": k} for it, n in zip(good, lengths) for k in range(n)]
    index = pd.DataFrame(rows).drop(columns=["path"])
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
        "per_split": {s: int((index.split == s).sum()) for s in SPLITS},
    }
    atomic_write_json(out / "prepared.json", meta)
