"""`--launcher local`: a plan's jobs as worker processes on this machine.

The teacher's job runs first on the whole machine (all cores, or the first GPU); then up to
``workers`` jobs run at once, each a `kdbench run ... --only <run>` process pinned to one GPU
(``CUDA_VISIBLE_DEVICES``) or, on the CPU, given its share of the cores (``--threads``). Each
job logs to ``<results>/logs/<run>.log``; a failed job is reported with its log and the others
go on. A job dies with the launcher (Linux: the parent-death signal), and a re-launch skips
the runs that finished.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kdbench.launch.commands import TEACHER, Job

POLL_S = 0.2


@dataclass
class LaunchSummary:
    """What a launcher did: runs it trained, found finished, or that failed (with their log);
    the wall time; for a launcher that only submits, the submitted job ids."""

    results: Path
    trained: int = 0
    finished_before: int = 0
    failed: list[tuple[str, Path]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # not run: the teacher failed
    job_ids: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped

    def counts(self) -> dict[str, int]:
        """The counts by name (as :meth:`kdbench.api.RunSummary.counts`, plus failed)."""
        return {"trained": self.trained, "finished_before": self.finished_before,
                "left_to_another_process": 0, "failed": len(self.failed)}


@dataclass
class Slot:
    """Where a worker runs: a GPU (``gpu``) or a number of CPU threads."""

    gpu: str | None = None
    threads: int | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env

    def argv(self) -> list[str]:
        return ["--threads", str(self.threads)] if self.threads else []


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def slots(workers: int, gpus: list[str]) -> list[Slot]:
    """One slot per worker: the GPUs in turn, or an equal share of the cores."""
    if gpus:
        return [Slot(gpu=gpus[i % len(gpus)]) for i in range(workers)]
    return [Slot(threads=max(1, usable_cores() // workers)) for _ in range(workers)]


def log_path(results: Path, name: str) -> Path:
    """``<results>/logs/<run name with / as __>.log``."""
    return results / "logs" / f"{name.replace('/', '__')}.log"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM this process when the launcher dies (the child's run keeps its last
    finished epoch, the launcher run again continues from it)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def command(job: Job, slot: Slot) -> list[str]:
    """The job's command line for this slot (the running interpreter's kdbench)."""
    return [sys.executable, "-m", "kdbench", *job.argv, *slot.argv(), "--no-progress"]


class _Running:
    def __init__(self, job: Job, slot: Slot, results: Path) -> None:
        self.job, self.slot, self.log = job, slot, log_path(results, job.name)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(self.log, "a", encoding="utf-8")  # noqa: SIM115
        self._file.write(f"$ {job.shell()}\n")
        self._file.flush()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            command(job, slot), stdout=self._file, stderr=subprocess.STDOUT, env=slot.env(),
            preexec_fn=_die_with_parent if sys.platform == "linux" else None)

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None:
            self._file.close()
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()


def launch_local(jobs: list[Job], results: Path, workers: int, gpus: list[str],
                 progress: bool = True) -> LaunchSummary:
    """Run ``jobs`` (teacher first) on ``workers`` worker processes; see the module doc."""
    from kdbench.progress import console, progress_bar
    from kdbench.train.runner import is_finished

    t0 = time.perf_counter()
    summary = LaunchSummary(results)
    todo = []
    for job in jobs:
        if job.run_dir is not None and is_finished(job.run_dir):
            summary.finished_before += 1
        else:
            todo.append(job)
    if any(j.needs_teacher for j in todo):
        teacher = [j for j in todo if j.name == TEACHER]
    else:
        teacher = []
    students = [j for j in todo if j.name != TEACHER]
    where = (f"GPU{'s' * (len(gpus) > 1)} {','.join(gpus)}" if gpus else
             f"{slots(workers, [])[0].threads} thread(s) each")
    console.print(f"launcher local: {len(students)} run(s) to do, {summary.finished_before} "
                  f"finished, {workers} worker(s), {where}; logs in {results / 'logs'}",
                  highlight=False)
    running: list[_Running] = []
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task("runs", total=len(students) + len(teacher))
            if teacher:  # the whole machine for the teacher
                whole = Slot(gpu=gpus[0]) if gpus else Slot(threads=usable_cores())
                running.append(_Running(teacher[0], whole, results))
                if _wait(running, summary, bar, task, console) and students:
                    summary.skipped = [j.name for j in students if j.needs_teacher]
                    console.print(f"[red]the teacher failed: {len(summary.skipped)} "
                                  "distillation run(s) not started[/]", highlight=False)
                    students = [j for j in students if not j.needs_teacher]
            free = slots(workers, gpus)
            queue = list(students)
            while queue or running:
                while queue and free:
                    running.append(_Running(queue.pop(0), free.pop(0), results))
                done = _reap(running, summary, bar, task, console)
                free += [r.slot for r in done]
                if not done:
                    time.sleep(POLL_S)
    except BaseException:
        for r in running:
            r.stop()
        raise
    summary.wall_s = time.perf_counter() - t0
    return summary


def _wait(running: list[_Running], summary: LaunchSummary, bar, task, console) -> bool:
    """Wait for every running job; whether one failed."""
    failed = len(summary.failed)
    while running:
        if not _reap(running, summary, bar, task, console):
            time.sleep(POLL_S)
    return len(summary.failed) > failed


def _reap(running: list[_Running], summary: LaunchSummary, bar, task, console
          ) -> list[_Running]:
    """Remove and report the jobs that ended; returns them."""
    done = [r for r in running if r.poll() is not None]
    for r in done:
        running.remove(r)
        secs = time.perf_counter() - r.started
        bar.update(task, advance=1)
        if r.proc.returncode == 0:
            summary.trained += r.job.name != TEACHER
            console.print(f"done {r.job.name} ({secs:.0f} s)", highlight=False)
        else:
            summary.failed.append((r.job.name, r.log))
            console.print(f"[red]failed {r.job.name} (exit {r.proc.returncode}); see {r.log}[/]",
                          highlight=False)
    return done
