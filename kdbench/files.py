"""Atomic file writes and JSON reads: the bottom-level helpers that kdbench.data (preparation,
prepared folders) and kdbench.train (the result store, checkpoints) share. Imports nothing of
kdbench but its errors, and no torch at import (it loads only to save a checkpoint)."""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from kdbench.errors import KdbenchError


class StoreError(KdbenchError):
    """A file of the result store is unreadable (truncated, not JSON)."""


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (a store shared by a group
    stays readable to it)."""
    try:  # Linux: read it without setting it
        status = Path("/proc/self/status").read_text()
        mask = int(status.split("Umask:")[1].split()[0], 8)
    except (OSError, IndexError, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _temp_file(folder: Path, name: str) -> Path:
    """An empty new file in ``folder`` with the mode the umask allows (mkstemp makes 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder; on success it is renamed over ``path``, on any
    error it is removed, so ``path`` is never left half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_file(path.parent, path.name)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def plain(obj: Any) -> Any:
    """A copy in plain Python values (JSON-safe, and loadable from a checkpoint with
    ``weights_only=True``): NaN/inf -> None, numpy and torch scalars and arrays -> Python
    numbers and lists, paths -> str."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray) or (hasattr(obj, "tolist") and hasattr(obj, "dtype")):
        return plain(obj.tolist())  # numpy arrays, torch tensors (0-dim: a number)
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(plain(obj), indent=2, sort_keys=True) + "\n")


def atomic_write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(plain(r), sort_keys=True) + "\n" for r in rows))


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_bytes(path, buf.getvalue())


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a truncated or non-JSON file is a :class:`StoreError`."""
    try:
        obj = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path} is not valid JSON ({getattr(exc, 'msg', None) or exc.reason}: "
                         "truncated or damaged); delete it to redo what wrote it") from None
    if not isinstance(obj, dict):
        raise StoreError(f"{path} holds no JSON object; delete it to redo what wrote it")
    return obj


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file ([] if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise StoreError(f"{path} is not valid JSON lines (truncated or damaged); delete it to "
                         "redo what wrote it") from None


def check_writable(folder: Path, what: str = "results folder",
                   fix: str = "give --results a folder (or a path that does not exist yet)"
                   ) -> Path:
    """Create ``folder`` if needed and check a file can be written in it, before any work;
    ``what`` names the folder in the errors and ``fix`` says what to give instead of a file."""
    folder = Path(folder)
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():  # the folder, or a folder above it
        where = "" if blocker == folder else f" lies under {blocker}, which"
        raise KdbenchError(f"{what} {folder}{where} is a file, not a folder; {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _temp_file(folder, "write-check").unlink()
    except OSError as exc:
        raise KdbenchError(f"{what} {folder} is not writable ({exc.strerror or exc}); choose "
                           "another folder or fix its permissions") from None
    return folder


def store_time(folder: Path) -> float:
    """Now, by the clock of the file system holding ``folder`` (the one its files' mtimes come
    from, which may be another machine's on a cluster)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    probe = _temp_file(Path(folder), "clock")
    try:
        return probe.stat().st_mtime
    finally:
        probe.unlink()
