"""`kdbench run` and `kdbench reproduce` as functions: a request, its plan, an executor."""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.files import utc_now
from kdbench.plan import Plan, plan
from kdbench.request import RunRequest
from kdbench.summary import RunSummary

log = logging.getLogger(__name__)
REPRO_LOG = "reproduce.jsonl"  # one record per reproduce(): command, times, run counts


def execute(p: Plan) -> RunSummary:
    """Execute a plan with its request's launcher: here (inprocess), as command lines (print),
    on worker processes (local) or as submitit jobs (slurm)."""
    r = p.request
    if r.launcher == "print":
        from kdbench.launch.jobs import print_jobs

        return print_jobs(p)
    if r.launcher == "inprocess":
        from kdbench.train.inprocess import run_plan

        return _with_teacher(run_plan(p), p)
    from kdbench.launch.local import launch_local
    from kdbench.launch.slurm import SlurmLauncher, SlurmOptions
    from kdbench.train.inprocess import announce
    from kdbench.train.store import check_locking, locks_in

    slurm = SlurmLauncher(SlurmOptions.of(r), r.results) if r.launcher == "slurm" else None
    with locks_in(r.lock_dir):  # one line now, not a failure in every job
        check_locking(r.results)
    announce(p, f"device {r.device}, launcher {r.launcher}")
    return _with_teacher(slurm.launch(p) if slurm is not None else launch_local(p), p)


def _with_teacher(summary: RunSummary, p: Plan) -> RunSummary:
    from kdbench.train.inprocess import teacher_of

    summary.teacher = teacher_of(p)
    return summary


def run(methods: str | Sequence[str] = "all", dataset: str = "synthetic",
        **options: Any) -> RunSummary:
    """Train the teacher (once per dataset and teacher config) and every planned student run:
    each method (registry name, or "all") in each of its ``modes``, with its registry variants
    and the ``sweeps`` (``{"<hyper-parameter>": [v1, v2]}``), for each student and seed.

    ``options`` are the fields of :class:`kdbench.request.RunRequest` (each `kdbench run` flag,
    e.g. ``preset="quick"``, ``settings={"train.lr": 3e-4}``, ``seeds=[0, 1]``,
    ``launcher="local"``); a finished run is skipped, an interrupted one continues, and
    ``restart=True`` discards both. Returns a :class:`kdbench.summary.RunSummary`."""
    return execute(plan(RunRequest.make("run", methods=methods, dataset=dataset, **options)))


