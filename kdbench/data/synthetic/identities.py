"""Who the synthetic talking heads are and how they move: identities (face shape, colours,
features) and smooth head motion, all drawn from a caller's numpy Generator."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

Color = tuple[float, float, float]

_SKIN_DARK = np.array([0.30, 0.18, 0.12])
_SKIN_LIGHT = np.array([0.97, 0.82, 0.70])
_HAIR = np.array(
    [
        [0.06, 0.05, 0.04],
        [0.20, 0.12, 0.07],
        [0.38, 0.24, 0.13],
        [0.78, 0.63, 0.40],
        [0.55, 0.24, 0.10],
        [0.62, 0.61, 0.60],
    ]
)
_IRIS = np.array(
    [
        [0.30, 0.18, 0.08],
        [0.16, 0.09, 0.05],
        [0.25, 0.45, 0.70],
        [0.30, 0.50, 0.30],
        [0.45, 0.50, 0.55],
    ]
)


@dataclass(frozen=True)
class Identity:
    """Appearance of one synthetic person (face-local units, colours in [0, 1])."""

    face_w: float  # face ellipse half-width (half-height is ``face_h``)
    face_h: float
    jaw: float  # narrowing of the lower face
    skin: Color
    tex_freq: tuple[tuple[float, float], ...]  # skin texture: sinusoid frequencies (u, v)
    tex_phase: tuple[float, ...]
    tex_amp: tuple[float, ...]
    blush: float
    eye_dx: float  # half distance between the eyes
    eye_y: float
    eye_rx: float
    eye_ry: float
    iris: Color
    iris_r: float
    brow_dy: float  # brow height above the eye centre
    brow_len: float
    brow_th: float
    brow_tilt: float
    brow_arch: float
    nose_len: float
    nose_w: float
    nose_shade: float
    mouth_y: float
    mouth_w: float
    lip_th: float
    lip: Color
    hair: Color
    hairline: float  # v of the hairline at the centre (fringe above it)
    hairline_curve: float
    hair_volume: float  # hair ellipse size relative to the face
    hair_len: float  # v down to which long hair falls behind the face (< 0: short hair)
    beard: float  # stubble darkness (0 for most)
    cloth: Color
    specular: float


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a random identity (face shape, skin, eyes, brows, nose, mouth, hair, clothes)."""
    u = rng.uniform
    skin = _SKIN_DARK + (_SKIN_LIGHT - _SKIN_DARK) * u(0.0, 1.0) ** 0.7
    skin = np.clip(skin * (1 + rng.normal(0, 0.04, 3)), 0, 1)
    hair = np.clip(_HAIR[rng.integers(len(_HAIR))] * (1 + rng.normal(0, 0.12, 3)), 0, 1)
    iris = np.clip(_IRIS[rng.integers(len(_IRIS))] * (1 + rng.normal(0, 0.1, 3)), 0, 1)
    lip = np.clip(skin + (np.array([0.72, 0.28, 0.30]) - skin) * u(0.3, 0.65), 0, 1)
    n_tex = 10
    angle = u(0, 2 * math.pi, n_tex)
    radius = u(1.5, 8.0, n_tex)  # cycles per face unit
    tex_amp = u(0.2, 1.0, n_tex) / radius**0.5
    tex_amp = tex_amp / np.sqrt((tex_amp**2).sum()) * u(0.01, 0.035)
    return Identity(
        face_w=u(0.68, 0.82),
        face_h=u(0.96, 1.04),
        jaw=u(0.08, 0.3),
        skin=_c(skin),
        tex_freq=tuple(
            (float(r * math.cos(a)), float(r * math.sin(a)))
            for r, a in zip(radius, angle, strict=True)
        ),
        tex_phase=tuple(float(p) for p in u(0, 2 * math.pi, n_tex)),
        tex_amp=tuple(float(a) for a in tex_amp),
        blush=u(0.0, 0.12),
        eye_dx=u(0.28, 0.36),
        eye_y=u(-0.14, -0.02),
        eye_rx=u(0.12, 0.16),
        eye_ry=u(0.05, 0.075),
        iris=_c(iris),
        iris_r=u(0.045, 0.06),
        brow_dy=u(0.13, 0.2),
        brow_len=u(0.14, 0.2),
        brow_th=u(0.022, 0.045),
        brow_tilt=u(-0.2, 0.15),
        brow_arch=u(0.0, 0.05),
        nose_len=u(0.26, 0.4),
        nose_w=u(0.08, 0.12),
        nose_shade=u(0.08, 0.2),
        mouth_y=u(0.5, 0.62),
        mouth_w=u(0.17, 0.26),
        lip_th=u(0.03, 0.055),
        lip=_c(lip),
        hair=_c(hair),
        hairline=u(-0.8, -0.5),
        hairline_curve=u(0.0, 0.35),
        hair_volume=u(1.05, 1.22),
        hair_len=float(rng.choice([u(-0.6, -0.2), u(0.4, 1.5)])),
        beard=u(0.15, 0.4) if u() < 0.2 else 0.0,
        cloth=_c(u(0.05, 0.9, 3)),
        specular=u(0.0, 0.12),
    )


