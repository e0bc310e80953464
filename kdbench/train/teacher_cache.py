"""The shared on-disk cache of the frozen teacher's outputs (docs/design.md decision 14).

The teacher is frozen and in eval mode, so its output for a training frame depends only on the
frame and its flip. The first run that needs a field (``rgb``, ``freq``, ``rgb_proj``,
``freq_proj``; ``logits`` always) computes it for every (frame, flip) of the training split
into fp16 ``.npy`` memory maps under ``<teacher>/cache/<key>/<field>/``; every later run, in
this process or another, reads them. ``key`` names the teacher's weights (sha256 of its
``best.pt``), the prepared data, the split and the image size.

A field is built in a ``.building-*`` folder under a lock and renamed into place when complete
(with its ``done.json``), so a half-built field is never read; a build that was killed leaves a
folder the next builder removes. Slot ``2 * position + flip`` of a field holds that frame's
output, the ``key`` of the loader's batches.

The cache changes no number: a run whose cache is not built (``train.teacher_cache_gb``, free
disk) computes the teacher's outputs live (:class:`LiveTargets`), of the same fields, in fp32
outside autocast, and rounds them through fp16 as the cache stores them; they enter the batch
under the same keys, so a run gets the same targets with and without the cache (recorded as
``teacher_targets``: ``"fp16"``; the fp32 outputs move by ~1e-8 with the batch a frame is in,
which the rounding absorbs unless a value sits on an fp16 rounding boundary). fp16 rather
than fp32 on disk: the committed results were trained on fp16 targets, and fp32 would double
the cache (0.9 -> 1.8 GB for all fields at the cpu preset, 57 -> 114 GB for one feature-map
field at the paper's) while a batch's read and the live rounding each cost well under 1 % of
the teacher forward they go with. Rounding a value beyond fp16's range would give inf, so when
a teacher output of the split exceeds it the cache refuses to build and the live run keeps fp32
(``"fp32"``): the cached run would be live and fp32 too. Which fields fit is found once per
cache folder, by the build or by a pass of the live run over the split
(:func:`targets_fit_fp16`), and kept in its ``fp16_range.json``.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdbench.data.loader import FrameSplit, to_model_input
from kdbench.files import atomic_write_json, read_json
from kdbench.models.outputs import LIST_FIELDS, PREFIX, flatten, from_batch, unflatten

__all__ = ["LiveTargets", "TeacherCache", "ensure", "flatten", "from_batch",
           "targets_fit_fp16", "unflatten"]

FP16_MAX = float(np.finfo(np.float16).max)
RANGE_FILE = "fp16_range.json"  # {field: whether all its outputs on the split fit fp16}
OVERFLOW = "a teacher output exceeds the fp16 range"


def field_of(name: str) -> str:
    """The teacher field (``teacher_needs`` name) a flat array belongs to."""
    head, _, sub = name.partition(".")
    if head in LIST_FIELDS or head in ("rgb_pooled", "freq_pooled"):
        return head.removesuffix("_pooled")
    if head == "aux_logits":
        return f"{sub}_proj"
    return head  # logits, rgb_proj, freq_proj


def in_fp16_range(values: Tensor) -> bool:
    """Whether every value is finite and within fp16's range (what the cache can store)."""
    values = values.float()
    return bool(torch.isfinite(values).all()) and float(values.abs().max()) <= FP16_MAX


