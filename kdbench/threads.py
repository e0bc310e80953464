"""CPU threads: each kdbench process takes its share of the free cores.

OpenMP threads that spin-wait fight over the cores with any other busy process, and two
processes with two threads each on two cores oversubscribe them: a train step then runs at a
fraction of its speed. A process with one thread has no OpenMP barrier to wait at, so the cure
is the thread count: each kdbench worker takes ``(cores - busy) // workers`` threads, where
``workers`` counts the live kdbench processes of this user on this machine (each holds a lock
file while it works; :class:`CpuShare`) and ``busy`` the cores other programs keep running
(sampled from ``/proc/loadavg``), re-counted before every epoch, unless ``--threads`` fixes it.

OpenMP's wait policy is left as it is (a user's ``OMP_WAIT_POLICY`` is honoured): measured
here (resnet18_thin train step, 2 cores, 2 threads, alone), ``PASSIVE`` costs 25 % at 64 px and
45 % at 32 px, which the thread share makes unnecessary; ``kdbench bench`` measures both.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOADAVG = Path("/proc/loadavg")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_elsewhere(samples: int = 10, interval: float = 0.02) -> int:
    """Threads of other processes that keep running on this machine: the least, over
    ``samples``, of ``/proc/loadavg``'s running count less this process's calling thread (a
    program that is busy throughout shows in every sample, a short command in few; 0 where
    there is no /proc)."""
    counts = []
    for _ in range(samples):
        try:
            running = int(LOADAVG.read_text().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return 0
        counts.append(max(0, running - 1))
        time.sleep(interval)
    return min(counts)


def _workers_dir() -> Path:
    if os.environ.get("KDBENCH_WORKERS_DIR"):  # a separate count (kdbench bench's processes)
        return Path(os.environ["KDBENCH_WORKERS_DIR"])
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(base) / f"kdbench-{uid}" / "workers"


class CpuShare:
    """This process's share of the CPU among the live kdbench workers (``fixed`` threads if
    given). ``register()`` announces the process; ``rebalance()`` sets torch's thread count."""

    def __init__(self, fixed: int | None = None, folder: Path | None = None) -> None:
        self.fixed = fixed
        self.folder = Path(folder) if folder else _workers_dir()
        self._fd: int | None = None
        self.threads: int | None = None
        self._before: int | None = None  # torch's thread count before __enter__

    def register(self) -> CpuShare:
        """Hold a lock file while this process works (released when it exits, even killed)."""
        if self._fd is None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.folder / str(os.getpid()), os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
            except OSError:  # no writable runtime folder: count this process alone
                self._fd = -1
        return self

    @property
    def registered(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None and self._fd >= 0:
            (self.folder / str(os.getpid())).unlink(missing_ok=True)
            os.close(self._fd)
        self._fd = None

    def others(self) -> list[int]:
        """The thread counts of the other live kdbench workers on this machine (stale files
        removed)."""
        found = []
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return found
        for path in entries:
            if path.name == str(os.getpid()):
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)  # its process is gone
            except OSError:
                text = os.pread(fd, 16, 0).decode(errors="replace").strip()
                found.append(int(text) if text.isdigit() else 1)
            finally:
                os.close(fd)
        return found

    def workers(self) -> int:
        """Live kdbench workers on this machine (at least this one)."""
        return 1 + len(self.others())

    def share(self) -> int:
        """Threads for this process: ``fixed``, or the cores no other program keeps busy,
        divided among the kdbench workers."""
        if self.fixed:
            return self.fixed
        others = self.others()
        free = usable_cores() - max(0, busy_elsewhere() - sum(others))
        return max(1, free // (1 + len(others)))

    def rebalance(self) -> int:
        """Set torch's intra-op thread count to :meth:`share`; returns it."""
        import torch

        n = self.share()
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        self.threads = n
        if self._fd is not None and self._fd >= 0:  # what the other workers read
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, str(n).encode(), 0)
        return n

    def __enter__(self) -> CpuShare:
        import torch

        self._before = torch.get_num_threads()
        self.register()
        self.rebalance()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        if self._before is not None:
            import torch

            torch.set_num_threads(self._before)


_current = CpuShare()


def rebalance_if_shared() -> None:
    """Re-count the workers and set the threads, if this process took a share (a kdbench
    command did); a library caller's own thread setting is left alone."""
    if _current.registered:
        _current.rebalance()


@contextmanager
def idle() -> Iterator[None]:
    """While this process waits (for a lock another kdbench process holds), it is no worker:
    the others take its cores at their next re-count; it takes its share again after."""
    share = _current
    if not share.registered:
        yield
        return
    share.release()
    try:
        yield
    finally:
        share.register()
        share.rebalance()


@contextmanager
def take_share(threads: int | None) -> Iterator[CpuShare]:
    """Within the block this process is a kdbench worker with ``threads`` (None: its share,
    re-counted every epoch); torch's thread count is restored after it."""
    global _current
    previous, _current = _current, CpuShare(threads)
    try:
        with _current as share:
            yield share
    finally:
        _current = previous
