"""Celeb-DF (v2) listing: the official test list, and an identity-disjoint train/val split.

Layout under the root: ``Celeb-real/idN_KKKK.mp4`` and ``YouTube-real/KKKKK.mp4`` (real),
``Celeb-synthesis/idA_idB_KKKK.mp4`` (fake: identities A and B), and
``List_of_testing_videos.txt`` (lines ``<label> <folder>/<file>.mp4``, 1 real, 0 fake).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdbench.data.prepare import VideoItem
from kdbench.errors import DataError

FOLDERS = {"Celeb-real": 0, "YouTube-real": 0, "Celeb-synthesis": 1}
TEST_LIST = "List_of_testing_videos.txt"
_CELEB_ID = re.compile(r"id\d+")


@dataclass
class CelebSplit:
    """The listed videos and what the split left out."""

    items: list[VideoItem]
    val_identities: list[str]
    excluded: list[str] = field(default_factory=list)  # mix a train and a val identity


def identities(video: str) -> frozenset[str]:
    """Identities in a video ``<folder>/<stem>``: the ``idN`` of a Celeb video (both of a
    synthesis video), the video itself for a YouTube-real video."""
    folder, stem = video.split("/", 1)
    if folder == "YouTube-real":
        return frozenset({video})
    ids = _CELEB_ID.findall(stem)[: 2 if folder == "Celeb-synthesis" else 1]
    return frozenset(ids) if ids else frozenset({video})


def read_test_list(path: Path) -> dict[str, int]:
    """``List_of_testing_videos.txt`` -> {"<folder>/<stem>": label (0 real, 1 fake)}."""
    if not path.is_file():
        raise DataError(
            f"{path} not found; Celeb-DF's test split is the official {TEST_LIST} in the "
            "dataset root (beside Celeb-real/, YouTube-real/ and Celeb-synthesis/)"
        )
    tests: dict[str, int] = {}
    for num, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("0", "1") or "/" not in parts[1]:
            raise DataError(
                f"{path} line {num}: expected '<1 real|0 fake> <folder>/<file>.mp4', got "
                f"{line.strip()!r}"
            )
        tests[parts[1].rsplit(".", 1)[0]] = 1 - int(parts[0])  # the list's 1 is real
    return tests


def _pick_val(pool: list[str], ids: dict[str, frozenset[str]], fraction: float,
              rng: np.random.Generator) -> set[str]:
    """Celeb identities for val: a seeded random one, grown greedily by the identity sharing
    most videos with those chosen (so few videos mix train and val), up to ``fraction``."""
    celeb = sorted({i for v in pool for i in ids[v] if _CELEB_ID.fullmatch(i)})
    if not celeb or fraction <= 0:
        return set()
    want = max(1, round(fraction * len(celeb)))
    order = [celeb[k] for k in rng.permutation(len(celeb))]
    chosen = {order[0]}
    while len(chosen) < min(want, len(celeb)):
        shared = Counter(i for v in pool if ids[v] & chosen for i in ids[v] - chosen)
        chosen.add(max(order, key=lambda i: (i not in chosen, shared[i], -order.index(i))))
    return chosen


def celebdf_items(root: Path, val_fraction: float = 0.1, seed: int = 0) -> CelebSplit:
    """Videos of the official Celeb-DF layout: the test list is the test split; the others go
    to train or val so that no val identity appears in train (a synthesis video naming one
    identity of each is left out). ``val_fraction`` of the Celeb identities (and of the
    YouTube-real videos) go to val, chosen with ``seed``."""
    root = Path(root)
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    videos = {f"{folder}/{p.stem}": (p, label) for folder, label in FOLDERS.items()
              for p in sorted((root / folder).glob("*.mp4"))}
    if not videos:
        raise DataError(
            f"no videos under {root}; --root must be the Celeb-DF folder holding Celeb-real/, "
            "YouTube-real/ and Celeb-synthesis/ with their .mp4 files"
        )
    tests = read_test_list(root / TEST_LIST)
    for name, label in tests.items():  # listed but not on disk: reported by preparation
        folder = name.split("/", 1)[0]
        videos.setdefault(name, (root / f"{name}.mp4", FOLDERS.get(folder, label)))
    pool = [v for v in videos if v not in tests]
    ids = {v: identities(v) for v in videos}
    rng = np.random.default_rng(seed)
    val_ids = _pick_val(pool, ids, val_fraction, rng)
    youtube = sorted(v for v in pool if v.startswith("YouTube-real/"))
    n_yt = round(val_fraction * len(youtube))
    val_ids |= {youtube[k] for k in rng.permutation(len(youtube))[:n_yt]}
    items, excluded = [], []
    for name, (path, label) in videos.items():
        if name in tests:
            split = "test"
        elif ids[name] <= val_ids:
            split = "val"
        elif ids[name] & val_ids:
            excluded.append(name)
            continue
        else:
            split = "train"
        manipulation = "real" if label == 0 else "Celeb-synthesis"
        items.append(VideoItem(str(path), name, label, manipulation, split))
    return CelebSplit(items, sorted(val_ids), excluded)
