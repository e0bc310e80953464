"""Procedural talking-head renderer (numpy only, vectorised).

A face is a stack of soft shapes (ellipses, boxes, convex polygons) described in
*face-local* coordinates ``(u, v)``: the face ellipse is centred at the origin, its
half-height is about 1, ``u`` points right and ``v`` points down. Each frame the pixel
grid is inverse-transformed into face coordinates (translation, scale, in-plane
rotation), every shape's signed distance is turned into a soft mask with a sigmoid,
and the layers are composited back to front (body, neck, hair, ears, face, features,
fringe). Lambertian shading from a slowly moving light gives shading across the face.

Images are float32 in [0, 1] and *channel-first* ``[3, H, W]`` (numpy broadcasts a
per-pixel mask over a leading channel axis several times faster than over a trailing
one). Everything random comes from a ``numpy.random.Generator`` passed in by the
caller, so a seed fully determines identities, motion and backgrounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from kdbench.data.synthetic.identities import Identity, Motion, Pose
from kdbench.data.synthetic.imageops import F32, over


@dataclass(frozen=True)
class Render:
    """One rendered frame and the geometry the manipulations need.

    ``rgb``: float32 [3,H,W] in [0,1]; ``alpha``: person coverage; ``face``: soft face
    (skin ellipse) mask; ``mouth``: soft mouth-region mask; ``u, v``: face-local
    coordinates of every pixel; ``uf``: ``u`` shifted with the yaw (inner features);
    ``px``: pixels per face unit.
    """

    rgb: np.ndarray
    alpha: np.ndarray
    face: np.ndarray
    mouth: np.ndarray
    u: np.ndarray
    v: np.ndarray
    uf: np.ndarray
    px: float


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(size, dtype=F32) + 0.5) / size * 2 - 1).astype(F32)
    return c[None, :].repeat(size, 0), c[:, None].repeat(size, 1)


def face_coords(pose: Pose, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Face-local coordinates ``(u, v)`` of every pixel and pixels per face unit."""
    x, y = _grid(size)
    dx, dy = x - F32(pose.cx), y - F32(pose.cy)
    c, s = F32(math.cos(pose.angle) / pose.scale), F32(math.sin(pose.angle) / pose.scale)
    return c * dx + s * dy, c * dy - s * dx, pose.scale * size / 2


def soft(d: np.ndarray, px: float, edge_px: float = 0.35) -> np.ndarray:
    """Soft inside-mask from a signed distance ``d`` (face units, < 0 inside).

    A sigmoid whose transition is ``edge_px`` pixels wide (scale of the logistic).
    """
    return (0.5 - 0.5 * np.tanh(d * F32(0.5 * px / edge_px))).astype(F32, copy=False)


