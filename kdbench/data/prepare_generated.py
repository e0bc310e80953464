"""AI-generated image datasets (ForenSynths, Synthbuster, GenImage) listed for preparation: an
image is a one-frame video; each comes with its manifest row (generator, family, content class,
pair id). Layouts: docs/datasets.md."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kdbench.data.prepare import SPLITS, VideoItem
from kdbench.data.video import IMAGE_SUFFIXES
from kdbench.errors import DataError

log = logging.getLogger(__name__)
REAL_DIRS, FAKE_DIRS = {"0_real", "nature"}, {"1_fake", "ai"}
# the family of each generator folder name (lower case); any other generator is "other"
FAMILY = {
    # ForenSynths (Wang et al. 2020): its test folders
    "progan": "gan", "stylegan": "gan", "stylegan2": "gan", "biggan": "gan", "cyclegan": "gan",
    "stargan": "gan", "gaugan": "gan", "whichfaceisreal": "gan", "crn": "other",
    "imle": "other", "seeingdark": "other", "san": "other", "deepfake": "other",
    # Synthbuster (Bammey 2023): all diffusion models
    "dalle2": "diffusion", "dalle3": "diffusion", "firefly": "diffusion", "glide": "diffusion",
    "midjourney-v5": "diffusion", "stable-diffusion-1-3": "diffusion",
    "stable-diffusion-1-4": "diffusion", "stable-diffusion-2": "diffusion",
    "stable-diffusion-xl": "diffusion",
}
# GenImage (Zhu et al. 2023): its archives' folders -> the generator's name and family
GENIMAGE = {
    "imagenet_midjourney": ("midjourney", "diffusion"),
    "imagenet_ai_0419_sdv4": ("sd-v1.4", "diffusion"),
    "imagenet_ai_0424_sdv5": ("sd-v1.5", "diffusion"),
    "imagenet_ai_0508_adm": ("adm", "diffusion"),
    "imagenet_glide": ("glide", "diffusion"),
    "imagenet_ai_0424_wukong": ("wukong", "diffusion"),
    "imagenet_ai_0419_vqdm": ("vqdm", "diffusion"),
    "imagenet_ai_0419_biggan": ("biggan", "gan"),
}


@dataclass(frozen=True)
class ImageRow:
    """One image to prepare and its manifest fields. ``pair``: the id that ties a fake to the
    real it was made from (Synthbuster: the RAISE id), "" where there is none."""

    item: VideoItem
    generator: str
    family: str
    content: str = ""
    pair: str = ""


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def _row(path: Path, root: Path, label: int, split: str, generator: str, content: str = "",
         pair: str = "", family: str | None = None) -> ImageRow:
    family = "real" if label == 0 else (family or FAMILY.get(generator.lower(), "other"))
    item = VideoItem(str(path), path.relative_to(root).as_posix(), label,
                     generator if label else "real", split)
    return ImageRow(item, generator, family, content, pair)


def _labelled(folder: Path) -> Iterable[tuple[Path, int]]:
    """The images under ``folder``'s real and fake folders (0_real / 1_fake, nature / ai)."""
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        name = sub.name.lower()
        if name in REAL_DIRS | FAKE_DIRS:
            for path in _images(sub):
                yield path, int(name in FAKE_DIRS)


def forensynths_items(root: Path) -> list[ImageRow]:
    """ForenSynths (CNNDetection): ``train/`` and ``val/`` hold ProGAN's 20 classes, each with
    ``0_real`` and ``1_fake``; ``test/<generator>/[<class>/]{0_real,1_fake}``: each test
    generator with its own reals (their generator is that folder's, family real)."""
    root = Path(root)
    folders = {split: _first_dir(root, names) for split, names in FORENSYNTHS.items()}
    if folders["train"] is None or folders["test"] is None:
        raise DataError(f"{root} is not a ForenSynths folder: --root must hold train/ (or "
                        "progan_train/), val/ (progan_val/) and test/ (CNN_synth_testset/)")
    rows: list[ImageRow] = []
    for split in ("train", "val"):
        for content in sorted(p for p in (folders[split] or root / split).glob("*")
                              if p.is_dir()):
            rows += [_row(p, root, label, split, "progan", content.name)
                     for p, label in _labelled(content)]
    for gen in sorted(p for p in folders["test"].iterdir() if p.is_dir()):
        flat = any(p.name.lower() in REAL_DIRS | FAKE_DIRS for p in gen.iterdir())
        found = [_row(p, root, label, "test", gen.name, "" if flat else content.name)
                 for content in ([gen] if flat else sorted(p for p in gen.iterdir()
                                                          if p.is_dir()))
                 for p, label in _labelled(content)]
        if not found:
            raise DataError(f"{gen} holds no images in 0_real/ and 1_fake/ folders (directly "
                            "or in class folders); is --root the folder above the test set?")
        rows += found
    return _checked(rows, root)


