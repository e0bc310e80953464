"""Face detectors for preparation: a box per frame, or None when no face is found."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from kdbench.errors import KdbenchError

Box = tuple[int, int, int, int]  # x0, y0, x1, y1


class Detector(Protocol):
    """Returns the face box of an RGB uint8 frame (or None); ``enlarge`` scales it for the crop."""

    enlarge: float

    def __call__(self, frame: np.ndarray) -> Box | None: ...


class CenterDetector:
    """For pre-cropped or centred data: the central square covering ``fraction`` of the short
    side."""

    enlarge = 1.0

    def __init__(self, fraction: float = 0.8) -> None:
        self.fraction = fraction

    def __call__(self, frame: np.ndarray) -> Box:
        h, w = frame.shape[:2]
        half = self.fraction * min(h, w) / 2
        cx, cy = w / 2, h / 2
        return (round(cx - half), round(cy - half), round(cx + half), round(cy + half))


class FullDetector(CenterDetector):
    """For face crops already made (e.g. DeepfakeBench's frames): the whole frame (its central
    square when it is not square)."""

    def __init__(self) -> None:
        super().__init__(fraction=1.0)


class StretchDetector(FullDetector):
    """For whole images of any shape (``prepare --crop resize``): the whole frame resized to
    the crop size, its aspect not kept (nothing cut away)."""

    stretch = True


class DlibDetector:
    """dlib's built-in HOG frontal face detector (no weight file), as DeepfakeBench uses it: the
    frame upsampled ``upsample`` times, the largest face kept (ties: the higher score), its box
    enlarged by ``enlarge`` (1.3) for the crop. dlib is imported on construction, so create one
    per worker process rather than pickling it."""

    enlarge = 1.3

    def __init__(self, upsample: int = 1) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise KdbenchError(
                "the dlib face detector needs the dlib module; install it with "
                "`pip install dlib-bin`, or use --detector center for pre-cropped faces"
            ) from exc
        self.upsample = upsample
        self._detect = dlib.get_frontal_face_detector()

    def __call__(self, frame: np.ndarray) -> Box | None:
        rects, scores, _ = self._detect.run(np.ascontiguousarray(frame), self.upsample, 0.0)
        if not rects:
            return None
        best = max(zip(rects, scores), key=lambda rs: (rs[0].width() * rs[0].height(), rs[1]))[0]
        h, w = frame.shape[:2]  # dlib may return a box reaching past the border: clip it
        x0, y0 = max(best.left(), 0), max(best.top(), 0)
        x1, y1 = min(best.right() + 1, w), min(best.bottom() + 1, h)
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


DETECTORS = {"center": CenterDetector, "full": FullDetector, "stretch": StretchDetector,
             "dlib": DlibDetector}


def make_detector(name: str) -> Detector:
    """Create a detector by name."""
    if name not in DETECTORS:
        raise KdbenchError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return DETECTORS[name]()


def fill_boxes(boxes: list[Box | None]) -> list[Box] | None:
    """Give each frame without a face the box of the nearest frame with one (the earlier on a
    tie); None when no frame has a face."""
    found = [i for i, b in enumerate(boxes) if b is not None]
    if not found:
        return None
    return [boxes[min(found, key=lambda j: abs(j - i))] for i in range(len(boxes))]


def square_crop(frame: np.ndarray, box: Box, enlarge: float, size: int) -> np.ndarray:
    """Enlarge ``box`` by ``enlarge`` around its centre, make it square, crop (zero padding past
    the border) and resize to ``size`` x ``size`` uint8."""
    from PIL import Image

    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * enlarge
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    side_i = max(1, round(side))
    h, w = frame.shape[:2]
    canvas = np.zeros((side_i, side_i, 3), dtype=np.uint8)
    sx0, sy0 = max(left, 0), max(top, 0)
    sx1, sy1 = min(left + side_i, w), min(top + side_i, h)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = frame[sy0:sy1, sx0:sx1]
    img = Image.fromarray(canvas).resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)