def ellipse_sd(x: np.ndarray, y: np.ndarray, rx: float, ry: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse centred at the origin.

    First-order distance ``f / |grad f|`` of the implicit function, bounded below by the
    distance to the bounding box (which keeps thin ellipses from smearing out).
    """
    qx, qy = x * F32(1 / rx), y * F32(1 / ry)
    grad = 2 * np.sqrt((qx * F32(1 / rx)) ** 2 + (qy * F32(1 / ry)) ** 2) + F32(1e-4)
    box = np.maximum(np.abs(x) - F32(rx), np.abs(y) - F32(ry))
    return np.maximum((qx * qx + qy * qy - 1) / grad, box)


def ellipse_mask(
    u: np.ndarray,
    v: np.ndarray,
    cu: float,
    cv: float,
    rx: float,
    ry: float,
    px: float,
    edge_px: float = 0.35,
) -> np.ndarray:
    """Soft mask of the ellipse centred at ``(cu, cv)`` with radii ``(rx, ry)``."""
    return soft(ellipse_sd(u - F32(cu), v - F32(cv), rx, ry), px, edge_px)


def polygon_mask(
    u: np.ndarray, v: np.ndarray, points: np.ndarray, px: float, edge_px: float = 0.35
) -> np.ndarray:
    """Soft mask of the convex polygon ``points`` [N,2] (any winding order)."""
    pts = np.asarray(points, dtype=np.float64)
    centre = pts.mean(0)
    angle = np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0])
    pts = pts[np.argsort(angle)]
    d = None
    for p, q in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        edge = q - p
        normal = np.array([edge[1], -edge[0]]) / (np.linalg.norm(edge) + 1e-12)
        if np.dot(normal, centre - p) > 0:
            normal = -normal  # outward
        side = (u - F32(p[0])) * F32(normal[0]) + (v - F32(p[1])) * F32(normal[1])
        d = side if d is None else np.maximum(d, side)
    return soft(d, px, edge_px)


def hull_points(ident: Identity, yaw: float = 0.0) -> np.ndarray:
    """Landmark-like convex hull of the inner face (brows to chin), face units."""
    shift = -0.3 * yaw
    brow_v = ident.eye_y - ident.brow_dy - 0.05
    top = [(shift + s * (ident.eye_dx + ident.brow_len), brow_v) for s in (-1, 1)]
    top += [(shift + s * 0.12, brow_v - 0.04) for s in (-1, 1)]
    jaw = []
    for a in np.linspace(0.12 * math.pi, 0.88 * math.pi, 9):  # lower outline
        v = math.sin(a) * ident.face_h * 0.93
        w = ident.face_w * (1 - ident.jaw * max(v / ident.face_h, 0) ** 2) * 0.9
        jaw.append((math.cos(a) * w, v))
    return np.array(top + jaw)


def render(ident: Identity, pose: Pose, size: int, background: np.ndarray | None = None) -> Render:
    """Render ``ident`` in ``pose`` as a ``size`` x ``size`` frame over ``background``.

    ``background`` is float [3,H,W] (not modified); ``None`` renders over black.
    """
    u, v, px = face_coords(pose, size)
    uf = u + F32(0.3 * pose.yaw)  # inner features slide sideways with the head turn
    img = np.zeros((3, size, size), F32) if background is None else background.astype(F32)
    alpha = np.zeros((size, size), F32)
    skin = np.array(ident.skin, F32)
    light = _light(pose)

    def paint(mask: np.ndarray, colour: np.ndarray | tuple, roi: tuple = ()) -> None:
        over(img[(slice(None), *roi)], mask, colour)
        a = alpha[roi]
        a += mask * (1 - a)

    # body, neck and hair behind the head (whole frame)
    body = ellipse_mask(u, v, 0.0, 2.3, 1.9, 1.05, px)
    paint(body, np.array(ident.cloth, F32) * F32(0.8 + 0.2 * max(light[2], 0)))
    neck_sd = np.maximum(np.abs(u) - F32(ident.face_w * 0.55), np.maximum(0.3 - v, v - 1.6))
    paint(soft(neck_sd, px), skin * F32(0.72 + 0.1 * pose.ambient))
    hv = ident.hair_volume
    hair_sd = ellipse_sd(u, v + F32(0.1), ident.face_w * hv, ident.face_h * hv)
    if ident.hair_len > 0:
        box = np.maximum(
            np.abs(u) - F32(ident.face_w * hv * 0.95), np.maximum(-0.1 - v, v - F32(ident.hair_len))
        )
        hair_sd = np.minimum(hair_sd, box)
    hair_mask = soft(hair_sd, px)
    hair_col = _hair_colour(ident, u, v, light)
    paint(hair_mask, hair_col)
    # the head itself, inside a square around it (most of the work, so keep it small)
    hv = ident.hair_volume * 1.05
    roi = _roi(pose, size, (-ident.face_w * hv, ident.face_w * hv, -0.1 - ident.face_h * hv, 1.1))
    u_all, v_all, uf_all = u, v, uf
    u, v, uf, hair_mask = u[roi], v[roi], uf[roi], hair_mask[roi]
    hair_col = hair_col[(slice(None), *roi)]
    for side in (-1.0, 1.0):  # ears
        paint(
            ellipse_mask(u, v, side * ident.face_w * 0.97, 0.02, 0.09, 0.17, px),
            skin * F32(0.85),
            roi,
        )
    face = _face_mask(ident, u, v, px)
    col = _skin(ident, u, v, skin)
    shift = 0.3 * pose.yaw

    def crop(u0: float, u1: float, v0: float, v1: float) -> tuple[slice, slice]:
        ys, xs = _roi(pose, size, (u0 - shift, u1 - shift, v0, v1), margin=5.0)
        return (
            slice(
                max(ys.start, roi[0].start) - roi[0].start,
                max(min(ys.stop, roi[0].stop) - roi[0].start, 0),
            ),
            slice(
                max(xs.start, roi[1].start) - roi[1].start,
                max(min(xs.stop, roi[1].stop) - roi[1].start, 0),
            ),
        )

    _features(col, ident, pose, uf, v, px, skin, light, crop)
    col *= _shading(ident, u, v, light, pose.ambient)
    paint(face, col, roi)
    # fringe: hair in front of the forehead above the hairline
    line = F32(ident.hairline) + F32(ident.hairline_curve) * (u * F32(1 / ident.face_w)) ** 2
    paint(hair_mask * soft(v - line, px, 0.6), hair_col, roi)
    mouth = ellipse_mask(uf, v, 0.0, ident.mouth_y + 0.04, ident.mouth_w * 1.55, 0.2, px, 2.0)
    np.clip(img, 0, 1, out=img)
    full_face, full_mouth = np.zeros((2, size, size), F32)
    full_face[roi], full_mouth[roi] = face, mouth * face
    return Render(img, alpha, full_face, full_mouth, u_all, v_all, uf_all, px)


def _roi(
    pose: Pose, size: int, box: tuple[float, float, float, float], margin: float = 4.0
) -> tuple[slice, slice]:
    """Pixel rows/columns covering the face-local box ``(u0, u1, v0, v1)`` plus ``margin``."""
    u0, u1, v0, v1 = box
    us, vs = np.array([u0, u1, u1, u0]), np.array([v0, v0, v1, v1])
    c, s = math.cos(pose.angle) * pose.scale, math.sin(pose.angle) * pose.scale
    xs = ((pose.cx + c * us - s * vs) + 1) * size / 2
    ys = ((pose.cy + s * us + c * vs) + 1) * size / 2

    def span(p: np.ndarray) -> slice:
        lo = min(max(0, int(p.min() - margin)), size)
        return slice(lo, max(lo, min(size, int(math.ceil(p.max() + margin)))))

    return span(ys), span(xs)


_Crop = Callable[[float, float, float, float], tuple[slice, slice]]


def render_clip(
    ident: Identity, motion: Motion, size: int, background: np.ndarray | None = None
) -> list[Render]:
    """Render every frame of ``motion`` (``background`` is [T,3,H,W] or None)."""
    return [
        render(ident, motion.pose(i), size, None if background is None else background[i])
        for i in range(len(motion))
    ]


def _light(pose: Pose) -> np.ndarray:
    ce = math.cos(pose.light_el)
    return np.array(
        [math.sin(pose.light_az) * ce, -math.sin(pose.light_el), math.cos(pose.light_az) * ce]
    )


def _face_mask(ident: Identity, u: np.ndarray, v: np.ndarray, px: float) -> np.ndarray:
    vn = np.clip(v * F32(1 / ident.face_h), 0, 1)
    half_w = F32(ident.face_w) * (1 - F32(ident.jaw) * vn * vn)
    return soft(_ellipse_sd_var(u, v, half_w, ident.face_h), px)


def _ellipse_sd_var(x: np.ndarray, y: np.ndarray, rx: np.ndarray, ry: float) -> np.ndarray:
    qx, qy = x / rx, y * F32(1 / ry)
    grad = 2 * np.sqrt((qx / rx) ** 2 + (qy * F32(1 / ry)) ** 2) + F32(1e-4)
    return (qx * qx + qy * qy - 1) / grad


def _skin(ident: Identity, u: np.ndarray, v: np.ndarray, skin: np.ndarray) -> np.ndarray:
    tex = np.zeros_like(u)
    for (fu, fv), ph, a in zip(ident.tex_freq, ident.tex_phase, ident.tex_amp, strict=True):
        tex += F32(a) * np.sin(F32(2 * math.pi * fu) * u + F32(2 * math.pi * fv) * v + F32(ph))
    return skin[:, None, None] * (1 + tex)


def _shading(
    ident: Identity, u: np.ndarray, v: np.ndarray, light: np.ndarray, ambient: float
) -> np.ndarray:
    nx = np.clip(u * F32(1 / ident.face_w), -1, 1)
    ny = np.clip(v * F32(1 / ident.face_h), -1, 1)
    nz = np.sqrt(np.clip(1 - nx * nx - ny * ny, 0.05, 1))
    lam = np.clip(nx * F32(light[0]) + ny * F32(light[1]) + nz * F32(light[2]), 0, 1)
    shade = F32(ambient) + F32(1 - ambient) * lam
    if ident.specular > 0:
        shade += F32(ident.specular) * lam**8
    return shade


def _hair_colour(ident: Identity, u: np.ndarray, v: np.ndarray, light: np.ndarray) -> np.ndarray:
    strands = 1 + F32(0.04) * np.sin(F32(30.0) * u + F32(6.0) * v)
    lit = F32(0.8) + F32(0.2 * max(light[2], 0.0)) + F32(0.1 * light[0]) * u
    return np.array(ident.hair, F32)[:, None, None] * (strands * lit)


def _features(
    col: np.ndarray,
    ident: Identity,
    pose: Pose,
    uf: np.ndarray,
    v: np.ndarray,
    px: float,
    skin: np.ndarray,
    light: np.ndarray,
    crop: _Crop,
) -> None:
    """Paint cheeks, eyes, brows, nose, mouth and stubble onto the face colour ``col``.

    Small features are drawn only inside ``crop(box)``, the pixels around their box.
    """

    def part(u0: float, u1: float, v0: float, v1: float) -> tuple:
        sl = crop(u0, u1, v0, v1)
        return col[(slice(None), *sl)], uf[sl], v[sl]

    ey = ident.eye_y
    for side in (-1.0, 1.0):
        ex = side * ident.eye_dx
        over(
            col,
            F32(ident.blush) * ellipse_mask(uf, v, ex * 1.3, 0.28, 0.16, 0.12, px, 5.0),
            (0.85, 0.35, 0.35),
        )
        w = ident.eye_rx * 1.5 + 0.05
        c, fu, fv = part(ex - w, ex + w, ey - ident.brow_dy - 0.1, ey + ident.eye_ry * 2.2 + 0.05)
        over(
            c,
            F32(0.25)
            * ellipse_mask(fu, fv, ex, ey - 0.02, ident.eye_rx * 1.5, ident.eye_ry * 2.2, px, 2.0),
            skin * F32(0.6),
        )
        _paint_eye(c, ident, fu - F32(ex), fv - F32(ey), pose, px)
        _paint_brow(c, ident, fu - F32(ex * 1.05), fv - F32(ey - ident.brow_dy), side, px)
    # nose: shadow on the side away from the light, tip highlight, nostrils
    tip = ey + ident.nose_len
    c, fu, fv = part(-ident.nose_w * 1.5, ident.nose_w * 1.5, ey, tip + ident.nose_w)
    away = -1.0 if light[0] > 0 else 1.0
    side_shadow = ellipse_mask(
        fu, fv, away * ident.nose_w * 0.9, (ey + tip) / 2 + 0.04, 0.035, ident.nose_len / 2, px, 2.0
    )
    over(c, F32(ident.nose_shade * (0.5 + abs(light[0]))) * side_shadow, skin * F32(0.55))
    over(
        c,
        F32(0.25) * ellipse_mask(fu, fv, 0, tip, ident.nose_w, ident.nose_w * 0.7, px, 1.5),
        np.minimum(skin * F32(1.12), 1),
    )
    for side in (-1.0, 1.0):
        over(
            c,
            F32(0.7)
            * ellipse_mask(
                fu, fv, side * ident.nose_w * 0.55, tip + ident.nose_w * 0.35, 0.03, 0.017, px, 0.6
            ),
            skin * F32(0.35),
        )
    if ident.beard > 0:
        chin = ellipse_mask(uf, v, 0, ident.mouth_y + 0.12, ident.face_w * 0.75, 0.45, px, 4.0)
        over(
            col,
            F32(ident.beard) * chin * soft(tip + 0.06 - v, px, 2.0),
            np.array(ident.hair, F32) * F32(0.8),
        )
    my, mw = ident.mouth_y, ident.mouth_w + 0.03
    c, fu, fv = part(-mw, mw, my - ident.lip_th - 0.05, my + ident.lip_th + 0.14)
    _paint_mouth(c, ident, fu, fv - F32(my), pose.mouth, px)


def _paint_eye(
    col: np.ndarray, ident: Identity, eu: np.ndarray, ev: np.ndarray, pose: Pose, px: float
) -> None:
    ry = ident.eye_ry * max(pose.blink, 0.06)
    over(
        col,
        F32(0.85) * ellipse_mask(eu, ev, 0, 0, ident.eye_rx + 0.018, ry + 0.016, px),
        (0.12, 0.08, 0.07),
    )  # lid line / lashes
    sclera = ellipse_mask(eu, ev, 0, 0, ident.eye_rx, ry, px)
    over(col, sclera, (0.9, 0.88, 0.85))
    gaze = -0.25 * pose.yaw * ident.eye_rx
    iris = ellipse_mask(eu, ev, gaze, 0, ident.iris_r, ident.iris_r, px) * sclera
    over(col, iris, ident.iris)
    pupil = ellipse_mask(eu, ev, gaze, 0, ident.iris_r * 0.42, ident.iris_r * 0.42, px) * sclera
    over(col, pupil, (0.03, 0.03, 0.03))
    glint = (
        ellipse_mask(
            eu,
            ev,
            gaze + ident.iris_r * 0.35,
            -ident.iris_r * 0.35,
            ident.iris_r * 0.22,
            ident.iris_r * 0.22,
            px,
        )
        * sclera
    )
    over(col, F32(0.8) * glint, (1.0, 1.0, 1.0))


def _paint_brow(
    col: np.ndarray, ident: Identity, bu: np.ndarray, bv: np.ndarray, side: float, px: float
) -> None:
    t = -side * ident.brow_tilt
    c, s = F32(math.cos(t)), F32(math.sin(t))
    ru, rv = c * bu + s * bv, c * bv - s * bu
    rv = rv + F32(ident.brow_arch) * (ru * F32(1 / ident.brow_len)) ** 2 * F32(3)
    brow = ellipse_mask(ru, rv, 0, 0, ident.brow_len, ident.brow_th, px, 0.5)
    over(col, F32(0.9) * brow, np.array(ident.hair, F32) * F32(0.75))


def _paint_mouth(
    col: np.ndarray,
    ident: Identity,
    mu: np.ndarray,
    mv: np.ndarray,
    opening: float,
    px: float,
) -> None:
    gap = 0.1 * float(np.clip(opening, 0, 1))
    lips = ellipse_mask(mu, mv, 0, gap * 0.3, ident.mouth_w, ident.lip_th + gap * 0.6, px)
    over(col, lips, ident.lip)
    inner = ellipse_mask(mu, mv, 0, gap * 0.3, ident.mouth_w * 0.78, max(gap * 0.55, 0.006), px)
    over(col, F32(0.85) * inner, (0.22, 0.06, 0.07))
    if gap > 0.01:
        teeth = inner * soft(mv - F32(gap * 0.3 - gap * 0.25), px, 0.5)
        over(col, F32(0.9) * teeth, (0.9, 0.87, 0.8))


