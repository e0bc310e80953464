"""`--launcher local`: a plan's jobs on worker processes of this machine.

The teacher's job (the teacher and the shared cache of the fields the plan reads) runs first
on the whole machine (all cores, or the first GPU); then ``workers`` long-lived worker
processes (:mod:`kdbench.launch.worker`: Python and torch load once per worker) take the runs,
longest first, each worker pinned to one GPU (``CUDA_VISIBLE_DEVICES``) or, on the CPU, given
its share of the cores (``--threads``). Each run logs to ``<results>/logs/<run>.log``; a failed
run is reported with its log and the others go on (a worker that died is replaced). The
workers die with the launcher (Linux: the parent-death signal); a re-launch skips the runs that
finished and continues the others from their ``last.pt``.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kdbench.launch.commands import TEACHER, Job, split_todo


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


class Worker:
    """A worker process (:mod:`kdbench.launch.worker`) on one slot, running one job at a
    time."""

    def __init__(self, slot: Slot, results: Path) -> None:
        self.slot, self.results = slot, results
        self.job: Job | None = None
        self.log: Path | None = None
        self.started = 0.0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kdbench.launch.worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=slot.env(),
            preexec_fn=_die_with_parent if sys.platform == "linux" else None)

    def start(self, job: Job) -> None:
        """Hand ``job`` to the worker (its output goes to the run's log)."""
        self.job, self.log = job, log_path(self.results, job.name)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"$ {job.shell()} {' '.join(self.slot.argv())}\n")
        self.started = time.perf_counter()
        line = json.dumps({"argv": [*job.argv, *self.slot.argv(), "--no-progress"],
                           "log": str(self.log)})
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        self.proc.stdin.flush()

    def result(self) -> int:
        """The finished job's exit status (the worker's, if it died: it is then replaced)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip():
            return int(line)
        return self.proc.wait() or 1

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def order(jobs: list[Job]) -> list[Job]:
    """Longest first (both branches, then one, then teacher-free), so that the last runs to
    start are short and the workers finish together."""
    rank = {"both": 0, "rgb": 1}
    return sorted(jobs, key=lambda j: rank.get(j.name.split("/")[-2], 2))


def launch_local(jobs: list[Job], results: Path, workers: int, gpus: list[str],
                 progress: bool = True) -> LaunchSummary:
    """Run ``jobs`` (teacher first) on ``workers`` worker processes; see the module doc."""
    from kdbench.progress import console, progress_bar

    t0 = time.perf_counter()
    summary = LaunchSummary(results)
    summary.finished_before, teacher, students = split_todo(jobs)
    where = (f"GPU{'s' * (len(gpus) > 1)} {','.join(gpus)}" if gpus else
             f"{slots(workers, [])[0].threads} thread(s) each")
    console.print(f"launcher local: {len(students)} run(s) to do, {summary.finished_before} "
                  f"finished, {workers} worker(s), {where}; logs in {results / 'logs'}",
                  highlight=False)
    workers_: list[Worker] = []
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task("runs", total=len(students) + len(teacher))
            if teacher:  # the whole machine for the teacher
                whole = Worker(Slot(gpu=gpus[0]) if gpus else Slot(threads=usable_cores()),
                               results)
                workers_.append(whole)
                whole.start(teacher[0])
                failed = not _finish(whole, summary, bar, task, console)
                whole.stop()
                workers_.remove(whole)
                if failed and students:
                    summary.skipped = [j.name for j in students if j.needs_teacher]
                    console.print(f"[red]the teacher failed: {len(summary.skipped)} "
                                  "distillation run(s) not started[/]", highlight=False)
                    students = [j for j in students if not j.needs_teacher]
            queue = order(students)
            workers_ += [Worker(slot, results) for slot in slots(min(workers, len(queue)), gpus)]
            for w in workers_:
                w.start(queue.pop(0))
            while any(w.job for w in workers_):
                busy = {w.proc.stdout: w for w in workers_ if w.job}
                ready, _, _ = select.select(list(busy), [], [])
                for pipe in ready:
                    w = busy[pipe]
                    if not _finish(w, summary, bar, task, console) and w.proc.poll() is not None:
                        workers_[workers_.index(w)] = w = Worker(w.slot, results)  # it died
                    if queue:
                        w.start(queue.pop(0))
    finally:
        for w in workers_:
            w.stop()
    summary.wall_s = time.perf_counter() - t0
    return summary


def _finish(w: Worker, summary: LaunchSummary, bar, task, console) -> bool:
    """Wait for the worker's job and report it; whether it succeeded."""
    code = w.result()
    job, w.job = w.job, None
    assert job is not None
    secs = time.perf_counter() - w.started
    bar.update(task, advance=1)
    if code == 0:
        summary.trained += job.name != TEACHER
        console.print(f"done {job.name} ({secs:.0f} s)", highlight=False)
        return True
    summary.failed.append((job.name, w.log))
    console.print(f"[red]failed {job.name} (exit {code}); see {w.log}[/]", highlight=False)
    return False
