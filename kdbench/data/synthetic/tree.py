"""The FaceForensics++-shaped video tree of the synthetic dataset.

For every FF++-style pair ``(a, b)`` of :func:`make_splits`, :func:`generate` writes the
real videos ``a`` and ``b`` and, for each of the four manipulations, the fakes ``a_b``
(target ``a``, source ``b``) and ``b_a`` (frames from
:func:`kdbench.data.synthetic.manipulations.synthesize`), in the FF++ layout:
``original_sequences/youtube/c40/videos``, ``manipulated_sequences/<method>/c40/videos``
and ``splits/<split>.json``. Every video is encoded with H.264 at constant QP 40 (FF++
"c40"; another ``SynthConfig.qp`` writes ``c<qp>`` folders). :class:`SynthConfig` says what
to generate (its :class:`Traces` the difficulty) and is recorded in ``synth.json``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kdbench.data.synthetic.manipulations import _SPLIT, MANIPULATIONS, Traces, synthesize
from kdbench.data.video import write_video
from kdbench.errors import DataError

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
COMPRESSION = "c40"
MARKER = "synth.json"
_PARTIAL = ".synth-partial.json"


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. ``pairs`` = number of FF++ id pairs in (train, val, test)."""

    seed: int = 0
    pairs: tuple[int, int, int] = (48, 16, 16)
    size: int = 128
    frames: int = 16
    fps: int = 25
    qp: int = 40
    traces: Traces = field(default_factory=Traces)

    def __post_init__(self) -> None:
        if len(self.pairs) != 3 or min(self.pairs) < 0 or sum(self.pairs) < 1:
            raise DataError(
                f"synthetic pairs must be 3 counts >= 0 with a positive sum, got {self.pairs}"
            )
        if 2 * sum(self.pairs) > 1000:
            raise DataError(
                f"synthetic pairs sum to {sum(self.pairs)}; at most 500 (ids are 3 digits)"
            )
        if self.size < 16 or self.size % 2:
            raise DataError(f"synthetic frame size must be even and >= 16, got {self.size}")
        if self.frames < 1 or self.fps < 1 or not 0 <= self.qp <= 51:
            raise DataError(
                f"synthetic frames/fps must be >= 1 and qp in 0..51, got "
                f"frames={self.frames} fps={self.fps} qp={self.qp}"
            )

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> SynthConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        data = dict(data)
        traces = dict(data.pop("traces", {}))
        if "strength" in traces:
            traces["strength"] = tuple(traces["strength"])
        if "pairs" in data:
            data["pairs"] = tuple(data["pairs"])
        try:
            return cls(**data, traces=Traces(**traces))
        except TypeError as exc:
            raise DataError(f"bad synthetic config: {exc}") from exc


DEFAULT_CONFIG = SynthConfig()

# ------------------------------------------------------------------------------ layout


def compression_of(cfg: SynthConfig) -> str:
    """The FF++ compression folder of a config's videos: ``c<qp>`` (``c40`` by default)."""
    return f"c{cfg.qp}"


def real_path(root: Path, ident: str, compression: str = COMPRESSION) -> Path:
    """``original_sequences/youtube/c40/videos/NNN.mp4``."""
    return Path(root) / "original_sequences" / "youtube" / compression / "videos" / f"{ident}.mp4"


def fake_path(
    root: Path, method: str, target: str, source: str, compression: str = COMPRESSION
) -> Path:
    """``manipulated_sequences/<method>/c40/videos/TTT_SSS.mp4``."""
    return (
        Path(root)
        / "manipulated_sequences"
        / method
        / compression
        / "videos"
        / f"{target}_{source}.mp4"
    )


def make_splits(cfg: SynthConfig) -> dict[str, list[list[str]]]:
    """FF++-format splits: ``{"train": [["000", "001"], ...], ...}``, identities disjoint."""
    ids = np.random.default_rng([cfg.seed, _SPLIT]).permutation(2 * sum(cfg.pairs))
    out, start = {}, 0
    for name, n in zip(SPLITS, cfg.pairs, strict=True):
        chunk = ids[start : start + 2 * n]
        out[name] = [[f"{a:03d}", f"{b:03d}"] for a, b in zip(chunk[::2], chunk[1::2], strict=True)]
        start += 2 * n
    return out


