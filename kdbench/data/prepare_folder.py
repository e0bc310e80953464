"""Image-folder listing: ``real/`` and ``fake/`` (or ForenSynths' ``0_real/`` and ``1_fake/``)
folders of images, optionally under ``train/``, ``val/`` and ``test/``; each image is one item
with one frame."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from kdbench.data.prepare import SPLITS, VideoItem
from kdbench.data.video import IMAGE_SUFFIXES
from kdbench.errors import DataError

log = logging.getLogger(__name__)
LABELS = {"real": 0, "0_real": 0, "fake": 1, "1_fake": 1}
FRACTIONS = {"val": 0.1, "test": 0.1}  # without split folders; the rest is train


def check_name(name: str) -> str:
    """A dataset name for ``--name``: a plain word (it names folders), not a built-in dataset."""
    from kdbench.data.datasets import DATASETS

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or (
        name in DATASETS and name != "folder"
    ):
        raise DataError(
            f"--name {name!r} is not usable: give a plain name (letters, digits, _ . -) that is "
            f"not one of {', '.join(d for d in DATASETS if d != 'folder')}"
        )
    return name


def _label(parts: tuple[str, ...]) -> int | None:
    """The label of the label folder nearest the file, or None."""
    for part in reversed(parts):
        if part.lower() in LABELS:
            return LABELS[part.lower()]
    return None


def folder_items(root: Path, seed: int = 0) -> list[VideoItem]:
    """Images under ``root`` in label folders. With ``train/ val/ test/`` at the top those are
    the splits; without, each label is split 80/10/10 at random with ``seed``. A fake's
    manipulation is named by its other folders (e.g. ``progan/cat``), else ``fake``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; --root must hold real/ and fake/ folders")
    found: list[tuple[Path, tuple[str, ...], int]] = []
    unlabelled = 0
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        parts = path.relative_to(root).parts[:-1]
        label = _label(parts)
        if label is None:
            unlabelled += 1
        else:
            found.append((path, parts, label))
    if not found:
        raise DataError(
            f"no images in real/ and fake/ (or 0_real/ and 1_fake/) folders under {root}; "
            f"images must end in {', '.join(IMAGE_SUFFIXES)}"
        )
    if unlabelled:
        log.warning("left out %d images of %s outside real/ fake/ folders", unlabelled, root)
    split_of = [parts[0].lower() if parts[0].lower() in SPLITS else None
                for _, parts, _ in found]
    if any(split_of) and not all(split_of):
        raise DataError(
            f"{root} mixes images inside and outside train/ val/ test/ folders; put every "
            "label folder under a split folder, or none"
        )
    if not any(split_of):
        split_of = _random_splits([label for _, _, label in found], seed)
    items = []
    for (path, parts, label), split in zip(found, split_of):
        start = 1 if parts and parts[0].lower() in SPLITS else 0  # the other folders: the kind
        kind = "/".join(p for p in parts[start:] if p.lower() not in LABELS) or "fake"
        items.append(VideoItem(str(path), path.relative_to(root).as_posix(), label,
                               kind if label else "real", split))
    for split in SPLITS:
        if not any(it.split == split for it in items):
            log.warning("%s has no %s images; training needs train and val", root, split)
    return items


def _random_splits(labels: list[int], seed: int) -> list[str]:
    """Per label, a seeded 10 % val, 10 % test (each at least one image of three or more) and
    the rest train."""
    rng = np.random.default_rng(seed)
    splits = ["train"] * len(labels)
    for label in sorted(set(labels)):
        members = [i for i, lab in enumerate(labels) if lab == label]
        counts = {s: round(f * len(members)) for s, f in FRACTIONS.items()}
        if len(members) >= 3:
            counts = {s: max(1, n) for s, n in counts.items()}
        order = [members[k] for k in rng.permutation(len(members))]
        start = 0
        for split, n in counts.items():
            for i in order[start : start + n]:
                splits[i] = split
            start += n
    return splits
