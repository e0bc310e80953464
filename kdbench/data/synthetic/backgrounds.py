"""Background clips of the synthetic videos: bundled natural pictures (scikit-image),
cropped, tinted, defocused and drifting like a camera; coloured noise where none loads."""

from __future__ import annotations

from functools import cache, lru_cache

import numpy as np

from kdbench.data.synthetic.imageops import F32, gaussian_blur, sample_separable

# Bundled scikit-image pictures used as backgrounds (all ship inside the wheel; any that
# fail to load, e.g. because a future release fetches them over the network, are skipped).
BACKGROUND_IMAGES = (
    "brick",
    "grass",
    "gravel",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "moon",
    "hubble_deep_field",
    "immunohistochemistry",
    "clock",
    "cell",
    "page",
    "text",
)
_TEXTURE_SIDE = 256  # backgrounds are pre-shrunk so their longer side is about this


@cache
def _texture(name: str) -> np.ndarray | None:
    """A bundled scikit-image picture as float32 [3,h,w], longer side about 256 (or None)."""
    try:
        import skimage.data

        img = np.asarray(getattr(skimage.data, name)())
    except Exception:  # noqa: BLE001 - a missing/unfetchable picture is simply skipped
        return None
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].astype(F32) / (255.0 if img.dtype == np.uint8 else 1.0)
    f = max(1, round(max(img.shape[:2]) / _TEXTURE_SIDE))
    h, w = img.shape[0] // f * f, img.shape[1] // f * f
    img = img[:h, :w].reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3))
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=F32)


@lru_cache(maxsize=1)
def available_backgrounds() -> tuple[str, ...]:
    """Names of the bundled pictures that load on this machine (no network used)."""
    return tuple(n for n in BACKGROUND_IMAGES if _texture(n) is not None)


def _procedural_texture(rng: np.random.Generator) -> np.ndarray:
    """Fallback background: coloured multi-scale noise."""
    img = np.zeros((3, _TEXTURE_SIDE, _TEXTURE_SIDE), F32)
    for sigma in (16.0, 6.0, 2.0):
        noise = rng.normal(size=(3, _TEXTURE_SIDE, _TEXTURE_SIDE)).astype(F32)
        img += gaussian_blur(noise, sigma) * (sigma**0.5)
    img = (img - img.min()) / (np.ptp(img) + 1e-6)
    return img


def sample_background(rng: np.random.Generator, size: int, frames: int) -> np.ndarray:
    """Draw a background clip float32 [frames, 3, size, size] in [0, 1].

    A random crop (random scale, flip, tint, defocus) of a bundled natural picture,
    drifting slightly from frame to frame (camera motion).
    """
    names = available_backgrounds()
    if names:
        img = _texture(names[rng.integers(len(names))])
    else:
        img = _procedural_texture(rng)
    if rng.uniform() < 0.5:
        img = img[:, :, ::-1]
    tint = rng.uniform(0.6, 1.15, (3, 1, 1)).astype(F32)
    if np.allclose(img[0], img[1]):  # grey picture: colour it more
        tint = rng.uniform(0.4, 1.2, (3, 1, 1)).astype(F32)
    img = np.clip((img - 0.5) * rng.uniform(0.5, 1.0) + rng.uniform(0.35, 0.6), 0, 1) * tint
    h, w = img.shape[1:]
    crop = rng.uniform(0.35, 0.85) * min(h, w)  # texture pixels seen by the frame
    step = crop / size
    sigma = max(rng.uniform(0.0, 1.5), 0.5) * max(step, 1.0)  # defocus and anti-alias
    img = gaussian_blur(img, sigma)
    drift = rng.uniform(-0.6, 0.6, 2) * step  # texture px per frame
    span = crop + np.abs(drift) * frames + 2  # texture px covered over the clip (y, x)
    oy = rng.uniform(0, max(h - span[0], 0)) + max(-drift[0] * frames, 0)
    ox = rng.uniform(0, max(w - span[1], 0)) + max(-drift[1] * frames, 0)
    grid = (np.arange(size, dtype=F32) + 0.5) * step
    out = np.empty((frames, 3, size, size), F32)
    for i in range(frames):
        jy, jx = rng.normal(0, 0.15, 2) * step
        out[i] = sample_separable(
            img, oy + drift[0] * i + jy + grid, ox + drift[1] * i + jx + grid
        )
    return out


