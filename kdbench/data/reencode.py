"""Re-encoding an image before it is cropped (`kdbench prepare --reencode`): reals and fakes
of AI-generated image datasets come in different formats (GenImage: JPEG reals, PNG fakes),
which a detector learns instead of the generators' traces."""

from __future__ import annotations

import io

import numpy as np

from kdbench.errors import DataError

NONE = ("none", None)


def parse_reencode(spec: str) -> tuple[str, int | None]:
    """``none`` or ``jpeg:Q`` (Q in 1..100) as (format, quality); one line otherwise. (PNG
    would change no pixel: decoding already undid each file's own compression; only a lossy
    format written for every image gives reals and fakes the same artefacts.)"""
    kind, _, quality = spec.lower().partition(":")
    if kind == "none" and not quality:
        return kind, None
    if kind == "jpeg" and quality.isdigit() and 1 <= int(quality) <= 100:
        return kind, int(quality)
    raise DataError(f"--reencode {spec!r}: give none or jpeg:Q with a quality Q from 1 to 100 "
                    "(e.g. jpeg:95)")


def reencode(image: np.ndarray, spec: tuple[str, int | None]) -> np.ndarray:
    """``image`` (uint8 HxWx3) written as JPEG at ``spec``'s quality and read back, so that
    reals and fakes carry the same compression artefacts (``none``: unchanged)."""
    kind, quality = spec
    if kind == "none":
        return image
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))
