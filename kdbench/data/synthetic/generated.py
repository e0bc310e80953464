"""``synthetic_gen``: an embedded stand-in for AI-generated image datasets. Every image is a
procedurally drawn scene (a crop of a bundled natural picture, as the synthetic videos'
backgrounds, with a few soft shapes on it); a real passes through a camera (slight optical
blur, sensor noise, 8-bit quantisation); each generator makes its own scenes and leaves its
own kind of trace. The settings below were fixed when the module was written, from what each
mechanism is, before any detector was trained on them; they are not tuned to any result.

Generators (family):

- ``nearest-up`` (gan): the scene drawn at half resolution, sensor noise there, then
  upsampled 2x by pixel repetition: 2x2 blocks, a spectral peak at the Nyquist frequency
  (as transposed convolutions leave checkerboards).
- ``periodic`` (gan): full resolution, camera noise, plus a faint 4-pixel periodic pattern of
  amplitude 2/255 (the periodic peaks of GAN spectra).
- ``bilinear-up`` (diffusion): drawn at half resolution, bilinearly upsampled 2x, no sensor
  noise after it: the highest frequencies are missing (as a latent decoder's upsampling).
- ``denoised`` (diffusion): full resolution, no sensor noise at all, a light smoothing
  (sigma 0.6 px): too clean at the finest scale.
- ``recoloured`` (other): full resolution, camera noise, then its colours mixed by a random
  3x3 matrix near the identity (±0.15) and a gamma in [0.8, 1.25]: colour statistics unlike
  the camera's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kdbench.data.synthetic.backgrounds import sample_background
from kdbench.data.synthetic.imageops import F32, gaussian_blur

NOISE = 2.0 / 255  # the camera's sensor noise (std per channel)
GENERATORS: dict[str, tuple[str, Callable]] = {}  # name -> (family, draw(rng, size) -> image)


def scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """A scene float32 [3, size, size] in [0, 1]: a natural-picture background and one to
    three soft ellipses of random colour."""
    img = sample_background(rng, size, 1)[0].copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(F32) / size
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        ry, rx = rng.uniform(0.08, 0.3, 2)
        d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        mask = np.clip((1.0 - d) * 4.0, 0.0, 1.0)[None]
        colour = rng.uniform(0.05, 0.95, (3, 1, 1)).astype(F32)
        img = img * (1 - mask) + colour * mask
    return img


def _camera(img: np.ndarray, rng: np.random.Generator, noise: bool = True) -> np.ndarray:
    """A camera's optics (blur 0.5 px) and sensor noise."""
    img = gaussian_blur(img, 0.5)
    if noise:
        img = img + rng.normal(0.0, NOISE, img.shape).astype(F32)
    return img


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [3, H, W] in [0, 1] -> uint8 [H, W, 3]."""
    return np.clip(np.rint(img.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)


def real(rng: np.random.Generator, size: int) -> np.ndarray:
    """A photograph of a scene."""
    return to_uint8(_camera(scene(rng, size), rng))


def _generator(name: str, family: str):
    def register(fn: Callable) -> Callable:
        GENERATORS[name] = (family, fn)
        return fn
    return register


def _half(size: int) -> int:
    """The side drawn before a 2x upsampling (odd sizes: one more, cropped after)."""
    return (size + 1) // 2


@_generator("nearest-up", "gan")
def _nearest_up(rng: np.random.Generator, size: int) -> np.ndarray:
    small = _camera(scene(rng, _half(size)), rng)
    return to_uint8(small.repeat(2, axis=1).repeat(2, axis=2)[:, :size, :size])


@_generator("periodic", "gan")
def _periodic(rng: np.random.Generator, size: int) -> np.ndarray:
    img = _camera(scene(rng, size), rng)
    yy, xx = np.mgrid[0:size, 0:size]
    phase = rng.uniform(0, 2 * np.pi, 2)
    pattern = np.sin(2 * np.pi * xx / 4 + phase[0]) * np.sin(2 * np.pi * yy / 4 + phase[1])
    return to_uint8(img + (2.0 / 255) * pattern.astype(F32)[None])


@_generator("bilinear-up", "diffusion")
def _bilinear_up(rng: np.random.Generator, size: int) -> np.ndarray:
    from PIL import Image

    small = to_uint8(_camera(scene(rng, _half(size)), rng))
    up = Image.fromarray(small).resize((2 * _half(size),) * 2, Image.BILINEAR)
    return np.asarray(up, np.uint8)[:size, :size]


@_generator("denoised", "diffusion")
def _denoised(rng: np.random.Generator, size: int) -> np.ndarray:
    return to_uint8(gaussian_blur(_camera(scene(rng, size), rng, noise=False), 0.6))


@_generator("recoloured", "other")
def _recoloured(rng: np.random.Generator, size: int) -> np.ndarray:
    img = _camera(scene(rng, size), rng)
    mix = (np.eye(3) + rng.uniform(-0.15, 0.15, (3, 3))).astype(F32)
    img = np.einsum("ij,jhw->ihw", mix, np.clip(img, 0, 1))
    return to_uint8(np.clip(img, 0, 1) ** F32(rng.uniform(0.8, 1.25)))


PER_SPLIT = {"train": 120, "val": 30, "test": 30}  # fakes of each generator (as many reals)
SEED = 0
VERSION = 1  # of the drawing code: a change to a generator makes a new folder


def generated_folder(root, size: int):
    """Where :func:`ensure_generated` writes the dataset at ``size`` px: named by what draws
    it (the generators, the counts, the seed, :data:`VERSION`), so a stale draw is not
    reused."""
    import hashlib
    import json
    from pathlib import Path

    key = json.dumps([sorted(GENERATORS), PER_SPLIT, SEED, VERSION], sort_keys=True)
    return Path(root) / f"prepared-gen-s{size}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def ensure_generated(root, size: int, progress: bool = True):
    """Draw ``synthetic_gen`` at ``size`` px (once) straight into the prepared format: each
    generator's fakes and as many camera reals (the reals of a generator: its generator
    column names it, family real), split train/val/test by :data:`PER_SPLIT`, with
    ``manifest.csv``; returns the prepared folder."""
    import pandas as pd

    from kdbench.data.prepare_generated import MANIFEST
    from kdbench.files import atomic_save_npy, atomic_write_json, atomic_write_text
    from kdbench.progress import progress_bar

    out = generated_folder(root, size)
    if (out / "prepared.json").is_file():
        return out
    rows, images = [], []
    with progress_bar(progress) as bar:
        task = bar.add_task("draw synthetic_gen", total=len(GENERATORS) * 2 * sum(
            PER_SPLIT.values()))
        for g, (name, (family, draw)) in enumerate(GENERATORS.items()):
            for split, n in PER_SPLIT.items():
                for k in range(n):
                    for label in (0, 1):
                        rng = np.random.default_rng([SEED, g, list(PER_SPLIT).index(split), k,
                                                     label])
                        images.append(draw(rng, size) if label else real(rng, size))
                        video = f"{name}/{split}/{'fake' if label else 'real'}_{k:04d}"
                        rows.append({"video": video, "label": label,
                                     "manipulation": name if label else "real", "split": split,
                                     "frame": 0, "generator": name,
                                     "family": family if label else "real"})
                        bar.advance(task)
    index = pd.DataFrame(rows)
    index.insert(0, "row", np.arange(len(index)))
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(out / "frames.npy", np.stack(images))
    atomic_write_text(out / "index.csv", index.drop(columns=["generator", "family"]).to_csv(
        index=False))
    manifest = index[["video", "label", "generator", "family", "split"]].assign(
        content="", pair="", format="png", width=size, height=size, prepared=True)
    atomic_write_text(out / MANIFEST, manifest.to_csv(index=False))
    atomic_write_json(out / "prepared.json", {
        "dataset": "synthetic_gen", "frames": 1, "size": size, "detector": "full",
        "videos": len(index), "rows": len(index), "failed": 0, "seed": SEED,
        "generators": {n: f for n, (f, _) in GENERATORS.items()},
        "per_split": {s: int((index.split == s).sum()) for s in PER_SPLIT}})
    return out
