"""Dataset names -> prepared folders (generating/preparing the embedded synthetic set on use)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kdbench.errors import DataError, KdbenchError
from kdbench.train.store import read_json

REAL_DATASETS = {
    "ff_c40": "kdbench prepare ff++ --root <FaceForensics++ folder> --compression c40 --out DIR",
    "ff_c23": "kdbench prepare ff++ --root <FaceForensics++ folder> --compression c23 --out DIR",
    "ff_raw": "kdbench prepare ff++ --root <FaceForensics++ folder> --compression raw --out DIR",
    "celebdf": "kdbench prepare celebdf --root <Celeb-DF folder> --out DIR",
    "folder": "kdbench prepare folder --root <folder of real/ and fake/ images> --out DIR",
}
DATASETS = ("synthetic", *REAL_DATASETS)


def default_data_root() -> Path:
    """``$KDBENCH_DATA`` or ``~/.cache/kdbench``."""
    return Path(os.environ.get("KDBENCH_DATA", Path.home() / ".cache" / "kdbench")).expanduser()


@dataclass
class PreparedData:
    """A prepared folder: uint8 frames [N, S, S, 3] (memory-mapped) and their index."""

    root: Path
    frames: np.ndarray
    index: pd.DataFrame
    meta: dict

    def split(self, name: str) -> pd.DataFrame:
        rows = self.index[self.index.split == name]
        if rows.empty:
            raise DataError(f"{self.root} has no {name!r} frames; re-run the preparation")
        return rows


def keep_frames(index: pd.DataFrame, per_video: int) -> pd.DataFrame:
    """At most ``per_video`` evenly spaced frames of each video (all when it has fewer)."""
    def pick(group: pd.DataFrame) -> pd.DataFrame:
        if len(group) <= per_video:
            return group
        return group.iloc[np.linspace(0, len(group) - 1, per_video).round().astype(int)]

    ordered = index.sort_values(["video", "frame"], kind="stable")
    kept = [pick(g) for _, g in ordered.groupby("video", sort=False)]
    return pd.concat(kept).sort_values("row", kind="stable").reset_index(drop=True)


def load_prepared(root: Path, dataset: str, frames_per_video: int | None = None) -> PreparedData:
    """Open a prepared folder, checking it holds ``dataset``; ``frames_per_video`` keeps that
    many evenly spaced frames of each video (a preset's ``data.frames``)."""
    root = Path(root)
    meta_path = root / "prepared.json"
    if not meta_path.is_file():
        hint = REAL_DATASETS.get(dataset, "kdbench synth")
        is_raw = (root / "original_sequences").is_dir()
        raw = " (this looks like the raw download)" if is_raw else ""
        raise DataError(
            f"{root} is not a prepared {dataset} folder{raw}; prepare it with `{hint}` and pass "
            "--data-root DIR, or use --dataset synthetic"
        )
    meta = read_json(meta_path)
    if meta.get("dataset") != dataset:
        raise DataError(
            f"{root} holds prepared {meta.get('dataset')!r}, not {dataset!r}; "
            f"use --dataset {meta.get('dataset')} or point --data-root at a {dataset} folder"
        )
    frames = np.load(root / "frames.npy", mmap_mode="r")
    index = pd.read_csv(root / "index.csv", dtype={"video": str})
    if len(index) != len(frames):
        raise DataError(f"{root}: index.csv and frames.npy disagree; re-run the preparation")
    if frames_per_video:
        index = keep_frames(index, frames_per_video)
    return PreparedData(root, frames, index, meta)


def open_dataset(
    name: str, data_root: Path | None, size: int, frames: int, progress: bool = True
) -> PreparedData:
    """Resolve a dataset name to prepared data. ``synthetic`` is generated and prepared on first
    use under ``data_root/synthetic``; the real ones need ``data_root`` = a prepared folder."""
    if name == "synthetic":
        from kdbench.data.synthetic_prepare import ensure_synthetic

        root = Path(data_root) if data_root else default_data_root() / "synthetic"
        return load_prepared(ensure_synthetic(root, size, frames, progress), name)
    if name not in REAL_DATASETS:
        if data_root is not None and _is_named_folder(Path(data_root), name):
            return load_prepared(Path(data_root), name, frames)
        raise KdbenchError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or the --name of a "
            "`kdbench prepare folder` output given with --data-root"
        )
    if data_root is None:
        raise DataError(
            f"dataset {name} needs --data-root pointing at a prepared folder: run "
            f"`{REAL_DATASETS[name]}` first, or use --dataset synthetic (no download needed)"
        )
    if not Path(data_root).is_dir():
        raise DataError(
            f"data folder {data_root} not found; prepare {name} with `{REAL_DATASETS[name]}`, "
            "or use --dataset synthetic"
        )
    return load_prepared(Path(data_root), name, frames)


def _is_named_folder(root: Path, name: str) -> bool:
    """Whether ``root`` is a `kdbench prepare folder --name NAME` output."""
    try:
        meta = read_json(root / "prepared.json")
    except (OSError, ValueError):
        return False
    return meta.get("dataset") == name and meta.get("source") == "folder"
