"""Result store: run locks and the finished-run check on a run folder's metrics.json. The
atomic file helpers the store writes with live in :mod:`kdbench.files` (re-exported here)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.files import (
    StoreError,
    atomic_path,
    atomic_save_npy,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    check_writable,
    file_mode,
    plain,
    read_json,
    read_jsonl,
    store_time,
)

__all__ = [
    "StoreError",
    "atomic_path",
    "atomic_save_npy",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_jsonl",
    "atomic_write_text",
    "check_writable",
    "claim",
    "file_mode",
    "finished_student_run",
    "plain",
    "read_json",
    "read_jsonl",
    "run_lock",
    "store_time",
]


def finished_student_run(run_dir: Path) -> dict[str, Any]:
    """The metrics of the finished student run in ``run_dir`` that still has its ``best.pt``;
    a one-line error saying what is missing otherwise."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    if metrics.get("status") != "finished":
        raise KdbenchError(f"{run_dir} is not a finished run; finish it with `kdbench run`")
    if metrics.get("role") != "student":
        raise KdbenchError(f"{run_dir} is not a student run; give a runs/... folder")
    if not (run_dir / "best.pt").is_file():
        raise KdbenchError(f"{run_dir} has no best.pt (checkpoints are not committed, or it was "
                           "kept with --keep-checkpoints none); train it again with `kdbench run "
                           "... --restart` on this machine")
    return metrics


@contextmanager
def run_lock(run_dir: Path, wait: bool = False) -> Iterator[bool]:
    """Claim ``run_dir`` for this process with an advisory lock on ``run.lock``; yields False
    when another process holds it (``wait``: blocks until it is free instead), so several
    `kdbench run`s can share a result store. The operating system drops the lock when its
    holder exits, however it exits (killed included)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): one process per result store
        yield True
        return
    with open(run_dir / "run.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            yield False
            return
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def wait_for_lock(run_dir: Path) -> Iterator[None]:
    """``run_lock(run_dir, wait=True)``; while it waits for another process this process is
    no CPU worker (:func:`kdbench.threads.idle`), so the holder gets the cores."""
    from kdbench.threads import idle

    with ExitStack() as stack:
        if not stack.enter_context(run_lock(run_dir)):
            with idle():
                stack.enter_context(run_lock(run_dir, wait=True))
        yield


@contextmanager
def claim(run_dir: Path) -> Iterator[bool]:
    """:func:`run_lock` (not waiting) for every rank of a data-parallel job: rank 0 holds the
    lock and its answer is every rank's (one process: the lock itself)."""
    from kdbench import distributed

    with run_lock(run_dir) if distributed.is_main() else nullcontext(True) as mine:
        yield distributed.broadcast_object(mine)
