"""CPU threads: each kdbench process takes its share of the free cores, once.

OpenMP threads that spin-wait fight over the cores with any other busy process, and two
processes with two threads each on two cores oversubscribe them: a train step then runs at a
fraction of its speed. A process with one thread has no OpenMP barrier to wait at, so the cure
is the thread count: each kdbench worker takes ``(cores - busy) // workers`` threads, where
``workers`` counts the live kdbench processes of this user on this machine (each holds a lock
file while it works; :class:`CpuShare`) and ``busy`` the cores other programs keep running
(sampled from ``/proc/loadavg``). The count is fixed when the command starts
(:func:`take_share`, unless ``--threads`` fixes it) and kept to its end: CPU results depend on
the thread count (the order of float reductions), so a run's numbers must not follow the load.

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
from numbers import Integral
from pathlib import Path

from kdbench.errors import KdbenchError

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
    given). ``register()`` announces the process; ``rebalance()`` sets torch's thread count
    (once, on entering the block: the count is kept to its end)."""

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
        self._announce()
        return n

    def _announce(self) -> None:
        """Write this process's thread count to its lock file (what the other workers read)."""
        if self.threads is not None and self._fd is not None and self._fd >= 0:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, str(self.threads).encode(), 0)

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


@contextmanager
def idle() -> Iterator[None]:
    """While this process waits (for a lock another kdbench process holds), it is no worker:
    the processes that start meanwhile leave it out of their count; it announces itself again
    after, with the thread count it keeps (torch's count is not changed)."""
    share = _current
    if not share.registered:
        yield
        return
    share.release()
    try:
        yield
    finally:
        share.register()
        share._announce()


def _fixed_count(threads: int | str | None) -> int | None:
    if threads is None or threads == "auto":
        return None
    if isinstance(threads, bool) or not isinstance(threads, Integral) or threads < 1:
        raise KdbenchError(f"threads must be an integer >= 1 or 'auto', not {threads!r}; "
                           "give --threads N or leave it out")
    return int(threads)


@contextmanager
def take_share(threads: int | str | None = "auto") -> Iterator[CpuShare]:
    """Within the block this process is a kdbench worker with ``threads`` (None or "auto": its
    share of the free cores, counted once as the block starts and kept to its end); torch's
    thread count is restored after it."""
    global _current
    previous, _current = _current, CpuShare(_fixed_count(threads))
    try:
        with _current as share:
            yield share
    finally:
        _current = previous
