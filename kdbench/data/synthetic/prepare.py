"""The embedded synthetic dataset: generate the FF++-shaped video tree, then prepare it."""

from __future__ import annotations

from pathlib import Path

from kdbench.data.prepare import ffpp_items, prepare_items
from kdbench.data.synthetic.manipulations import MANIPULATIONS
from kdbench.data.synthetic.tree import SynthConfig, compression_of, generate


def ensure_synthetic(
    root: Path, size: int, frames: int, progress: bool = True, cfg: SynthConfig | None = None,
    dataset: str = "synthetic",
) -> Path:
    """Generate the videos of ``cfg`` (once) and prepare them as ``dataset`` at
    ``size``/``frames`` (once per setting); returns the prepared folder."""
    cfg = cfg or SynthConfig()
    videos = Path(root) / "videos"
    workers = max(1, min(2, _cpus()))
    generate(videos, cfg, workers=workers, progress=progress)
    out = prepared_folder(root, size, frames)
    if not (out / "prepared.json").is_file():
        items = ffpp_items(videos, compression_of(cfg), MANIPULATIONS)
        prepare_items(items, out, dataset, frames, size, "center",
                      workers=workers, progress=progress)
    return out


def prepared_folder(root: Path, size: int, frames: int) -> Path:
    """Where :func:`ensure_synthetic` prepares the videos under ``root`` at ``size``/``frames``
    (done when it holds ``prepared.json``)."""
    return Path(root) / f"prepared-s{size}-f{frames}"


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
