"""A plan as jobs: the teacher's job, then one job per run, each the plan's request narrowed to
that run (``--only``). Every launcher runs these, in process (:func:`run_job`), so the run
folders, locks and resume are those of a plain `kdbench run`, whichever launcher made them."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from kdbench.errors import KdbenchError
from kdbench.plan import TEACHER, Plan
from kdbench.request import RunRequest
from kdbench.summary import RunSummary

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One job of a plan: the teacher, or one student run (``run_dir`` its folder)."""

    name: str
    request: RunRequest  # the plan's resolved request with ``only`` this job
    run_dir: Path | None = None  # None for the teacher
    needs_teacher: bool = False

    def argv(self) -> list[str]:
        """kdbench's arguments for this job."""
        return self.request.to_argv()

    def shell(self, program: str = "kdbench") -> str:
        """The command line, quoted for a POSIX shell."""
        return shlex.join([program, *self.argv()])


def plan_jobs(plan: Plan) -> list[Job]:
    """The teacher's job (if a selected run distils, or ``--only teacher``), then one job per
    selected run of the plan (all, or the ``--only`` one)."""
    jobs = [Job(r.name, plan.request.job(r.name), r.run_dir, r.distils)
            for r in plan.selected]
    if any(j.needs_teacher for j in jobs) or plan.request.only == TEACHER:
        jobs.insert(0, Job(TEACHER, plan.request.job(TEACHER)))
    return jobs


def split_todo(jobs: list[Job]) -> tuple[int, list[Job], list[Job]]:
    """(finished runs, the teacher's job if an unfinished run distils or it is the only job,
    the unfinished runs)."""
    from kdbench.train.runner import is_finished

    finished = [j for j in jobs if j.run_dir is not None and is_finished(j.run_dir)]
    students = [j for j in jobs if j.name != TEACHER and j not in finished]
    wanted = any(j.needs_teacher for j in students) or all(j.name == TEACHER for j in jobs)
    teacher = [j for j in jobs if j.name == TEACHER] if wanted else []
    return len(finished), teacher, students


@contextmanager
def job_state() -> Iterator[None]:
    """Process-wide state a job may change (torch's thread count, the TF32 flags), restored
    when it ends, so that no job of a worker inherits another's."""
    import torch

    threads = torch.get_num_threads()
    matmul = torch.get_float32_matmul_precision()
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    cuda_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        torch.backends.cuda.matmul.allow_tf32 = cuda_tf32


COUNTS = ("trained", "finished_before", "left_to_another_process")


def run_job(request: RunRequest, threads: int | None = None) -> tuple[int, dict[str, int]]:
    """Plan and execute one job's request here (``threads`` overrides its thread count);
    returns its exit status (0 done, 2 bad input, logged as one line) and its run counts
    (:data:`COUNTS`: trained, found finished, left to another process)."""
    from kdbench.plan import plan
    from kdbench.train.inprocess import run_plan

    if threads is not None:
        request = replace(request, threads=threads)
    request = replace(request, progress=False)
    with job_state():
        try:
            summary = run_plan(plan(request))
        except KdbenchError as exc:
            log.error(f"kdbench: error: {exc}")
            return 2, {}
    return 0, {k: summary.counts()[k] for k in COUNTS}


def add_counts(summary: RunSummary, counts: dict[str, int]) -> None:
    """Add a job's run counts to the launcher's summary."""
    for k in COUNTS:
        setattr(summary, k, getattr(summary, k) + int(counts.get(k, 0)))


def print_jobs(plan: Plan) -> RunSummary:
    """``--launcher print``: the plan's command lines (``commands``), teacher first; nothing
    runs."""
    return RunSummary(plan.request.results, commands=[j.shell() for j in plan_jobs(plan)])
