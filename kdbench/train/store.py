"""Result store: run locks and the finished-run check on a run folder's metrics.json.

A run folder is claimed with an advisory lock (``flock``) on ``<run_dir>/run.lock``, or, with a
lock folder (:func:`locks_in`, ``KDBENCH_LOCK_DIR``), on a file named after the run folder in
that folder: a result store on a file system without flock (Lustre without ``-o flock``, some
NFS/CIFS) then keeps its locks on a local disk. A file system that cannot lock is reported
(:class:`~kdbench.errors.LockUnsupportedError`), never taken for a busy run."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import IO, Any

from kdbench.errors import KdbenchError, LockUnsupportedError
from kdbench.files import read_json
from kdbench.request import LOCK_DIR_ENV

try:
    import fcntl
except ImportError:  # no advisory locks (Windows): one process per result store
    fcntl = None  # type: ignore[assignment]

# what flock answers when another process holds the lock (EACCES: some systems' EWOULDBLOCK)
_BUSY = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}
_lock_dir: Path | None = None  # set by locks_in


def lock_dir() -> Path | None:
    """The folder the run locks live in (:func:`locks_in`, else ``KDBENCH_LOCK_DIR``); None:
    each lock beside its run, ``<run_dir>/run.lock``."""
    folder = _lock_dir or os.environ.get(LOCK_DIR_ENV)
    return Path(folder).expanduser().resolve() if folder else None


@contextmanager
def locks_in(folder: Path | None) -> Iterator[None]:
    """Within the block the run locks live in ``folder`` (None: the default, ``KDBENCH_LOCK_DIR``
    or beside the runs); the previous setting is restored after it."""
    global _lock_dir
    previous, _lock_dir = _lock_dir, (Path(folder) if folder else None)
    try:
        yield
    finally:
        _lock_dir = previous


def lock_path(run_dir: Path) -> Path:
    """The lock file of ``run_dir``: ``<lock_dir>/<sha256 of its resolved path, 32 hex>.lock``
    with a lock folder, else ``<run_dir>/run.lock``."""
    folder = lock_dir()
    if folder is None:
        return Path(run_dir) / "run.lock"
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:32]
    return folder / f"{digest}.lock"


def _errno(exc: OSError) -> int | None:
    """The error number of ``exc`` (also of an ``OSError(code)`` raised without its message)."""
    if exc.errno is not None:
        return exc.errno
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else None


def _unsupported(folder: Path, exc: OSError) -> LockUnsupportedError:
    code = _errno(exc)
    reason = exc.strerror or (os.strerror(code) if code is not None else str(exc) or "no errno")
    return LockUnsupportedError(
        f"file locks are not supported in {folder} ({reason}); put the locks on a local disk "
        f"with --lock-dir DIR (or {LOCK_DIR_ENV}), or mount it with -o flock")


def _flock(handle: IO[str], path: Path, wait: bool) -> bool:
    """Lock ``handle`` (the open ``path``); False when another process holds it (only when not
    waiting), LockUnsupportedError when the file system cannot lock."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as exc:
        if not wait and _errno(exc) in _BUSY:
            return False
        raise _unsupported(path.parent, exc) from None
    return True


def check_locking(folder: Path) -> None:
    """Raise LockUnsupportedError unless a run lock can be taken where the locks of the runs in
    ``folder`` live (the lock folder if one is set); a probe lock is taken and released."""
    where = lock_dir() or Path(folder)
    if fcntl is None:
        return
    where.mkdir(parents=True, exist_ok=True)
    probe = where / f".lock-probe-{os.getpid()}"
    try:
        with open(probe, "a+") as handle:
            if _flock(handle, probe, wait=False):
                fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        probe.unlink(missing_ok=True)


def finished_student_run(run_dir: Path) -> dict[str, Any]:
    """The metrics of the finished student run in ``run_dir`` that still has its ``best.pt``;
    a one-line error saying what is missing otherwise."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    if metrics.get("status") != "finished":
        raise KdbenchError(f"{run_dir} is not a finished run; finish it with `kdbench run`")
    if metrics.get("role") not in ("student", "compressed", "transferred"):
        raise KdbenchError(f"{run_dir} is not a student run; give a runs/... folder")
    if not (run_dir / "best.pt").is_file():
        raise KdbenchError(f"{run_dir} has no best.pt (checkpoints are not committed, or it was "
                           "kept with --keep-checkpoints none); train it again with `kdbench run "
                           "... --restart` on this machine")
    return metrics


@contextmanager
def run_lock(run_dir: Path, wait: bool = False) -> Iterator[bool]:
    """Claim ``run_dir`` for this process with an advisory lock on :func:`lock_path`; yields
    False when another process holds it (``wait``: blocks until it is free instead), so several
    `kdbench run`s can share a result store. The operating system drops the lock when its
    holder exits, however it exits (killed included). A file system without locks raises
    LockUnsupportedError."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield True
        return
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        if not _flock(handle, path, wait):
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
