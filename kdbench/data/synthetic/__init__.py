"""A synthetic FaceForensics++-shaped forgery dataset (offline stand-in for FF++ c40).

Identities are procedural talking heads over natural backgrounds. For every FF++-style
pair ``(a, b)`` the generator writes the real videos ``a`` and ``b`` and, for each of the
four manipulations, the fakes ``a_b`` (target ``a``, source ``b``) and ``b_a``; each
manipulation leaves its own kind of trace. Every video is encoded with H.264 at constant
QP 40 (FF++ "c40"). All trace strengths live in :class:`Traces` (a field of
:class:`SynthConfig`), so difficulty is changed in one place and recorded in ``synth.json``.

* :mod:`~kdbench.data.synthetic.faces`: the procedural talking-head renderer, drawing the
  :mod:`~kdbench.data.synthetic.identities` over :mod:`~kdbench.data.synthetic.backgrounds`
  with :mod:`~kdbench.data.synthetic.imageops`;
* :mod:`~kdbench.data.synthetic.manipulations`: the four manipulations and their
  :class:`Traces` (a real video and its fakes, in memory);
* :mod:`~kdbench.data.synthetic.tree`: :class:`SynthConfig`, the splits and the FF++ video
  tree written by :func:`generate`;
* :mod:`~kdbench.data.synthetic.prepare`: :func:`ensure_synthetic` (generate, then prepare).
"""

from __future__ import annotations

from typing import Any

from kdbench.data.synthetic.manipulations import MANIPULATIONS, Traces, face_masks, synthesize
from kdbench.data.synthetic.tree import (
    COMPRESSION,
    FORMAT_VERSION,
    SPLITS,
    SynthConfig,
    compression_of,
    fake_path,
    generate,
    make_splits,
    real_path,
)


def __getattr__(name: str) -> Any:
    # imported on first use: the preparation pulls in pandas and the face detectors, which
    # neither `kdbench synth` nor the generator's worker processes need
    if name == "ensure_synthetic":
        from kdbench.data.synthetic.prepare import ensure_synthetic

        return ensure_synthetic
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "COMPRESSION",
    "FORMAT_VERSION",
    "MANIPULATIONS",
    "SPLITS",
    "SynthConfig",
    "Traces",
    "compression_of",
    "ensure_synthetic",
    "face_masks",
    "fake_path",
    "generate",
    "make_splits",
    "real_path",
    "synthesize",
]
