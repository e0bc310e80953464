"""DeepfakeBench listing: its rearranged dataset JSON and the face frames it extracted.

DeepfakeBench's ``preprocessing/rearrange.py`` writes ``{dataset: {label: {split: [compression:]
{video: {"label": label, "frames": [paths]}}}}}``; FaceForensics++-style JSONs have the
compression level under the split, the others not. A label naming "real" (``FF-real``,
``CelebDFv2_real``, ``DFDCP_Real`` ...) is real, every other label a manipulation. Frame paths
are absolute or relative to DeepfakeBench's ``rgb_dir`` (``--root``); an absolute path from
another machine is re-rooted at ``--root`` from the first of its folders found there.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from kdbench.data.prepare import SPLITS, VideoItem
from kdbench.data.video import evenly_spaced
from kdbench.errors import DataError

SPLIT_ORDER = ("test", "val", "train")  # a video listed in several splits keeps the first
_DIGITS = re.compile(r"(\d+)")


@dataclass
class BenchListing:
    """The videos of a DeepfakeBench JSON, and what reading it found."""

    items: list[VideoItem]
    datasets: list[str]
    compression: str | None
    overlaps: dict[str, int] = field(default_factory=dict)  # "val+test": videos in both
    empty: int = 0  # videos listed without frames, left out


def _natural(path: str) -> list:
    return [int(t) if t.isdigit() else t for t in _DIGITS.split(path)]


def _is_video(entry: object) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("frames"), list)


class _Rooter:
    """Frame paths -> files under ``root``: relative ones joined to it; absolute ones kept when
    they exist, else re-rooted by dropping the leading folders that ``root`` lacks (the prefix
    found once is reused)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefixes: dict[str, int] = {}  # absolute prefix -> parts to drop

    def __call__(self, raw: str) -> str:
        path = PurePosixPath(raw.replace("\\", "/"))
        if not path.is_absolute():
            return str(self.root.joinpath(*path.parts))
        parts = path.parts
        for prefix, drop in self.prefixes.items():
            if str(path).startswith(prefix):
                return str(self.root.joinpath(*parts[drop:]))
        if Path(path).exists():
            return str(path)
        for drop in range(1, len(parts) - 1):
            if (self.root / parts[drop]).exists() and self.root.joinpath(*parts[drop:]).exists():
                self.prefixes[str(PurePosixPath(*parts[:drop])).rstrip("/") + "/"] = drop
                return str(self.root.joinpath(*parts[drop:]))
        return str(path)  # missing: counted when read


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"DeepfakeBench JSON {path} not found; --json is the file that "
                        "DeepfakeBench's preprocessing/rearrange.py wrote (dataset_json/NAME.json)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); give DeepfakeBench's rearranged "
                        "dataset JSON") from None
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict)
                                                         for v in data.values()):
        raise DataError(f"{path} is not a DeepfakeBench dataset JSON: expected "
                        "{dataset: {label: {split: ...}}}")
    return data


def _split_videos(content: dict, compression: str | None, levels: set[str]) -> dict:
    """The videos of one label's split, under ``compression`` when the JSON has levels."""
    if not content or all(_is_video(v) for v in content.values()):
        return content
    if not all(isinstance(v, dict) and all(_is_video(e) for e in v.values())
               for v in content.values()):
        return {}  # neither videos nor compression levels of videos: nothing usable
    levels.update(content)
    return content.get(compression, {}) if compression else {}


def deepfakebench_items(root: Path, json_path: Path, compression: str | None = None,
                        frames: int | None = None) -> BenchListing:
    """Videos of a DeepfakeBench JSON with DeepfakeBench's train/val/test assignment (a video in
    several splits is kept once, in test over val over train) and at most ``frames`` evenly
    spaced frames each (all when None). The video id is ``<label>/<video>``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} not found; --root is DeepfakeBench's rgb_dir, the folder the "
                        "frame paths of the JSON are relative to")
    data = _read_json(Path(json_path))
    levels: set[str] = set()
    listed: dict[str, tuple[str, dict, set[str]]] = {}  # id -> (label, entry, splits)
    for _ in range(2):  # the second pass reads the chosen compression level
        listed.clear()
        for groups in data.values():
            for label, splits in groups.items():
                for split, content in (splits.items() if isinstance(splits, dict) else ()):
                    if split not in SPLITS or not isinstance(content, dict):
                        continue
                    for video, entry in _split_videos(content, compression, levels).items():
                        key = f"{label}/{video}"
                        listed.setdefault(key, (label, entry, set()))[2].add(split)
        if compression or not levels:
            break
        if len(levels) > 1:
            raise DataError(f"{json_path} holds the compression levels "
                            f"{', '.join(sorted(levels))}; choose one with --compression")
        compression = next(iter(levels))
    if compression and levels and compression not in levels:
        raise DataError(f"{json_path} has no compression {compression}; it holds "
                        f"{', '.join(sorted(levels))}")
    if compression and not levels:
        raise DataError(f"{json_path} has no compression levels; leave out --compression")
    if not listed:
        raise DataError(f"{json_path} lists no videos with frames; expected DeepfakeBench's "
                        "{dataset: {label: {split: {video: {label, frames}}}}}")
    rooted = _Rooter(root)
    items, overlaps, empty = [], Counter(), 0
    for key, (label, entry, splits) in sorted(listed.items()):
        paths = sorted((str(p) for p in entry["frames"]), key=_natural)
        if not paths:
            empty += 1
            continue
        if frames:
            paths = [paths[k] for k in evenly_spaced(len(paths), frames)]
        split = next(s for s in SPLIT_ORDER if s in splits)
        if len(splits) > 1:
            overlaps["+".join(s for s in reversed(SPLIT_ORDER) if s in splits)] += 1
        fake = "real" not in str(entry.get("label", label)).lower()
        items.append(VideoItem(key, key, int(fake), label if fake else "real", split,
                               tuple(rooted(p) for p in paths)))
    return BenchListing(items, sorted(data), compression, dict(overlaps), empty)
