"""The in-process executor: a plan's runs one after the other in this process (every launched
job runs through here too, with ``--only`` its one run)."""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

from kdbench.plan import TEACHER, Plan
from kdbench.summary import RunSummary, disk_use

log = logging.getLogger(__name__)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _about(seconds: float) -> str:
    return f"about {seconds / 60:.0f} min" if seconds >= 90 else f"about {seconds:.0f} s"


def announce(plan: Plan, where: str) -> None:
    """The plan's first lines: preset, dataset, device, and the name of every run."""
    r, runs = plan.request, plan.selected
    log.info(f"kdbench run: preset {r.preset}, dataset {r.dataset}, {where}, "
             f"{_plural(len(runs), 'run')}; results go to {r.results}")
    if r.only is None:  # an --only job is named in its launcher's log already
        width = len(str(len(runs)))
        for i, run in enumerate(runs, 1):
            log.info(f"  {i:>{width}}. {run.name}")


def run_plan(plan: Plan) -> RunSummary:
    """Train the teacher (once per dataset and teacher config, if a run distils) and every
    selected run of ``plan`` here; a finished run is skipped, an interrupted one continues."""
    from kdbench import distributed
    from kdbench.config import for_device
    from kdbench.data.datasets import open_configured
    from kdbench.threads import take_share
    from kdbench.train.runner import Context, is_finished, pick_device, run_one
    from kdbench.train.store import check_locking, locks_in
    from kdbench.train.teachers import (
        ensure_teacher,
        fill_teacher_cache,
        new_teacher,
        teacher_fields,
    )

    r = plan.request
    runs = plan.selected
    for run in runs:  # import every entry point before hours of training start
        run.entry.resolve()
    with ExitStack() as stack:
        stack.enter_context(locks_in(r.lock_dir))
        check_locking(r.results)  # a file system without locks: one line now, not hangs later
        share = stack.enter_context(take_share(r.threads))
        device = distributed.setup(pick_device(r.device))  # torchrun: this rank's device
        config = for_device(plan.config, device.type)
        data = open_configured(r.dataset, r.data_root, config["data"], progress=r.progress)
        where = (f"device {device}" if device.type == "cuda" else
                 f"device cpu, {_plural(share.threads, 'thread')}")
        if distributed.active():
            where += (f" on each of {distributed.size()} ranks ({distributed.backend()}, "
                      f"global batch {config['train']['batch_size']})")
        announce(plan, where)
        ctx = Context(data, r.dataset, config, r.results, device, r.restart, r.progress,
                      keep_checkpoints=r.keep_checkpoints, cross=plan.cross)
        t0 = time.perf_counter()
        todo = [run for run in runs if r.restart or not is_finished(run.run_dir)]
        if plan.cross and todo:
            distributed.on_main(lambda: ctx.cross_data() and None)  # bad data: before training
        distilling = [run for run in todo if run.distils]
        teacher = None
        if distilling or r.only == TEACHER:
            teacher = new_teacher(ctx)
            readers = distilling if r.only != TEACHER else [  # the teacher's job: the plan's
                run for run in plan.runs if run.distils and not is_finished(run.run_dir)]
            # building each run's distiller checks every student/teacher pair before the
            # teacher trains; one pass of the teacher caches what every run reads
            ctx.teacher_fields = teacher_fields([(p.spec, p.entry) for p in readers], teacher)
            teacher = ensure_teacher(ctx, teacher)
            if r.only == TEACHER:
                fill_teacher_cache(ctx, teacher)
        summary = RunSummary(r.results, runs=[run.run_dir for run in runs])
        key = {"trained": "trained", "finished": "finished_before",
               "busy": "left_to_another_process"}
        estimate = Estimate(len(todo), config["train"]["epochs"])
        ctx.on_epoch = estimate.epoch
        for run in runs:
            started = time.perf_counter()
            outcome, _ = run_one(ctx, run.spec, run.entry, teacher if run.distils else None)
            setattr(summary, key[outcome], getattr(summary, key[outcome]) + 1)
            if outcome == "trained":
                estimate.done(time.perf_counter() - started)
        summary.wall_s = time.perf_counter() - t0
        busy = summary.left_to_another_process
        log.info(f"trained {summary.trained}, found finished {summary.finished_before}"
                 + (f", left {busy} to another kdbench process" if busy else "")
                 + f" in {summary.wall_s:.0f} s; `kdbench table --results {r.results}` lists "
                 "them")
        if r.only is None and distributed.is_main():
            finish_plan(plan, summary, teacher_of(plan))
        return summary


class Estimate:
    """The time left of a plan: from the first epoch's speed once it has run, then from the
    runs trained so far."""

    def __init__(self, total: int, epochs: int) -> None:
        self.total, self.epochs, self.count, self.seconds = total, epochs, 0, 0.0
        self.said_first = False

    def epoch(self, left_in_run: int, seconds: float) -> None:
        """After an epoch: the first one estimates the whole plan at its speed."""
        if self.said_first or self.total <= 1:
            return
        self.said_first = True
        left = seconds * (left_in_run + self.epochs * (self.total - 1))
        log.info(f"plan: {_about(left)} left for {_plural(self.total, 'run')} at the "
                 "first epoch's speed (runs differ; refined as runs finish)")

    def done(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds
        left = self.total - self.count
        if left > 0:
            log.info(f"{self.count} of {self.total} runs trained; "
                     f"{_about(self.seconds / self.count * left)} left for the other {left} at "
                     "this speed")


def teacher_of(plan: Plan) -> Path | None:
    """The folder of the plan's teacher (None when no run distils)."""
    if not any(run.distils for run in plan.runs):
        return None
    from kdbench.config import for_device
    from kdbench.train.teachers import teacher_folder

    r = plan.request
    config = for_device(plan.config, "cuda" if str(r.device).startswith("cuda") else "cpu")
    return teacher_folder(r.results, r.dataset, config)


def finish_plan(plan: Plan, summary: RunSummary, teacher: Path | None) -> None:
    """The end of a whole plan: with ``--keep-checkpoints none`` and every run finished, the
    teacher cache goes too; then the store's disk use is reported."""
    from kdbench.train.runner import is_finished

    r = plan.request
    if (r.keep_checkpoints == "none" and teacher is not None and (teacher / "cache").is_dir()
            and all(is_finished(run.run_dir) for run in plan.runs)):
        freed = disk_use(teacher / "cache")
        shutil.rmtree(teacher / "cache", ignore_errors=True)
        log.info(f"--keep-checkpoints none: removed the teacher cache ({freed / 2**20:.0f} MB), "
                 "every run of the plan is finished")
    summary.store_bytes = disk_use(r.results)
    log.info(f"the store {r.results} holds {summary.store_bytes / 2**20:.0f} MB")
