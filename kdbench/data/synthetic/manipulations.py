"""The four forgery manipulations of the synthetic dataset and the traces they leave.

:func:`synthesize` renders the real video of a target identity (a procedural talking head
of :mod:`kdbench.data.synthetic.faces` over a natural background, with camera gain and
sensor noise) and its four fakes from a source identity, as frames in memory. Each
manipulation leaves its own kind of trace:

* **Deepfakes**: the source face, rendered at reduced resolution with the target's
  pose and expression, is nearest-neighbour up-sampled with a periodic
  (transposed-convolution-like) checkerboard, colour-shifted and blended into the
  target with a soft inner-face mask.
* **Face2Face**: the target's own face, re-rendered with the source's mouth motion;
  only the mouth region is replaced: warped, blurred, colour-shifted and blended in
  with a soft mask.
* **FaceSwap**: the source face (its own expression and lighting) pasted inside a
  landmark convex hull with a sharp edge, per-frame hull jitter and a colour mismatch.
* **NeuralTextures**: the target re-rendered with the source's mouth motion; the lower
  face is smoothed and overlaid with a fixed-period (GAN-like) texture.

All trace strengths live in :class:`Traces` (a field of
:class:`~kdbench.data.synthetic.tree.SynthConfig`), so difficulty is changed in one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kdbench.data.synthetic import faces
from kdbench.data.synthetic.backgrounds import sample_background
from kdbench.data.synthetic.faces import Render
from kdbench.data.synthetic.identities import Identity, Motion, sample_identity, sample_motion
from kdbench.data.synthetic.imageops import F32, bilinear_sample, gaussian_blur

if TYPE_CHECKING:
    from kdbench.data.synthetic.tree import SynthConfig

MANIPULATIONS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")

# Stream tags: every random draw comes from default_rng([seed, tag, ...]) (all of the
# generator's tags live here, _SPLIT being used by tree.make_splits, so none is used twice).
_IDENTITY, _SCENE, _FAKE, _SPLIT = 0, 1, 2, 3


@dataclass(frozen=True)
class Traces:
    """Strengths of the manipulation traces: the difficulty knobs, all in one place.

    Every fake draws a strength ``s ~ U(*strength)``; each trace amplitude below is
    multiplied by ``s``, so the low end of ``strength`` gives subtle fakes. Raise the
    amplitudes (or ``strength``) for an easier task, lower them for a harder one.

    The defaults are "moderate": a half-width ResNet-18 trained from scratch for 20
    epochs on 3840 frames (80 % centre crop, 64x64) of the default dataset reached a
    test AUC of about 0.90 and an accuracy of about 0.87 (all-fake baseline: 0.80);
    Face2Face is the hardest method, FaceSwap and NeuralTextures the easiest.
    """

    strength: tuple[float, float] = (0.8, 1.5)
    deepfakes_lowres: int = 3  # face rendered at 1/lowres resolution; checkerboard period too
    deepfakes_checker: float = 0.15  # up-sampling checkerboard amplitude (relative intensity)
    deepfakes_color: float = 0.1  # per-channel colour gain mismatch (std)
    face2face_warp: float = 0.12  # mouth warp displacement (face units; face half-height 1)
    face2face_blur: float = 2.0  # Gaussian sigma (pixels) of the re-rendered mouth region
    face2face_color: float = 0.15  # colour gain mismatch of the mouth region (std)
    faceswap_color: float = 0.12  # colour / brightness mismatch of the pasted face (std)
    faceswap_edge: float = 0.5  # hull mask edge width in pixels (small = sharp seam)
    faceswap_jitter: float = 0.02  # per-frame landmark jitter of the hull (face units)
    neuraltextures_amp: float = 0.2  # amplitude of the periodic GAN-like texture
    neuraltextures_period: float = 6.0  # its period in pixels
    neuraltextures_smooth: float = 2.0  # Gaussian sigma (pixels) smoothing the skin texture


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Scene:
    """Everything about one identity's real video except the identity itself."""

    motion: Motion
    background: np.ndarray  # [T,3,H,W]
    gain: np.ndarray  # camera white balance [3,1,1]
    noise: np.ndarray  # sensor noise [T,3,H,W]


def _identity(cfg: SynthConfig, i: int) -> Identity:
    return sample_identity(np.random.default_rng([cfg.seed, _IDENTITY, i]))


def _scene(cfg: SynthConfig, i: int) -> _Scene:
    rng = np.random.default_rng([cfg.seed, _SCENE, i])
    motion = sample_motion(rng, cfg.frames, cfg.fps)
    background = sample_background(rng, cfg.size, cfg.frames)
    gain = rng.uniform(0.9, 1.1, (3, 1, 1)).astype(F32)
    sigma = rng.uniform(0.5, 2.0) / 255
    noise = rng.normal(0, sigma, background.shape).astype(F32)
    return _Scene(motion, background, gain, noise)