def reproduce(preset: str | None = None, dataset: str = "synthetic",
              **options: Any) -> RunSummary:
    """Every run the tables need (every method in rgb and both, its variants, and the ablation
    and sweep runs its registry ``reports`` declare), then every table as
    ``<results>/tables/<kind>.md`` and every figure as ``<results>/<figure>.png``; appends a
    record of this call to ``<results>/reproduce.jsonl``. ``cross_dataset`` (Table 7,
    default ``"auto"``): ``synthetic_c23`` after ``synthetic``, nothing after a real dataset;
    ``"none"``: no cross test. ``options`` as for :func:`run`."""
    request = RunRequest.make("reproduce", preset=preset, dataset=dataset, **options)
    if request.protocol and os.environ.get("WORLD_SIZE", "1") != "1":
        raise KdbenchError("reproduce --protocol runs its plans one after the other in one "
                           "process; run it without torchrun (or each plan with `kdbench run "
                           "--train-generators ...` under torchrun)")
    if request.resolution and os.environ.get("WORLD_SIZE", "1") != "1":
        raise KdbenchError("reproduce --resolution runs its plans after the main one in one "
                           "process; make the runs under torchrun without --resolution, then "
                           "run `kdbench reproduce --resolution` alone")
    if request.compression and os.environ.get("WORLD_SIZE", "1") != "1":
        raise KdbenchError("reproduce --compression runs its plan in one process: make the "
                           "runs under torchrun without --compression, then run `kdbench "
                           "reproduce --compression` alone")
    t0, started_at = time.perf_counter(), utc_now()
    if request.protocol:
        from kdbench.protocols import reproduce_protocol

        summary, device, complete = reproduce_protocol(request)
    else:
        p = plan(request)
        summary = execute(p)
        device = p.request.device
        from kdbench import distributed

        complete = distributed.is_main() and _waited(request, summary)
        if complete:
            write_reports(p)
            if request.resolution:  # before the compression plan's Pareto figure
                from kdbench.resolution_plan import write_resolution

                more = write_resolution(p)
                summary = summary.merged(more) if more is not None else summary
            if request.compression:
                write_compression(p)
    if not complete:
        return summary
    wall = time.perf_counter() - t0
    out = request.results
    import torch

    with open(out / REPRO_LOG, "a", encoding="utf-8") as f:  # one line per invocation
        f.write(json.dumps({
            "command": request.command or shlex.join(["kdbench",
                                                       *request.to_argv("reproduce")]),
            "started_at": started_at, "finished_at": utc_now(), "wall_s": round(wall, 1),
            **summary.counts(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": device}, sort_keys=True) + "\n")
    log.info(f"reproduce finished in {wall:.0f} s: tables in {out / 'tables'}, plots in "
             f"{out}, this call logged in {out / REPRO_LOG}")
    summary.wall_s = wall
    return summary


def _waited(request: RunRequest, summary: RunSummary) -> bool:
    """Whether every run has finished here, so the tables can be written now."""
    if request.launcher == "inprocess":
        return True
    waited = request.launcher == "local" or (request.launcher == "slurm"
                                             and request.slurm_cluster != "slurm")
    if waited and summary.ok:
        return True
    if request.launcher != "print":
        log.info("the tables and plots are written once every run has finished: run this "
                 "command again then (with --launcher inprocess it skips the finished runs)")
    return False


def write_reports(p: Plan) -> None:
    """reproduce's end: the cross tests left, every table and every figure of the store."""
    from kdbench import reporting
    from kdbench.files import atomic_write_text

    r = p.request
    out, registry = r.results, list(r.registry)
    if p.cross:
        cross_test_rest(out / "runs" / _dataset_folder(p), p.cross[0], p.cross[1], r.device,
                        r.progress)
    for kind in [k for k in reporting.table_kinds(registry)
                 if k not in ("runs", "cost", "shortcut", "generators", "transfer",
                              "resolution", "views")]:
        # shortcut: a dataset's files; generators, transfer, resolution: their own runs
        atomic_write_text(out / "tables" / f"{kind}.md",
                          reporting.report(kind, results=out, registry=registry).markdown())
    cost = reporting.report("cost", preset=r.preset, dataset=r.dataset,
                            student=list(r.students), device=r.device)
    atomic_write_text(out / "tables" / "cost.md", cost.markdown())
    for figure in reporting.figure_kinds(registry):
        try:
            reporting.plot(figure, results=out, registry=registry)
        except KdbenchError as exc:  # e.g. a sweep with no finished run: say so, go on
            log.warning(f"plot {figure} skipped: {exc}")


def _dataset_folder(p: Plan) -> str:
    """The plan's folder under runs/ (:func:`kdbench.config.dataset_folder`)."""
    from kdbench.config import dataset_folder

    return dataset_folder(p.request.dataset, p.config)


def write_compression(p: Plan) -> None:
    """reproduce --compression: the compression plan on the first student's vanilla runs of
    the plan's seeds, then the compression table and the Pareto figure."""
    from kdbench import reporting
    from kdbench.compress.plan import run_plan
    from kdbench.files import atomic_write_text

    r = p.request
    student = p.runs[0].spec.student if p.runs else "resnet18_thin"
    run_plan(r.results, _dataset_folder(p), student, r.seeds, registry=r.registry,
             data_root=r.data_root, device=r.device, threads=r.threads, progress=r.progress)
    atomic_write_text(r.results / "tables" / "compression.md",
                      reporting.report("compression", results=r.results).markdown())
    reporting.plot("pareto", results=r.results)


def cross_test_rest(runs_dir: Path, dataset: str, data_root: Path | None, device: str | None,
                    progress: bool) -> None:
    """Test the finished students under ``runs_dir`` that have no result on ``dataset`` yet
    (each run's own job tests it as it finishes; this takes the runs finished before), and
    name those that cannot be (no best.pt left)."""
    from kdbench.report.listing import read_or_skip
    from kdbench.reporting import evaluate
    from kdbench.train.evaluate import CROSS_DIR

    todo, lost = [], []
    for path in sorted(runs_dir.rglob("seed*/metrics.json")):
        run_dir, m = path.parent, read_or_skip(path) or {}
        if m.get("status") != "finished" or m.get("role") != "student" \
                or (run_dir / CROSS_DIR / f"{dataset}.json").is_file():
            continue
        (todo if (run_dir / "best.pt").is_file() else lost).append(run_dir)
    if todo:
        evaluate(todo, dataset, data_root=data_root, device=device, progress=progress)
    if lost:
        names = ["/".join(r.relative_to(runs_dir).parts) for r in lost]
        root = f" --cross-data-root {data_root}" if data_root else ""
        log.warning(
            f"Table 7 lacks {len(lost)} finished run{'s' * (len(lost) != 1)} with no "
            f"test on {dataset} and no best.pt left to test: {', '.join(names[:5])}"
            f"{f' and {len(names) - 5} more' if len(names) > 5 else ''}; train each again "
            f"with `kdbench run <this plan> --only <run> --restart --cross-dataset {dataset}"
            f"{root}` (or the whole plan with --restart)")
