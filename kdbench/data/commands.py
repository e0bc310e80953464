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


PREPARE_SOURCES = ("ff++", "celebdf", "folder", "deepfakebench")


_PREPARE_ONLY = {"compression": ("ff++", "deepfakebench"), "methods": ("ff++",),
                 "splits": ("ff++",), "frames": ("ff++", "celebdf", "deepfakebench"),
                 "val_fraction": ("celebdf",), "name": ("folder", "deepfakebench"),
                 "seed": ("celebdf", "folder"), "json": ("deepfakebench",)}


_PREPARE_NEEDS = {"deepfakebench": ("json", "name")}


_DEFAULT_DETECTOR = {"folder": "center", "deepfakebench": "full"}


def prepare(source: str, root: PathLike, out: PathLike, *, compression: str | None = None,
            methods: str | Sequence[str] | None = None, splits: PathLike | None = None,
            frames: int | None = None, size: int = 299, detector: str | None = None,
            workers: int = 2, val_fraction: float | None = None, seed: int | None = None,
            name: str | None = None, json_file: PathLike | None = None,
            progress: bool = True) -> dict[str, int]:
    """Turn a dataset as downloaded (``ff++``, ``celebdf``, a ``folder`` of real/ and fake/
    images, or ``deepfakebench``'s extracted frames listed by its rearranged ``json_file``) into a
    prepared folder of face crops; resumes in ``out``. Returns the counts (prepared, skipped,
    failed, frames; missing_frames for listed frames)."""
    from kdbench.data.prepare import FF_METHODS, ffpp_items, prepare_items, summary_line

    if source not in PREPARE_SOURCES:
        raise KdbenchError(f"unknown source {source!r}{did_you_mean(source, PREPARE_SOURCES)}; "
                           f"choose one of {', '.join(PREPARE_SOURCES)}")
    given = {"compression": compression, "methods": methods, "splits": splits,
             "frames": frames, "val_fraction": val_fraction, "name": name, "seed": seed,
             "json": json_file}
    for opt, sources in _PREPARE_ONLY.items():
        if given[opt] is not None and source not in sources:
            raise KdbenchError(f"--{opt.replace('_', '-')} does not apply to prepare {source}; "
                               f"it is an option of {' and '.join(sources)}")
    for opt in _PREPARE_NEEDS.get(source, ()):
        if given[opt] is None:
            raise KdbenchError(f"prepare {source} needs --{opt}: "
                               + {"json": "the dataset JSON that DeepfakeBench's "
                                  "preprocessing/rearrange.py wrote",
                                  "name": "the dataset name to use with --dataset"}[opt])
    root, out, seed = Path(root), Path(out), seed or 0
    noun, meta = "videos", {"source": source}
    detector = detector or _DEFAULT_DETECTOR.get(source, "dlib")
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
    counts = prepare_items(items, out, dataset, frames, size, detector, workers, progress, meta)
    log.info(summary_line(counts, time.perf_counter() - t0, out, noun))
    return counts
