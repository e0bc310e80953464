"""`--launcher local`: a plan's jobs on worker processes of this machine.

The teacher's job (the teacher and the shared cache of the fields the plan reads) runs first
on the whole machine (all cores, or the first GPU); then ``workers`` long-lived worker
processes (:mod:`kdbench.launch.worker`: Python and torch load once per worker) take the runs,
longest first, each worker pinned to one GPU (``CUDA_VISIBLE_DEVICES``) or, on the CPU, given
its share of the cores (``--threads``). Each run logs to ``<results>/logs/<run>.log``; a failed
run is reported with its log and the others go on (a worker that died is replaced). The
workers die with the launcher (Linux: the parent-death signal, which each worker sets); a
re-launch skips the runs that finished and continues the others from their ``last.pt``.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kdbench.launch.jobs import Job, add_counts, plan_jobs, split_todo
from kdbench.plan import Plan
from kdbench.summary import RunSummary
from kdbench.threads import usable_cores
from kdbench.train.inprocess import finish_plan, teacher_of

log = logging.getLogger(__name__)


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


def slots(workers: int, gpus: list[str]) -> list[Slot]:
    """One slot per worker: the GPUs in turn, or an equal share of the cores."""
    if gpus:
        return [Slot(gpu=gpus[i % len(gpus)]) for i in range(workers)]
    return [Slot(threads=max(1, usable_cores() // workers)) for _ in range(workers)]


def log_path(results: Path, name: str) -> Path:
    """``<results>/logs/<run name with / as __>.log``."""
    return results / "logs" / f"{name.replace('/', '__')}.log"


class Worker:
    """A worker process (:mod:`kdbench.launch.worker`) on one slot, running one job at a
    time."""

    def __init__(self, slot: Slot, results: Path) -> None:
        self.slot, self.results = slot, results
        self.job: Job | None = None
        self.log: Path | None = None
        self.started = 0.0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kdbench.launch.worker", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=slot.env())

    def start(self, job: Job) -> None:
        """Hand ``job`` to the worker (its output goes to the run's log)."""
        self.job, self.log = job, log_path(self.results, job.name)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        count = job.request.threads or self.slot.threads  # --threads N holds in every job
        threads = f" --threads {count}" if count and not job.request.threads else ""
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"$ {job.shell()}{threads}\n")
        self.started = time.perf_counter()
        line = json.dumps({"request": job.request.to_json(), "threads": count,
                           "log": str(self.log)})
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        self.proc.stdin.flush()

    def result(self) -> tuple[int, dict[str, int]]:
        """The finished job's exit status and run counts (the worker's status, if it died: it
        is then replaced)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip():
            answer = json.loads(line)
            return int(answer["code"]), dict(answer["counts"])
        return self.proc.wait() or 1, {}

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


def launch_local(plan: Plan) -> RunSummary:
    """Run the plan's jobs (teacher first) on worker processes; see the module doc."""
    from kdbench.progress import progress_bar

    r = plan.request
    results, gpus, progress = r.results, list(r.gpus), r.progress
    if not gpus and str(r.device).startswith("cuda"):  # a CUDA plan: one worker per GPU
        import torch

        gpus = [str(i) for i in range(torch.cuda.device_count())]
    workers = r.workers or len(gpus) or min(usable_cores(), 8)
    jobs = plan_jobs(plan)
    t0 = time.perf_counter()
    summary = RunSummary(results, runs=[run.run_dir for run in plan.runs])
    summary.finished_before, teacher, students = split_todo(jobs)
    where = (f"GPU{'s' * (len(gpus) > 1)} {','.join(gpus)}" if gpus else
             f"{slots(workers, [])[0].threads} thread(s) each")
    log.info(f"launcher local: {len(students)} run(s) to do, {summary.finished_before} "
             f"finished, {workers} worker(s), {where}; logs in {results / 'logs'}")
    workers_: list[Worker] = []
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task("runs", total=len(students) + len(teacher))
            if teacher:  # the whole machine for the teacher
                whole = Worker(Slot(gpu=gpus[0]) if gpus else Slot(threads=usable_cores()),
                               results)
                workers_.append(whole)
                whole.start(teacher[0])
                failed = not _finish(whole, summary, bar, task)
                whole.stop()
                workers_.remove(whole)
                if failed and students:
                    summary.skipped = [j.name for j in students if j.needs_teacher]
                    log.error(f"the teacher failed: {len(summary.skipped)} "
                              "distillation run(s) not started")
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
                    if not _finish(w, summary, bar, task) and w.proc.poll() is not None:
                        workers_[workers_.index(w)] = w = Worker(w.slot, results)  # it died
                    if queue:
                        w.start(queue.pop(0))
    finally:
        for w in workers_:
            w.stop()
    summary.wall_s = time.perf_counter() - t0
    if summary.ok:
        finish_plan(plan, summary, teacher_of(plan))
    return summary


def _finish(w: Worker, summary: RunSummary, bar, task) -> bool:
    """Wait for the worker's job and report it; whether it succeeded."""
    code, counts = w.result()
    job, w.job = w.job, None
    assert job is not None
    secs = time.perf_counter() - w.started
    bar.update(task, advance=1)
    if code == 0:
        add_counts(summary, counts)
        log.info(f"done {job.name} ({secs:.0f} s)")
        return True
    summary.failed.append((job.name, w.log))
    log.error(f"failed {job.name} (exit {code}); see {w.log}")
    return False