FORENSYNTHS = {"train": ("train", "progan_train"), "val": ("val", "progan_val"),
               "test": ("test", "CNN_synth_testset")}  # the archives' names too


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def synthbuster_items(root: Path, raise_root: Path, seed: int = 0,
                      fractions: tuple[float, float] = (0.1, 0.1)) -> list[ImageRow]:
    """Synthbuster: ``<generator>/<RAISE id>.png`` for each of its diffusion models; the reals
    are RAISE-1k's images in ``raise_root`` named by the same id (TIFF or PNG; NEF raw files
    are not read). Each fake was prompted from the real of its id, so the split is drawn per
    id (seeded; ``fractions``: val and test): no id in two splits."""
    root, raise_root = Path(root), Path(raise_root)
    if not root.is_dir():
        raise DataError(f"Synthbuster folder {root} not found; --root must hold one folder of "
                        "images per generator")
    if not raise_root.is_dir():
        raise DataError(f"RAISE-1k folder {raise_root} not found; give the real photographs "
                        "with --raise DIR (Synthbuster's download has no reals)")
    subs = sorted(d for d in root.iterdir() if d.is_dir())
    if len(subs) == 1 and not any(d.name in SYNTHBUSTER for d in subs):  # a wrapper folder
        root, subs = subs[0], sorted(d for d in subs[0].iterdir() if d.is_dir())
    if not any(d.name in SYNTHBUSTER for d in subs):
        raise DataError(f"{root} holds none of Synthbuster's generator folders "
                        f"({', '.join(SYNTHBUSTER)}); give the folder that holds them")
    fakes = [(p, gen.name) for gen in subs for p in _images(gen)]
    faked = {p.stem for p, _ in fakes}
    reals = _one_real_per_id(_images(raise_root), faked)
    ids = sorted(faked)
    split_of = _id_splits(ids, seed, fractions)
    rows = [_row(p, root, 1, split_of[p.stem], gen, pair=p.stem) for p, gen in fakes]
    rows += [_row(p, raise_root, 0, split_of[p.stem], "raise", pair=p.stem) for p in reals]
    return _checked(rows, root)


SYNTHBUSTER = ("dalle2", "dalle3", "firefly", "glide", "midjourney-v5", "stable-diffusion-1-3",
               "stable-diffusion-1-4", "stable-diffusion-2", "stable-diffusion-xl")
_PREFER = (".tif", ".tiff", ".png", ".jpg", ".jpeg")  # a RAISE id's files: the first kept


def _one_real_per_id(paths: list[Path], faked: set[str]) -> list[Path]:
    """One photograph per RAISE id that has fakes (TIFF over PNG over JPEG); the others
    (thumbnails, ids without fakes) are left out and counted."""
    best: dict[str, Path] = {}
    for p in paths:
        if p.stem in faked and p.suffix.lower() in _PREFER:
            held = best.get(p.stem)
            if held is None or _PREFER.index(p.suffix.lower()) < _PREFER.index(
                    held.suffix.lower()):
                best[p.stem] = p
    if len(paths) > len(best):
        log.info("kept %d RAISE photographs, one per id with fakes; left out %d other files",
                 len(best), len(paths) - len(best))
    return [best[k] for k in sorted(best)]


def _id_splits(ids: list[str], seed: int, fractions: tuple[float, float]) -> dict[str, str]:
    """Each id's split: a seeded permutation cut into val, test (``fractions``) and train."""
    order = [ids[k] for k in np.random.default_rng(seed).permutation(len(ids))]
    n_val, n_test = (round(f * len(ids)) for f in fractions)
    out = {i: "val" for i in order[:n_val]}
    out |= {i: "test" for i in order[n_val:n_val + n_test]}
    return out | {i: "train" for i in order[n_val + n_test:]}


def read_skip_lists(files: Iterable[Path]) -> set[str]:
    """The paths GenImage's published lists name (``data/corrupted_files/*.txt``,
    ``data/improper_png_header/*.txt``: one path per line, from the generator's folder,
    led by ``./`` or ``./data/``), normalised to ``<folder>/<split>/<label>/<file>``."""
    skip: set[str] = set()
    for path in files:
        for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip().removeprefix("./").removeprefix("data/")
            if line:
                skip.add(line)
    return skip


