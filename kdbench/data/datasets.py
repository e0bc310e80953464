"""Dataset names -> prepared folders (generating/preparing the embedded synthetic set on use)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kdbench.errors import DataError, KdbenchError, did_you_mean
from kdbench.files import read_json

REAL_DATASETS = {
    "ff_c40": "kdbench prepare ff++ --root <FaceForensics++ folder> --compression c40 --out DIR",
    "ff_c23": "kdbench prepare ff++ --root <FaceForensics++ folder> --compression c23 --out DIR",
    "ff_raw": "kdbench prepare ff++ --root <FaceForensics++ folder> --compression raw --out DIR",
    "celebdf": "kdbench prepare celebdf --root <Celeb-DF folder> --out DIR",
    "folder": "kdbench prepare folder --root <folder of real/ and fake/ images> --out DIR",
    "forensynths": "kdbench prepare forensynths --root <train/ val/ test/ folder> --out DIR",
    "synthbuster": "kdbench prepare synthbuster --root <Synthbuster folder> --raise <RAISE-1k> "
                   "--out DIR",
    "genimage": "kdbench prepare genimage --root <GenImage folder> --out DIR",
}
EMBEDDED_DATASETS = ("synthetic", "synthetic_c23", "synthetic_gen")  # generated on first use
GENERATED_EMBEDDED = "synthetic_gen"  # images of five generators (synthetic/generated.py)
DATASETS = (*EMBEDDED_DATASETS, *REAL_DATASETS)
NAMED_SOURCES = ("folder", "deepfakebench")  # preparations whose --name is the dataset name
INDEX_COLUMNS = ("row", "video", "frame", "label", "split")
TRAIN_SPLITS = ("train", "val", "test")  # what a run needs
SYNTHETIC_FRAMES = 8  # frames per video the synthetic set is prepared with (at least)


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


def load_prepared(root: Path, dataset: str, frames_per_video: int | None = None,
                  require: tuple[str, ...] = ()) -> PreparedData:
    """Open a prepared folder, checking it holds ``dataset`` in a readable form with frames in
    each ``require``d split; ``frames_per_video`` keeps that many evenly spaced frames of each
    video (a preset's ``data.frames``)."""
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
    try:
        meta = read_json(meta_path)
    except KdbenchError:
        raise DataError(f"{meta_path} is not valid JSON (truncated or damaged); re-run the "
                        "preparation into a new folder") from None
    if meta.get("dataset") != dataset:
        raise DataError(
            f"{root} holds prepared {meta.get('dataset')!r}, not {dataset!r}; "
            f"use --dataset {meta.get('dataset')} or point --data-root at a {dataset} folder"
        )
    redo = "re-run the preparation into a new folder"
    for name in ("frames.npy", "index.csv"):
        if not (root / name).is_file():
            raise DataError(f"{root} has no {name}; the preparation did not finish - {redo}")
    try:
        frames = np.load(root / "frames.npy", mmap_mode="r")
    except (ValueError, OSError) as exc:  # truncated: the memory map is longer than the file
        raise DataError(f"{root}/frames.npy is truncated or damaged ({exc}); {redo}") from None
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise DataError(f"{root}/frames.npy holds {frames.dtype} {tuple(frames.shape)}, not "
                        f"uint8 frames [N, S, S, 3]; {redo}")
    try:
        index = pd.read_csv(root / "index.csv", dtype={"video": str})
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{root}/index.csv is not a readable CSV ({first}); {redo}") from None
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise DataError(f"{root}/index.csv lacks the column(s) {', '.join(missing)} (it needs "
                        f"{', '.join(INDEX_COLUMNS)}); {redo}")
    rows = pd.to_numeric(index["row"], errors="coerce")
    bad = rows.isna() | (rows != rows.round()) | (rows < 0) | (rows >= len(frames))
    if bad.any():
        raise DataError(f"{root}/index.csv points at frame row {index['row'][bad].iloc[0]}, "
                        f"but frames.npy has rows 0 to {len(frames) - 1}; {redo}")
    labels = pd.to_numeric(index["label"], errors="coerce")
    if not labels.isin([0, 1]).all():
        raise DataError(f"{root}/index.csv has the label "
                        f"{index['label'][~labels.isin([0, 1])].iloc[0]}; labels are 0 (real) "
                        f"or 1 (fake) - {redo}")
    index["row"], index["label"] = rows.astype(np.int64), labels.astype(np.int64)
    if len(index) != len(frames):
        raise DataError(f"{root}: index.csv and frames.npy disagree; {redo}")
    for split in require:
        if not (index["split"] == split).any():
            raise DataError(f"{root} has no {split!r} frames (the {split} split is empty); "
                            f"{redo}, with videos in every split")
    if frames_per_video:
        index = keep_frames(index, frames_per_video)
    return PreparedData(root, frames, index, meta)


_SIZE = {"synthetic": "about 4 MB of videos plus the prepared frames",
         GENERATED_EMBEDDED: "about 22 MB of drawn images at 64 px"}


def check_dataset(name: str, data_root: Path | None, prefix: str = "--") -> None:
    """The checks of :func:`open_dataset` that need no data read: a known name, and a data
    folder that exists where one is needed (a one-line error otherwise). ``prefix``: of the
    options the message names (``--cross-`` for --cross-dataset and --cross-data-root)."""
    embedded = "synthetic_c23" if prefix == "--cross-" else "synthetic"  # the one to suggest
    if name in EMBEDDED_DATASETS:
        if data_root is not None and not Path(data_root).is_dir():
            raise DataError(
                f"data folder {data_root} does not exist; create it (mkdir) to generate the "
                f"{name} dataset there ({_SIZE.get(name, _SIZE['synthetic'])}), or "
                f"leave out {prefix}data-root to use the cache {default_data_root() / name}"
            )
        return
    if name not in REAL_DATASETS:
        if data_root is not None and _is_named_folder(Path(data_root), name):
            return
        raise KdbenchError(
            f"unknown dataset {name!r}{did_you_mean(name, DATASETS)}; choose one of "
            f"{', '.join(DATASETS)}, or the --name of a "
            f"`kdbench prepare folder|deepfakebench` output given with {prefix}data-root"
        )
    if data_root is None:
        raise DataError(
            f"dataset {name} needs {prefix}data-root pointing at a prepared folder: run "
            f"`{REAL_DATASETS[name]}` first, or use {prefix}dataset {embedded} (no download "
            "needed)"
        )
    if not Path(data_root).is_dir():
        raise DataError(
            f"data folder {data_root} not found; prepare {name} with `{REAL_DATASETS[name]}`, "
            f"or use {prefix}dataset {embedded}"
        )


def open_dataset(
    name: str, data_root: Path | None, size: int, frames: int, progress: bool = True,
    require: tuple[str, ...] = TRAIN_SPLITS,
) -> PreparedData:
    """Resolve a dataset name to prepared data with frames in each ``require``d split.
    The embedded ones (``synthetic``, ``synthetic_c23``) are generated and prepared on first
    use under ``data_root`` (default: the cache); the real ones need ``data_root`` = a
    prepared folder."""
    check_dataset(name, data_root)
    if name == GENERATED_EMBEDDED:
        from kdbench.data.synthetic.generated import ensure_generated, generated_folder
        from kdbench.train.store import wait_for_lock

        root = Path(data_root) if data_root else default_data_root() / name
        if not (generated_folder(root, size) / "prepared.json").is_file():
            root.mkdir(parents=True, exist_ok=True)
            with wait_for_lock(root):
                ensure_generated(root, size, progress)
        return load_prepared(generated_folder(root, size), name, frames, require=require)
    if name in EMBEDDED_DATASETS:
        from kdbench.data.synthetic.domains import EMBEDDED
        from kdbench.data.synthetic.prepare import ensure_synthetic, prepared_folder
        from kdbench.train.store import wait_for_lock

        root = Path(data_root) if data_root else default_data_root() / name
        # prepared with at least SYNTHETIC_FRAMES frames per video, then thinned: presets that
        # differ only in frames per video share one prepared folder
        frames_prepared = max(frames, SYNTHETIC_FRAMES)
        prepared = prepared_folder(root, size, frames_prepared)
        if not (prepared / "prepared.json").is_file():  # one process generates, others wait
            with wait_for_lock(root):
                ensure_synthetic(root, size, frames_prepared, progress, EMBEDDED[name], name)
        return load_prepared(prepared, name, frames, require=require)
    return load_prepared(Path(data_root), name, frames, require)


def open_configured(name: str, data_root: Path | None, data: dict, progress: bool = True,
                    require: tuple[str, ...] = TRAIN_SPLITS) -> PreparedData:
    """:func:`open_dataset` at a config's ``data`` size and frames, with each frame's generator
    (:func:`kdbench.data.generators.with_generators`) and the config's generator protocol
    applied (``train_generators``, ``test_generators``: one line for an unknown one)."""
    from dataclasses import replace

    from kdbench.config import GENERATOR_SETTINGS
    from kdbench.data.generators import select, with_generators

    prepared = open_dataset(name, data_root, int(data["size"]), int(data["frames"]), progress,
                            require)
    index = with_generators(prepared.index, prepared.root)
    train, test = ([g for g in str(data.get(k) or "").split(",") if g]
                   for k in GENERATOR_SETTINGS)
    if train or test:
        index = select(index, train, test)
    return replace(prepared, index=index)


def _is_named_folder(root: Path, name: str) -> bool:
    """Whether ``root`` is a `kdbench prepare folder|deepfakebench --name NAME` output."""
    try:
        meta = read_json(root / "prepared.json")
    except (OSError, KdbenchError):
        return False
    return meta.get("dataset") == name and meta.get("source") in NAMED_SOURCES