# ------------------------------------------------------------------------- generation


def generate(
    root: Path, cfg: SynthConfig = DEFAULT_CONFIG, workers: int = 2, progress: bool = True
) -> Path:
    """Write the synthetic dataset under ``root`` in the FaceForensics++ layout.

    Idempotent: returns at once when ``root/synth.json`` records the same config, and
    raises :class:`DataError` when it records another one. An interrupted run with the
    same config resumes (finished videos are kept). Output depends only on ``cfg``,
    not on ``workers``. Returns ``root``.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is a file, not a folder; choose another --data-root")
    want = {"format": FORMAT_VERSION, "config": cfg.to_dict()}
    marker = root / MARKER
    if marker.exists():
        if _same(_read_json(marker), want):
            return root
        raise DataError(
            f"{root} holds a different synthetic dataset ({MARKER} records another "
            f"config); choose another --data-root or delete it"
        )
    partial = root / _PARTIAL
    if partial.exists():
        if not _same(_read_json(partial), want):
            raise DataError(
                f"{root} holds an unfinished synthetic dataset with another config; "
                f"choose another --data-root or delete it"
            )
    elif any((root / d).exists() for d in ("original_sequences", "manipulated_sequences")):
        raise DataError(
            f"{root} already holds FaceForensics++-style videos without {MARKER}; "
            f"choose another --data-root or delete it"
        )
    root.mkdir(parents=True, exist_ok=True)
    _write_json(partial, want)
    splits = make_splits(cfg)
    for name, pairs in splits.items():
        text = "[\n" + ",\n".join(f"  {json.dumps(p)}" for p in pairs) + "\n]\n"
        _write_text(root / "splits" / f"{name}.json", text if pairs else "[]\n")
    jobs = [
        _Job(str(root), cfg, int(a), int(b))
        for pairs in splits.values()
        for p in pairs
        for a, b in (p, p[::-1])
    ]
    from kdbench.progress import keeping

    with keeping("the videos generated so far are kept - run the same command again to "
                 "generate the rest"):
        _run(jobs, workers, progress)
    counts = {"real": len(jobs), **{m: len(jobs) for m in MANIPULATIONS}}
    _write_json(marker, {**want, "videos": counts})
    partial.unlink(missing_ok=True)
    return root


@dataclass(frozen=True)
class _Job:
    """One target identity: its real video and its four fakes (source ``source``)."""

    root: str
    cfg: SynthConfig
    target: int
    source: int

    def paths(self) -> dict[str, Path]:
        t, s, c = f"{self.target:03d}", f"{self.source:03d}", compression_of(self.cfg)
        out = {"real": real_path(Path(self.root), t, c)}
        out.update({m: fake_path(Path(self.root), m, t, s, c) for m in MANIPULATIONS})
        return out


def _do_job(job: _Job) -> int:
    """Render and encode the videos of ``job`` that are missing; returns the job's count."""
    todo = {k: p for k, p in job.paths().items() if not p.exists()}
    if todo:
        videos = synthesize(job.cfg, job.target, job.source)
        for key, path in todo.items():
            write_video(path, videos[key], fps=job.cfg.fps, qp=job.cfg.qp)
    return len(job.paths())


def _run(jobs: list[_Job], workers: int, progress: bool) -> None:
    total = len(jobs) * (1 + len(MANIPULATIONS))
    with _progress(total, progress) as advance:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                advance(_do_job(job))
            return
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(jobs))) as pool:
            for n in pool.imap_unordered(_do_job, jobs):
                advance(n)


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; it drives a rich progress bar when ``enabled``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn()) as bar:
        task = bar.add_task("synthetic videos", total=total)
        yield lambda n: bar.advance(task, n)


# -------------------------------------------------------------------------------- json


def _same(have: object, want: dict) -> bool:
    return isinstance(have, dict) and all(have.get(k) == v for k, v in want.items())


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}; delete the folder and generate again") from exc


def _write_json(path: Path, data: object) -> None:
    _write_text(path, json.dumps(data, indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


__all__ = [
    "COMPRESSION",
    "FORMAT_VERSION",
    "SPLITS",
    "SynthConfig",
    "compression_of",
    "fake_path",
    "generate",
    "make_splits",
    "real_path",
]