def _c(x: np.ndarray) -> Color:
    return (float(x[0]), float(x[1]), float(x[2]))


# ----------------------------------------------------------------------------- motion


@dataclass(frozen=True)
class Pose:
    """Head pose, expression and lighting of one frame.

    ``cx, cy``: face centre in normalised frame coordinates ([-1, 1], y down);
    ``scale``: face half-height in the same units; ``angle``: in-plane rotation
    (radians); ``yaw``: sideways turn (shifts the inner features); ``blink``: eye
    openness (1 open, 0 closed); ``mouth``: mouth opening (0 closed, 1 wide);
    ``light_az``/``light_el``: light direction; ``ambient``: unlit fraction.
    """

    cx: float
    cy: float
    scale: float
    angle: float
    yaw: float
    blink: float
    mouth: float
    light_az: float
    light_el: float
    ambient: float


@dataclass(frozen=True)
class Motion:
    """Per-frame pose tracks (each a float array of length ``frames``)."""

    cx: np.ndarray
    cy: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    yaw: np.ndarray
    blink: np.ndarray
    mouth: np.ndarray
    light_az: np.ndarray
    light_el: np.ndarray
    ambient: np.ndarray

    def __len__(self) -> int:
        return len(self.cx)

    def pose(self, i: int) -> Pose:
        """The pose of frame ``i``."""
        return Pose(**{f.name: float(getattr(self, f.name)[i]) for f in fields(self)})

    def driven_by(self, other: Motion, *names: str) -> Motion:
        """A copy whose tracks ``names`` (e.g. ``"mouth"``) come from ``other``."""
        return replace(self, **{n: getattr(other, n)[: len(self)] for n in names})


def sample_motion(rng: np.random.Generator, frames: int, fps: int = 25) -> Motion:
    """Draw a smooth random head trajectory with blinks, talking and moving light."""
    t = np.arange(frames) / fps
    u = rng.uniform
    move = u(0.01, 0.05)
    cx = _track(rng, t, u(-0.08, 0.08), move)
    cy = _track(rng, t, u(-0.1, 0.04), move * 0.7)
    scale = _track(rng, t, u(0.38, 0.5), u(0.005, 0.025))
    angle = _track(rng, t, u(-0.12, 0.12), u(0.01, 0.07))
    yaw = _track(rng, t, u(-0.15, 0.15), u(0.01, 0.08))
    light_az = _track(rng, t, u(-1.0, 1.0), u(0.02, 0.12), fmax=0.3)
    light_el = _track(rng, t, u(0.0, 0.6), u(0.01, 0.05), fmax=0.3)
    ambient = np.full(frames, u(0.4, 0.65))
    duration = frames / fps
    blink = np.ones(frames)
    for tb in u(-0.2, duration + 0.2, rng.poisson(0.5 * (duration + 0.4))):
        blink *= 1 - np.exp(-(((t - tb) / u(0.04, 0.07)) ** 2))
    talk = np.zeros(frames)
    for _ in range(3):  # syllable-rate oscillation
        talk += rng.normal() * np.sin(2 * math.pi * u(2.0, 6.0) * t + u(0, 2 * math.pi))
    mouth = u(0.3, 1.0) * np.clip(0.35 + 0.35 * talk, 0, 1)
    return Motion(cx, cy, scale, angle, yaw, blink, mouth, light_az, light_el, ambient)


def _track(
    rng: np.random.Generator, t: np.ndarray, base: float, amp: float, fmax: float = 1.2
) -> np.ndarray:
    """``base`` plus a smooth random wiggle (three sinusoids) of about ``amp``."""
    k = 3
    freq = rng.uniform(0.1, fmax, k)
    phase = rng.uniform(0, 2 * math.pi, k)
    weight = rng.normal(size=k)
    weight /= np.linalg.norm(weight) + 1e-9
    wiggle = (weight[:, None] * np.sin(2 * math.pi * freq[:, None] * t + phase[:, None])).sum(0)
    return base + amp * math.sqrt(2) * wiggle


