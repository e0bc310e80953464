"""Image operations of the synthetic renderer: float32 channel-first [3, H, W] images."""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32


def over(img: np.ndarray, mask: np.ndarray, colour: np.ndarray | tuple) -> None:
    """In place: ``img = img * (1 - mask) + colour * mask`` (colour RGB or [3,H,W])."""
    colour = np.asarray(colour, F32)
    if colour.ndim == 1:
        colour = colour[:, None, None]
    img += mask * (colour - img)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the last two axes (H, W); float32 result."""
    img = np.asarray(img, F32)
    if sigma <= 0.05:
        return img.copy()
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(F32)
    out = img
    for axis in (img.ndim - 2, img.ndim - 1):
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="symmetric")
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * np.take(padded, np.arange(i, i + n), axis=axis)
        out = acc
    return out


def bilinear_sample(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample ``img`` [C,H,W] at float pixel positions ``ys``, ``xs`` (equal shapes;
    pixel ``i`` sits at coordinate ``i``; positions are clamped to the image)."""
    h, w = img.shape[1:]
    ys = np.clip(ys, 0, h - 1.001)
    xs = np.clip(xs, 0, w - 1.001)
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    wy, wx = (ys - y0).astype(F32), (xs - x0).astype(F32)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    top = img[:, y0, x0] * (1 - wx) + img[:, y0, x1] * wx
    bottom = img[:, y1, x0] * (1 - wx) + img[:, y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def sample_separable(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear sample of [C,h,w] on the grid ``ys`` x ``xs`` (texture pixel centres)."""
    h, w = img.shape[1:]
    ys = np.clip(ys - 0.5, 0, h - 1.001)
    xs = np.clip(xs - 0.5, 0, w - 1.001)
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    wy = (ys - y0).astype(F32)[None, :, None]
    wx = (xs - x0).astype(F32)[None, None, :]
    rows = img[:, y0] * (1 - wy) + img[:, y0 + 1] * wy
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x0 + 1] * wx

