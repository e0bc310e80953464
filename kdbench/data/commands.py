"""The data commands as functions: generate the embedded dataset, prepare a downloaded one."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from kdbench.errors import KdbenchError, did_you_mean
from kdbench.values import comma_list

log = logging.getLogger(__name__)
PathLike = str | os.PathLike


def synth(root: PathLike | None = None, *, seed: int = 0, workers: int = 2,
          progress: bool = True) -> Path:
    """Generate the embedded synthetic FF++-shaped video tree (default: the data cache) and
    return its folder; an existing tree with the same settings is kept."""
    from dataclasses import replace

    from kdbench.data.datasets import default_data_root
    from kdbench.data.synthetic import SynthConfig, generate

    folder = Path(root) if root else default_data_root() / "synthetic" / "videos"
    t0 = time.perf_counter()
    generate(folder, replace(SynthConfig(), seed=seed), workers=workers, progress=progress)
    log.info(f"synthetic FF++-shaped dataset at {folder} ({time.perf_counter() - t0:.1f} s)")
    return folder


GENERATED_SOURCES = ("forensynths", "synthbuster", "genimage")  # AI-generated image datasets
PREPARE_SOURCES = ("ff++", "celebdf", "folder", "deepfakebench", *GENERATED_SOURCES)


_PREPARE_ONLY = {"compression": ("ff++", "deepfakebench"), "methods": ("ff++",),
                 "splits": ("ff++",), "frames": ("ff++", "celebdf", "deepfakebench"),
                 "val_fraction": ("celebdf", "genimage"), "name": ("folder", "deepfakebench"),
                 "seed": ("celebdf", "folder", "synthbuster", "genimage"),
                 "json": ("deepfakebench",), "raise_root": ("synthbuster",),
                 "skip_lists": ("genimage",), "crop": GENERATED_SOURCES,
                 "reencode": ("folder", *GENERATED_SOURCES)}


_PREPARE_NEEDS = {"deepfakebench": ("json", "name"), "synthbuster": ("raise_root",)}
CROPS = {"center": "full", "resize": "stretch"}  # --crop -> the detector that does it


_DEFAULT_DETECTOR = {"folder": "center", "deepfakebench": "full"}


def prepare(source: str, root: PathLike, out: PathLike, *, compression: str | None = None,
            methods: str | Sequence[str] | None = None, splits: PathLike | None = None,
            frames: int | None = None, size: int = 299, detector: str | None = None,
            workers: int = 2, val_fraction: float | None = None, seed: int | None = None,
            name: str | None = None, json_file: PathLike | None = None,
            raise_root: PathLike | None = None, skip_lists: Sequence[PathLike] | None = None,
            crop: str | None = None, reencode: str | None = None,
            progress: bool = True) -> dict[str, int]:
    """Turn a dataset as downloaded (``ff++``, ``celebdf``, a ``folder`` of real/ and fake/
    images, or ``deepfakebench``'s extracted frames listed by its rearranged ``json_file``) into a
    prepared folder of face crops; resumes in ``out``. Returns the counts (prepared, skipped,
    failed, frames; missing_frames for listed frames). The AI-generated image datasets
    (``forensynths``, ``synthbuster`` with its reals in ``raise_root``, ``genimage`` with its
    corrupt-file ``skip_lists``) are prepared as one-frame videos, each image ``crop``ped
    (center: its central square; resize: the whole image) after ``reencode`` (none or
    jpeg:Q), with a per-image ``manifest.csv``."""
    from kdbench.data.prepare import FF_METHODS, ffpp_items, prepare_items, summary_line

    if source not in PREPARE_SOURCES:
        raise KdbenchError(f"unknown source {source!r}{did_you_mean(source, PREPARE_SOURCES)}; "
                           f"choose one of {', '.join(PREPARE_SOURCES)}")
    given = {"compression": compression, "methods": methods, "splits": splits,
             "frames": frames, "val_fraction": val_fraction, "name": name, "seed": seed,
             "json": json_file, "raise_root": raise_root, "skip_lists": skip_lists or None,
             "crop": crop, "reencode": reencode}
    for opt, sources in _PREPARE_ONLY.items():
        if given[opt] is not None and source not in sources:
            raise KdbenchError(f"--{opt.replace('_', '-')} does not apply to prepare {source}; "
                               f"it is an option of {' and '.join(sources)}")
    for opt in _PREPARE_NEEDS.get(source, ()):
        if given[opt] is None:
            raise KdbenchError(f"prepare {source} needs --{opt}: "
                               + {"json": "the dataset JSON that DeepfakeBench's "
                                  "preprocessing/rearrange.py wrote",
                                  "name": "the dataset name to use with --dataset",
                                  "raise_root": "--raise DIR, the RAISE-1k photographs "
                                  "(Synthbuster's reals are not in its download)"}[opt])
    from kdbench.data.reencode import NONE, parse_reencode

    recode = parse_reencode(reencode) if reencode else NONE
    if crop is not None and crop not in CROPS:
        raise KdbenchError(f"unknown --crop {crop!r}; choose one of {', '.join(CROPS)}")
    if crop is not None and detector is not None:
        raise KdbenchError("give --crop or --detector, not both: --crop center and resize are "
                           "the image sources' crops, --detector a face detector's")
    root, out, seed = Path(root), Path(out), seed or 0
    noun, meta = "videos", {"source": source}
    detector = detector or (CROPS[crop or "center"] if source in GENERATED_SOURCES
                            else _DEFAULT_DETECTOR.get(source, "dlib"))
    t0 = time.perf_counter()
    if source == "deepfakebench":
        from kdbench.data.prepare_deepfakebench import deepfakebench_items
        from kdbench.data.prepare_folder import check_name

        dataset = check_name(name)
        listing = deepfakebench_items(root, Path(json_file), compression, frames)
        items = listing.items
        frames = max(len(it.frames) for it in items)
        meta.update(json=str(json_file), datasets=listing.datasets, compression=listing.compression,
                    split_overlaps=listing.overlaps, listed_without_frames=listing.empty)
        if listing.overlaps:
            both = ", ".join(f"{k}: {n}" for k, n in listing.overlaps.items())
            log.info(f"videos listed in several splits ({both}) are kept once, in test over "
                     "val over train")
        for split in ("train", "val", "test"):
            if not any(it.split == split for it in items):
                log.info(f"{json_file} lists no {split} videos: the prepared {dataset} "
                         "can be a cross dataset (--cross-dataset) but not trained on")
    frames = 32 if frames is None else frames
    if source == "ff++":
        dataset = f"ff_{compression or 'c40'}"
        items = ffpp_items(root, compression or "c40", tuple(comma_list(methods)) or FF_METHODS,
                           Path(splits) if splits else None)
    elif source == "celebdf":
        from kdbench.data.prepare_celebdf import celebdf_items

        val_fraction = 0.1 if val_fraction is None else val_fraction
        split = celebdf_items(root, val_fraction, seed)
        dataset, items = "celebdf", split.items
        meta.update(seed=seed, val_fraction=val_fraction, val_identities=split.val_identities,
                    excluded=split.excluded)
        if split.excluded:
            log.info(f"left out {len(split.excluded)} videos that mix a train and a val "
                     "identity (listed in prepared.json)")
    elif source == "folder":
        from kdbench.data.prepare_folder import check_name, folder_items

        dataset, frames, noun = check_name(name or "folder"), 1, "images"
        items = folder_items(root, seed)
        meta.update(seed=seed)
    rows = None
    if source in GENERATED_SOURCES:
        if val_fraction is not None and not 0 <= val_fraction < 1:
            raise KdbenchError(f"--val-fraction must lie in [0, 1), got {val_fraction}")
        rows = _generated(source, root, seed, val_fraction, raise_root, skip_lists)
        dataset, frames, noun, items = source, 1, "images", [r.item for r in rows]
        meta.update(seed=seed, crop=crop or ("center" if detector == "full" else detector),
                    reencode=reencode or "none",
                    **({"raise": str(raise_root)} if raise_root else {}),
                    **({"skip_lists": [str(p) for p in skip_lists]} if skip_lists else {}),
                    **({"val_fraction": 0.1 if val_fraction is None else val_fraction}
                       if source == "genimage" else {}))
    if recode != NONE:
        meta.update(reencode=reencode)
    counts = prepare_items(items, out, dataset, frames, size, detector, workers, progress, meta,
                           recode)
    if rows is not None:
        _write_manifest(rows, out, workers)
    log.info(summary_line(counts, time.perf_counter() - t0, out, noun))
    return counts


def _generated(source: str, root: Path, seed: int, val_fraction: float | None,
               raise_root: PathLike | None, skip_lists: Sequence[PathLike] | None) -> list:
    """The images of an AI-generated image dataset with their manifest fields."""
    from kdbench.data import prepare_generated as gen

    if source == "forensynths":
        return gen.forensynths_items(root)
    if source == "synthbuster":
        return gen.synthbuster_items(root, Path(raise_root), seed)
    skip = gen.read_skip_lists(Path(p) for p in skip_lists or [])
    return gen.genimage_items(root, skip, seed, 0.1 if val_fraction is None else val_fraction)


def _write_manifest(rows: list, out: Path, workers: int = 1) -> None:
    """``<out>/manifest.csv``: every listed image's manifest row, with whether it was
    prepared (an unreadable one was counted and skipped)."""
    import pandas as pd

    from kdbench.data.prepare_generated import MANIFEST, manifest
    from kdbench.files import atomic_write_text

    table = manifest(rows, workers)
    prepared = set(pd.read_csv(out / "index.csv", usecols=["video"])["video"].astype(str))
    table["prepared"] = table["video"].isin(prepared)
    atomic_write_text(out / MANIFEST, table.to_csv(index=False))