def genimage_items(root: Path, skip: set[str] | None = None, seed: int = 0,
                   val_fraction: float = 0.1) -> list[ImageRow]:
    """GenImage: ``<generator folder>/{train,val}/{ai,nature}``. Its ``val`` is the
    benchmark's test split; a seeded ``val_fraction`` of each generator's train images (both
    labels; drawn by a seeded hash of the file, a real by its name) is held out as kdbench's
    val. Files named in ``skip`` (its corrupt-file lists)
    are left out and counted. The reals of each generator folder are ImageNet photographs of
    the same classes (generator: that folder's, family real); the content class is the
    ImageNet class id where the file name leads with it."""
    root = Path(root)
    folders = _genimage_folders(root)
    if not folders:
        raise DataError(f"{root} is not a GenImage folder: --root must hold the generators' "
                        "folders (imagenet_* or their Drive names), each with train/ and val/ "
                        "(ai/ and nature/ in each)")
    skip = skip or set()
    rows: list[ImageRow] = []
    matched: set[str] = set()
    for folder, inner in folders:
        generator, family = GENIMAGE.get(inner, (folder.name, None))
        for split in ("train", "val"):
            for path, label in _labelled(folder / split):
                listed = f"{inner}/{path.relative_to(folder).as_posix()}"  # the lists' paths
                if listed in skip:
                    matched.add(listed)
                    continue
                # a real by its file name (the same ImageNet photograph in two generators'
                # folders lands in one split), a fake by its path; independent of the order
                key = path.name if label == 0 else listed
                target = "test" if split == "val" else (
                    "val" if _draw(key, seed) < val_fraction else "train")
                rows.append(_row(path, root, label, target, generator, _imagenet_class(path),
                                 family=family))
    if matched:
        log.info("left out %d images named in GenImage's lists of corrupt files", len(matched))
    if len(skip) > len(matched):
        log.warning("%d paths of the skip lists match no image here (other generators, or "
                    "files already gone)", len(skip) - len(matched))
    return _checked(rows, root)


# GenImage's generator folders as its Drive and README name them -> the archive's inner name
GENIMAGE_ALIASES = {"midjourney": "imagenet_midjourney",
                    "stable_diffusion_v_1_4": "imagenet_ai_0419_sdv4",
                    "stable_diffusion_v_1_5": "imagenet_ai_0424_sdv5",
                    "adm": "imagenet_ai_0508_adm", "glide": "imagenet_glide",
                    "wukong": "imagenet_ai_0424_wukong", "vqdm": "imagenet_ai_0419_vqdm",
                    "biggan": "imagenet_ai_0419_biggan"}


def _genimage_folders(root: Path) -> list[tuple[Path, str]]:
    """(folder holding train/ and val/, its archive's inner name) per generator: the inner
    ``imagenet_*`` folders at the top, or inside a Drive-named folder, or Drive-named folders
    holding train/ and val/ themselves."""
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        inner = [c for c in d.iterdir() if c.is_dir() and c.name.startswith("imagenet_")]
        if (d / "train").is_dir() or (d / "val").is_dir():
            out.append((d, GENIMAGE_ALIASES.get(d.name.lower(), d.name)))
        elif len(inner) == 1:
            out.append((inner[0], inner[0].name))
    return out


def _draw(key: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by ``key`` and ``seed`` (a hash, not a sequence)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _imagenet_class(path: Path) -> str:
    """The ImageNet class of a GenImage file: the class number a fake's name leads with
    (``033_sdv4_00134.png``) or holds fifth (GLIDE and VQDM: ``GLIDE_1000_200_08_808_...``),
    the WordNet id a real's name leads with (``n03495258_123.JPEG``), else ""."""
    parts = path.stem.split("_")
    if parts[0].isdigit():
        return parts[0]
    if parts[0].upper() in ("GLIDE", "VQDM") and len(parts) > 4 and parts[4].isdigit():
        return parts[4]
    if len(parts[0]) == 9 and parts[0][0] == "n" and parts[0][1:].isdigit():
        return parts[0]
    return ""


def _checked(rows: list[ImageRow], root: Path) -> list[ImageRow]:
    if not rows:
        raise DataError(f"no images under {root}'s real and fake folders; images must end in "
                        f"{', '.join(IMAGE_SUFFIXES)}")
    for split in SPLITS:
        if not any(r.item.split == split for r in rows):
            log.warning("%s has no %s images; training needs train and val", root, split)
    return rows


MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("video", "label", "generator", "family", "content", "pair", "format",
                    "width", "height", "split")


def _header(path: Path) -> tuple[str, float, float]:
    """(format, width, height) from an image file's header; unreadable: ("unreadable", NaN,
    NaN)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return (im.format or "").lower(), im.size[0], im.size[1]
    except (OSError, UnidentifiedImageError):
        return "unreadable", math.nan, math.nan


def manifest(rows: list[ImageRow], workers: int = 1) -> pd.DataFrame:
    """One manifest row per image: its label, generator, family, content class, pair id, split
    and its original file format and size (read from the header by ``workers`` threads; NaN
    when unreadable)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, workers)) as pool:  # file reads: threads overlap them
        headers = list(pool.map(_header, (r.item.path for r in rows), chunksize=256))
    out = [{"video": r.item.video, "label": r.item.label, "generator": r.generator,
            "family": r.family, "content": r.content, "pair": r.pair, "format": fmt,
            "width": width, "height": height, "split": r.item.split}
           for r, (fmt, width, height) in zip(rows, headers)]
    return pd.DataFrame(out, columns=list(MANIFEST_COLUMNS))
