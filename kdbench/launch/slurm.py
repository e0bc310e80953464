"""`--launcher slurm`: a plan's jobs through submitit (the ``kdbench[slurm]`` extra).

The teacher is one job; the student runs are a job array that starts when the teacher's job
succeeded (``afterok``) and runs at most ``max_parallel`` at once. A job that is preempted or
reaches its time limit is requeued by submitit (:class:`RunJob` is checkpointable) and its run
continues from its ``last.pt``. ``cluster="local"`` (or ``"debug"``) runs the same submitit
path on this machine, waiting for the teacher's job before it submits the students.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.launch.jobs import Job, add_counts, plan_jobs, split_todo
from kdbench.plan import Plan
from kdbench.request import SLURM_CLUSTERS as CLUSTERS
from kdbench.request import RunRequest
from kdbench.summary import RunSummary
from kdbench.train.inprocess import finish_plan, teacher_of

log = logging.getLogger(__name__)


def _submitit():
    try:
        import submitit
    except ImportError as exc:
        raise KdbenchError("--launcher slurm needs submitit; pip install 'kdbench[slurm]'"
                           ) from exc
    return submitit


@dataclass
class SlurmOptions:
    """``--slurm-*``: partition, GPUs and time per job, array parallelism, log folder, and
    the submitit cluster (slurm, or local / debug to run the same path on this machine)."""

    partition: str | None = None
    gpus_per_job: int = 1
    time_min: int = 24 * 60
    max_parallel: int = 16
    folder: str | None = None  # default: <results>/slurm
    cluster: str = "slurm"
    cpus_per_job: int | None = None

    @classmethod
    def of(cls, r: RunRequest) -> SlurmOptions:
        """The ``--slurm-*`` fields of a request."""
        return cls(r.slurm_partition, r.slurm_gpus_per_job, r.slurm_time, r.slurm_max_parallel,
                   None if r.slurm_folder is None else str(r.slurm_folder), r.slurm_cluster,
                   r.slurm_cpus_per_job)

    def check(self) -> None:
        if self.cluster not in CLUSTERS:
            raise KdbenchError(f"--slurm-cluster {self.cluster!r}; use one of "
                               + ", ".join(CLUSTERS))
        for name in ("gpus_per_job", "time_min", "max_parallel"):
            low = 0 if name == "gpus_per_job" else 1
            if getattr(self, name) < low:
                raise KdbenchError(f"--slurm-{name.replace('_', '-')} must be at least {low}")
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise KdbenchError("--launcher slurm: no SLURM here (sbatch not found); run on the "
                               "cluster's login node, or add --slurm-cluster local to run the "
                               "same jobs on this machine")


class RunJob:
    """One job of a plan as a submitit job (its request as JSON, run in process): requeued on
    preemption or timeout (the run continues from its last finished epoch)."""

    def __init__(self, request: RunRequest | str) -> None:
        self.request = request if isinstance(request, str) else request.to_json()

    def __call__(self) -> dict[str, int]:
        """Run the job; its run counts (trained, found finished, left to another process)."""
        from kdbench.launch.jobs import run_job
        from kdbench.logs import to_stderr

        to_stderr()
        request = RunRequest.from_json(self.request)
        code, counts = run_job(request)
        if code != 0:
            raise RuntimeError(f"{request.only}: bad input (see the error above)")
        return counts

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit calls this on preemption / timeout: requeue the same command."""
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


class SlurmLauncher:
    """Submits a plan's jobs; :meth:`launch` submits and (local clusters) waits."""

    def __init__(self, options: SlurmOptions, results: Path) -> None:
        options.check()
        submitit = _submitit()
        self.options, self.results = options, Path(results)
        self.folder = Path(options.folder) if options.folder else self.results / "slurm"
        cluster = None if options.cluster == "slurm" else options.cluster
        self.executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=cluster)
        params: dict[str, Any] = {"timeout_min": options.time_min, "name": "kdbench"}
        if options.cluster == "slurm":
            params.update(gpus_per_node=options.gpus_per_job,
                          slurm_array_parallelism=options.max_parallel)
            if options.partition:
                params["slurm_partition"] = options.partition
            if options.cpus_per_job:
                params["cpus_per_task"] = options.cpus_per_job
        self.executor.update_parameters(**params)

    def submit(self, job: Job, after: Any = None) -> Any:
        """Submit one job (after the job ``after`` succeeded, on SLURM)."""
        if after is not None and self.options.cluster == "slurm":
            self.executor.update_parameters(
                slurm_additional_parameters={"dependency": f"afterok:{after.job_id}"})
        return self.executor.submit(RunJob(job.request))

    def submit_array(self, jobs: list[Job], after: Any = None) -> list[Any]:
        """The student runs as one job array (after ``after`` succeeded, on SLURM)."""
        if after is not None:
            self.executor.update_parameters(
                slurm_additional_parameters={"dependency": f"afterok:{after.job_id}"})
        with self.executor.batch():
            return [self.executor.submit(RunJob(j.request)) for j in jobs]

    def launch(self, plan: Plan) -> RunSummary:
        """Submit the plan's jobs; on a local cluster run them (teacher first, then at most
        ``max_parallel`` at once) and wait."""
        jobs = plan_jobs(plan)
        t0 = time.perf_counter()
        summary = RunSummary(self.results, runs=[run.run_dir for run in plan.runs])
        summary.finished_before, teacher, students = split_todo(jobs)
        log.info(f"launcher slurm ({self.options.cluster}): {len(students)} run(s) to do, "
                 f"{summary.finished_before} finished; logs in {self.folder}")
        first = self.submit(teacher[0]) if teacher else None
        if self.options.cluster == "slurm":
            array = self.submit_array(students, after=first) if students else []
            summary.job_ids = [j.job_id for j in ([first] if first else []) + array]
            log.info(f"submitted {len(summary.job_ids)} job(s): "
                     f"{', '.join(summary.job_ids[:3])}{' ...' * (len(array) > 2)}; "
                     "`squeue --me` shows them, `kdbench table` lists the finished runs")
        else:
            if first is not None and not self._finished(first, teacher[0], summary):
                summary.skipped = [j.name for j in students if j.needs_teacher]
                students = [j for j in students if not j.needs_teacher]
            pending, running = list(students), []
            while pending or running:
                while pending and len(running) < self.options.max_parallel:
                    job = pending.pop(0)
                    running.append((self.submit(job), job))
                for item in [r for r in running if r[0].done()]:
                    running.remove(item)
                    self._finished(*item, summary)
                time.sleep(0.2)
        summary.wall_s = time.perf_counter() - t0
        if self.options.cluster != "slurm" and summary.ok:
            finish_plan(plan, summary, teacher_of(plan))
        return summary

    @staticmethod
    def _finished(sub: Any, job: Job, summary: RunSummary) -> bool:
        """Wait for a submitted job; whether it succeeded (a failure is recorded)."""
        try:
            add_counts(summary, sub.result() or {})
        except Exception as exc:  # noqa: BLE001 - submitit re-raises the job's error
            summary.failed.append((job.name, Path(sub.paths.stderr)))
            log.error(f"failed {job.name}: {str(exc).splitlines()[0][:200]}; see "
                      f"{sub.paths.stderr}")
            return False
        log.info(f"done {job.name}")
        return True