def file_sha256(path: Path) -> str:
    """The sha256 of a file (the teacher's weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(weights_sha256: str, data_id: Any, split: FrameSplit, size: int) -> str:
    """Folder name of a cache: teacher weights, prepared data, training split and size."""
    index = np.ascontiguousarray(split.row_index).tobytes()
    blob = f"{weights_sha256}|{data_id}|{size}|".encode() + index
    return f"s{size}-" + hashlib.sha256(blob).hexdigest()[:12]


class TeacherCache:
    """Read access to built fields; picklable (DataLoader workers reopen the memory maps)."""

    def __init__(self, folder: Path, fields: list[str]) -> None:
        self.folder, self.fields = Path(folder), sorted(fields)
        self.files = {name: self.folder / f / f"{_file_name(name)}.npy" for f in self.fields
                      for name in read_json(self.folder / f / "done.json")["arrays"]}
        self._arrays: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def read(self, keys: np.ndarray) -> dict[str, Tensor]:
        """The cached outputs (fp16) of slots ``keys`` as CPU tensors, batch in ``keys``
        order."""
        if self._arrays is None:
            self._arrays = {n: np.load(p, mmap_mode="r") for n, p in self.files.items()}
        keys = np.asarray(keys, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        out = {}
        for name, arr in self._arrays.items():
            rows = np.empty((len(keys), *arr.shape[1:]), dtype=arr.dtype)
            rows[order] = arr[keys[order]]  # sorted reads are faster from a memory map
            out[PREFIX + name] = torch.from_numpy(rows)
        return out

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())


def _file_name(name: str) -> str:
    return name.replace(".", "_")


class LiveTargets:
    """The teacher's outputs for a training batch computed live, as a cached batch carries
    them: the fields the cache would store, under its keys, fp32 and NCHW-contiguous, rounded
    through fp16 when ``fp16`` (the cache's values) and kept fp32 otherwise."""

    def __init__(self, teacher: nn.Module, fields: list[str], channels_last: bool,
                 fp16: bool) -> None:
        self.teacher, self.fields = teacher, sorted(fields)
        self.channels_last, self.fp16 = channels_last, fp16

    @torch.no_grad()
    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        with torch.autocast(images.device.type, enabled=False):  # fp32, as the cache is built
            flat = _teacher_outputs(self.teacher, self.fields, images.float(),
                                    self.channels_last)
        return {PREFIX + k: (v.half().float() if self.fp16 else v.float()).contiguous()
                for k, v in flat.items()}


def known_range(folder: Path | None) -> dict[str, bool]:
    """What is known of each field of ``folder``: True if its outputs fit fp16 (a built field
    does), False if one exceeds it."""
    if folder is None or not Path(folder).is_dir():
        return {}
    path = Path(folder) / RANGE_FILE
    known = {k: bool(v) for k, v in read_json(path).items()} if path.is_file() else {}
    known.update({f: True for f in built_fields(Path(folder))})
    return known


def _remember_range(folder: Path, found: dict[str, bool]) -> None:
    """Add ``found`` to ``folder``'s record (a memo: a disk too full to take it is no error)."""
    path = Path(folder) / RANGE_FILE
    try:
        atomic_write_json(path, {**(read_json(path) if path.is_file() else {}), **found})
    except OSError:
        pass


def targets_fit_fp16(teacher: nn.Module, needs: set[str], split: FrameSplit, size: int,
                     device: torch.device, batch_size: int, folder: Path | None,
                     channels_last: bool = False, progress: bool = False) -> bool:
    """Whether the teacher's outputs of ``needs`` (+ logits) on every (frame, flip) of
    ``split`` fit fp16, as the cache's build checks: from ``folder``'s record where known,
    else by one pass over the split (under the cache's lock), which the record then keeps."""
    from kdbench.train.store import wait_for_lock

    fields = sorted(set(needs) | {"logits"})
    args = (teacher, split, size, device, batch_size, channels_last, progress)
    if folder is None:
        return all(_scan(fields, *args).values())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with wait_for_lock(folder):
        known = known_range(folder)
        todo = [f for f in fields if f not in known]
        if todo and all(known.get(f, True) for f in fields):
            found = _scan(todo, *args)
            _remember_range(folder, found)
            known.update(found)
    return all(known.get(f, False) for f in fields)


@torch.no_grad()
def _scan(fields: list[str], teacher: nn.Module, split: FrameSplit, size: int,
          device: torch.device, batch_size: int, channels_last: bool,
          progress: bool) -> dict[str, bool]:
    """Whether each field fits fp16 on ``split``: all True, or the fields found out of range
    in the first batch that has one."""
    for _pos, _flip, flat in _passes(teacher, fields, split, size, device, batch_size,
                                     channels_last, progress, "teacher output range"):
        over = {field_of(k): False for k, t in flat.items() if not in_fp16_range(t)}
        if over:
            return over
    return {f: True for f in fields}


@dataclass
class CacheResult:
    """What :func:`ensure` did: the cache (None: use the live teacher), the fields it built
    (empty when it reused them), and why there is no cache."""

    cache: TeacherCache | None
    built: list[str]
    build_s: float = 0.0
    reason: str = ""
    built_bytes: int = 0

    def built_line(self, frames: int, folder: Path) -> str:
        """The log line of a build: the fields, frames, size, time and folder."""
        return (f"teacher cache: built {', '.join(self.built)} for {frames} frames x 2 flips, "
                f"{self.built_bytes / 2**20:.1f} MB in {self.build_s:.1f} s ({folder})")


def built_fields(folder: Path) -> dict[str, int]:
    """Complete fields in ``folder`` and their size in bytes."""
    out = {}
    for done in folder.glob("*/done.json"):
        out[done.parent.name] = int(read_json(done).get("bytes", 0))
    return out


def ensure(teacher: nn.Module, needs: set[str], split: FrameSplit, size: int,
           device: torch.device, batch_size: int, folder: Path, budget_bytes: int,
           channels_last: bool = False, progress: bool = False,
           also: set[str] | None = None) -> CacheResult:
    """The cache of ``needs`` (+ logits) for ``split``: reused where built, built under a lock
    where missing, or None when the fields would exceed ``budget_bytes`` of disk (or the free
    disk space, or fp16's range). A build also computes the fields in ``also`` (what the
    other runs of the plan will need) in the same pass over the frames, if they fit."""
    fields = sorted(set(needs) | {"logits"})
    wanted = sorted(set(fields) | set(also or ()))
    if wanted != fields:
        got = _ensure(teacher, wanted, split, size, device, batch_size, folder, budget_bytes,
                      channels_last, progress)
        if got.cache is not None:
            return CacheResult(TeacherCache(folder, fields), got.built, got.build_s,
                               built_bytes=got.built_bytes)
    return _ensure(teacher, fields, split, size, device, batch_size, folder, budget_bytes,
                   channels_last, progress)


def _ensure(teacher: nn.Module, fields: list[str], split: FrameSplit, size: int,
            device: torch.device, batch_size: int, folder: Path, budget_bytes: int,
            channels_last: bool, progress: bool) -> CacheResult:
    from kdbench.train.store import wait_for_lock

    folder = Path(folder)
    have = built_fields(folder) if folder.is_dir() else {}
    if all(f in have for f in fields):
        return CacheResult(TeacherCache(folder, fields), [])
    folder.mkdir(parents=True, exist_ok=True)
    with wait_for_lock(folder):
        have = built_fields(folder)
        missing = [f for f in fields if f not in have]
        if not missing:  # another process built them meanwhile
            return CacheResult(TeacherCache(folder, fields), [])
        for stale in folder.glob(".building-*"):  # a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        known = known_range(folder)
        if any(known.get(f) is False for f in missing):  # found by an earlier build or scan
            return CacheResult(None, [], reason=OVERFLOW)
        sizes = _field_bytes(teacher, missing, split, size, device, channels_last)
        need = sum(sizes.values())
        total = sum(have.values()) + need
        if total > budget_bytes:
            return CacheResult(None, [], reason=(
                f"the cache would hold {total / 2**30:.1f} GB, over train.teacher_cache_gb = "
                f"{budget_bytes / 2**30:g}"))
        free = shutil.disk_usage(folder).free
        if need > free:
            return CacheResult(None, [], reason=f"{need / 2**30:.1f} GB needed, "
                                                f"{free / 2**30:.1f} GB free on disk")
        t0 = time.perf_counter()
        ok = _build(teacher, missing, split, size, device, batch_size, folder, channels_last,
                    progress)
        if not ok:
            return CacheResult(None, [], reason=OVERFLOW)
        have = built_fields(folder)
        return CacheResult(TeacherCache(folder, fields), missing, time.perf_counter() - t0,
                           built_bytes=sum(have[f] for f in missing))


def _teacher_outputs(teacher: nn.Module, fields: list[str], images: Tensor,
                     channels_last: bool) -> dict[str, Tensor]:
    """The teacher's ``fields`` for ``images`` in full fp32: TF32 off whatever the process set
    (the trainer turns it on for CUDA), so cached and live targets are computed alike."""
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with _full_fp32():
        flat = flatten(teacher(images, needs=set(fields)))
    return {k: v for k, v in flat.items() if field_of(k) in fields}


@contextmanager
def _full_fp32() -> Iterator[None]:
    """fp32 matmuls and convolutions without TF32 within the block (no-op on the CPU)."""
    precision = torch.get_float32_matmul_precision()
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


@torch.no_grad()
def _field_bytes(teacher: nn.Module, fields: list[str], split: FrameSplit, size: int,
                 device: torch.device, channels_last: bool) -> dict[str, int]:
    """Disk bytes of each field for the whole split (from the teacher's output on one frame)."""
    batch = to_model_input(split[(np.zeros(1, np.int64), np.zeros(1, bool))], device, size)
    flat = _teacher_outputs(teacher, fields, batch["image"], channels_last)
    per_slot = {f: 0 for f in fields}
    for name, t in flat.items():
        per_slot[field_of(name)] += t[0].numel() * 2
    return {f: b * 2 * len(split) for f, b in per_slot.items()}


@torch.no_grad()
def _passes(teacher: nn.Module, fields: list[str], split: FrameSplit, size: int,
            device: torch.device, batch_size: int, channels_last: bool, progress: bool,
            label: str):
    """(positions, flip, outputs of ``fields``) for every batch of (frame, flip) of ``split``:
    the unflipped frames in order, then the flipped."""
    from kdbench.progress import progress_bar

    n = len(split)
    with progress_bar(progress) as bar:
        task = bar.add_task(label, total=2 * n)
        for flip in (False, True):
            for start in range(0, n, batch_size):
                pos = np.arange(start, min(start + batch_size, n))
                batch = to_model_input(split[(pos, np.full(len(pos), flip))], device, size)
                yield pos, flip, _teacher_outputs(teacher, fields, batch["image"], channels_last)
                bar.update(task, advance=len(pos))


@torch.no_grad()
def _build(teacher: nn.Module, fields: list[str], split: FrameSplit, size: int,
           device: torch.device, batch_size: int, folder: Path, channels_last: bool,
           progress: bool) -> bool:
    """Compute ``fields`` for every (frame, flip) into ``.building-*`` folders, then rename
    each into place; False (nothing published, the field recorded in ``fp16_range.json``) if
    a value overflows fp16."""
    n = len(split)
    tmp = {f: folder / f".building-{f}-{time.time_ns()}" for f in fields}
    arrays: dict[str, np.ndarray] = {}
    try:
        for pos, flip, flat in _passes(teacher, fields, split, size, device, batch_size,
                                       channels_last, progress, "teacher cache"):
            for name, t in flat.items():
                if name not in arrays:
                    path = tmp[field_of(name)] / f"{_file_name(name)}.npy"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    arrays[name] = np.lib.format.open_memmap(
                        path, mode="w+", dtype=np.float16, shape=(2 * n, *t.shape[1:]))
                if not in_fp16_range(t):
                    _remember_range(folder, {field_of(name): False})
                    return False
                arrays[name][2 * pos + int(flip)] = t.float().half().cpu().numpy()
        for arr in arrays.values():
            arr.flush()
        for f in fields:
            names = [k for k in arrays if field_of(k) == f]
            nbytes = sum((tmp[f] / f"{_file_name(k)}.npy").stat().st_size for k in names)
            atomic_write_json(tmp[f] / "done.json", {
                "field": f, "arrays": names, "slots": 2 * n, "dtype": "float16",
                "bytes": nbytes})
            tmp[f].rename(folder / f)
        return True
    finally:
        arrays.clear()
        for path in tmp.values():
            shutil.rmtree(path, ignore_errors=True)