def face_masks(cfg: SynthConfig, ident: int) -> np.ndarray:
    """Soft face masks float32 [T,H,W] of the real video of identity ``ident``."""
    scene = _scene(cfg, ident)
    return np.stack(
        [
            r.face
            for r in faces.render_clip(
                _identity(cfg, ident), scene.motion, cfg.size, scene.background
            )
        ]
    )


def synthesize(cfg: SynthConfig, target: int, source: int) -> dict[str, np.ndarray]:
    """Frames uint8 [T,H,W,3] of real video ``target`` and its four fakes from ``source``.

    Keys: ``"real"`` and the names in :data:`MANIPULATIONS`. Deterministic in
    ``(cfg, target, source)``.
    """
    ctx = _Context.build(cfg, target, source)
    out = {"real": ctx.real}
    for k, name in enumerate(MANIPULATIONS):
        rng = np.random.default_rng([cfg.seed, _FAKE, target, source, k])
        s = rng.uniform(*cfg.traces.strength)
        out[name] = np.stack(list(_MANIPULATE[name](ctx, rng, s)))
    return {k: _to_uint8(v) for k, v in out.items()}


@dataclass
class _Context:
    cfg: SynthConfig
    t_ident: Identity
    s_ident: Identity
    t_scene: _Scene
    s_motion: Motion
    t_renders: list[Render]
    real: np.ndarray  # [T,3,H,W] float, with camera gain and noise
    _reenact: list[np.ndarray] | None = None

    @classmethod
    def build(cls, cfg: SynthConfig, target: int, source: int) -> _Context:
        t_ident, t_scene = _identity(cfg, target), _scene(cfg, target)
        renders = faces.render_clip(t_ident, t_scene.motion, cfg.size, t_scene.background)
        real = np.stack([r.rgb for r in renders]) * t_scene.gain + t_scene.noise
        return cls(
            cfg, t_ident, _identity(cfg, source), t_scene, _scene(cfg, source).motion, renders, real
        )

    def reenacted(self) -> list[np.ndarray]:
        """Target identity and pose with the source's mouth motion (Face2Face, NT)."""
        if self._reenact is None:
            motion = self.t_scene.motion.driven_by(self.s_motion, "mouth")
            self._reenact = [
                r.rgb * self.t_scene.gain
                for r in faces.render_clip(self.t_ident, motion, self.cfg.size)
            ]
        return self._reenact


def _deepfakes(ctx: _Context, rng: np.random.Generator, s: float) -> Iterator[np.ndarray]:
    tr, size = ctx.cfg.traces, ctx.cfg.size
    f = max(1, tr.deepfakes_lowres)
    low = math.ceil(size / f)
    checker = _checkerboard(rng, f, size) * F32(s * tr.deepfakes_checker)
    tint = (1 + s * tr.deepfakes_color * rng.normal(size=(3, 1, 1))).astype(F32)
    edge = rng.uniform(0.05, 0.12)  # blending width, face units
    for i, r in enumerate(ctx.t_renders):
        background = _downsample(ctx.real[i] / ctx.t_scene.gain, f, low)
        src = faces.render(ctx.s_ident, ctx.t_scene.motion.pose(i), low, background).rgb
        up = src.repeat(f, axis=1).repeat(f, axis=2)[:, :size, :size]
        flicker = 1 + F32(s * tr.deepfakes_color * 0.2) * rng.normal(size=(3, 1, 1)).astype(F32)
        content = up * ctx.t_scene.gain * tint * flicker * (1 + checker)
        mask = _inner_face(ctx.t_ident, r, edge * r.px)
        yield _blend(ctx.real[i], content, mask)


def _face2face(ctx: _Context, rng: np.random.Generator, s: float) -> Iterator[np.ndarray]:
    tr = ctx.cfg.traces
    phase = rng.uniform(0, 2 * math.pi, 2)
    speed = rng.uniform(-0.5, 0.5, 2)
    tint = (1 + s * tr.face2face_color * rng.normal(size=(3, 1, 1))).astype(F32)
    yy, xx = np.mgrid[0 : ctx.cfg.size, 0 : ctx.cfg.size].astype(F32)
    ident = ctx.t_ident
    for i, (r, re) in enumerate(zip(ctx.t_renders, ctx.reenacted(), strict=True)):
        region = (
            faces.ellipse_mask(
                r.uf, r.v, 0.0, ident.mouth_y + 0.05, ident.mouth_w * 1.8, 0.27, r.px, 0.09 * r.px
            )
            * r.face
        )
        amp = F32(s * tr.face2face_warp * r.px) * region
        dv = r.v - F32(ctx.t_ident.mouth_y)
        dx = amp * np.sin(F32(2 * math.pi / 0.3) * dv + F32(phase[0] + speed[0] * i))
        dy = amp * F32(0.6) * np.cos(F32(2 * math.pi / 0.35) * r.uf + F32(phase[1] + speed[1] * i))
        warped = bilinear_sample(re, yy + dy, xx + dx)
        content = gaussian_blur(warped, s * tr.face2face_blur) * tint
        yield _blend(ctx.real[i], content, region)


def _faceswap(ctx: _Context, rng: np.random.Generator, s: float) -> Iterator[np.ndarray]:
    tr = ctx.cfg.traces
    own = ("blink", "mouth", "light_az", "light_el", "ambient")  # source keeps these
    motion = ctx.t_scene.motion.driven_by(ctx.s_motion, *own)
    tint = (1 + s * tr.faceswap_color * rng.normal(size=(3, 1, 1))).astype(F32)
    shift = F32(s * tr.faceswap_color * 0.5 * rng.normal())
    for i, r in enumerate(ctx.t_renders):
        pose = motion.pose(i)
        src = faces.render(ctx.s_ident, pose, ctx.cfg.size, ctx.real[i] / ctx.t_scene.gain).rgb
        content = gaussian_blur(src, 0.6) * ctx.t_scene.gain * tint + shift
        jitter = rng.normal(0, s * tr.faceswap_jitter, 2)
        hull = faces.hull_points(ctx.t_ident, pose.yaw) + jitter
        mask = faces.polygon_mask(r.u, r.v, hull, r.px, tr.faceswap_edge)
        yield _blend(ctx.real[i], content, mask)


def _neuraltextures(ctx: _Context, rng: np.random.Generator, s: float) -> Iterator[np.ndarray]:
    tr, size = ctx.cfg.traces, ctx.cfg.size
    period = max(tr.neuraltextures_period, 2.0)
    phase = rng.uniform(0, 2 * math.pi, 2)
    grid = np.arange(size, dtype=F32) * F32(2 * math.pi / period)
    pattern = np.cos(grid[:, None] + F32(phase[0])) * np.cos(grid[None, :] + F32(phase[1]))
    weights = (1 + 0.3 * rng.normal(size=(3, 1, 1))).astype(F32)
    texture = pattern * weights * F32(s * tr.neuraltextures_amp)
    ident = ctx.t_ident
    for i, (r, re) in enumerate(zip(ctx.t_renders, ctx.reenacted(), strict=True)):
        region = (
            faces.ellipse_mask(
                r.uf, r.v, 0.0, ident.mouth_y - 0.05, ident.face_w * 0.62, 0.5, r.px, 0.1 * r.px
            )
            * r.face
        )
        content = gaussian_blur(re, s * tr.neuraltextures_smooth) + texture
        yield _blend(ctx.real[i], content, region)


_MANIPULATE: dict[str, Callable[[_Context, np.random.Generator, float], Iterator[np.ndarray]]]
_MANIPULATE = {
    "Deepfakes": _deepfakes,
    "Face2Face": _face2face,
    "FaceSwap": _faceswap,
    "NeuralTextures": _neuraltextures,
}


def _inner_face(ident: Identity, r: Render, edge_px: float) -> np.ndarray:
    """Soft mask of the inner face (brows to chin) of a rendered target frame."""
    return faces.ellipse_mask(
        r.u, r.v, 0.0, 0.1, ident.face_w * 0.78, ident.face_h * 0.82, r.px, edge_px
    )


def _checkerboard(rng: np.random.Generator, period: int, size: int) -> np.ndarray:
    """A fixed zero-mean ``period`` x ``period`` tile repeated over the frame, max |1|."""
    period = max(2, int(period))
    tile = rng.normal(size=(period, period))
    tile[::2, ::2] += 1.5  # the stride pattern of overlapping transposed convolutions
    tile -= tile.mean()
    tile /= np.abs(tile).max() + 1e-9
    reps = size // period + 1
    return np.tile(tile, (reps, reps))[:size, :size].astype(F32)


def _downsample(img: np.ndarray, f: int, low: int) -> np.ndarray:
    """Block-average [3,H,W] by ``f`` to [3,low,low] (edge-padded when H % f)."""
    if f == 1:
        return img
    pad = low * f - img.shape[1]
    if pad:
        img = np.pad(img, ((0, 0), (0, pad), (0, pad)), mode="edge")
    return img.reshape(3, low, f, low, f).mean(axis=(2, 4))


def _blend(base: np.ndarray, content: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return base + mask * (content - base)


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    """float [T,3,H,W] in [0,1] -> uint8 [T,H,W,3]."""
    out = np.clip(np.rint(frames * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


__all__ = ["MANIPULATIONS", "Traces", "face_masks", "synthesize"]
