"""kdbench as Python functions: what the `kdbench` command does, usable from a notebook.

>>> import kdbench.api as k
>>> summary = k.run(methods="all", preset="quick", results="/tmp/r")
>>> k.table("comparison", results="/tmp/r")          # a DataFrame
>>> k.plot("curves", results="/tmp/r")               # the figure's path

Every function checks its arguments before it imports torch, and raises
:class:`kdbench.errors.KdbenchError` (one line: the problem and the fix) on bad input.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from kdbench.config import DEFAULT_RESULTS  # re-exported
from kdbench.deploy.api import export, predict, quantize  # noqa: F401 - re-exported
from kdbench.errors import KdbenchError, did_you_mean

PLOT_FORMATS = (".png", ".svg", ".pdf")
REPRO_LOG = "reproduce.jsonl"  # one record per reproduce(): command, times, run counts
KEEP_CHECKPOINTS = ("all", "best", "none")

PathLike = str | os.PathLike
RegistryArg = PathLike | Sequence[PathLike] | None  # extra registry files
if TYPE_CHECKING:
    from kdbench.config import RunSpec
    from kdbench.launch.local import LaunchSummary
    from kdbench.launch.slurm import SlurmOptions
    from kdbench.report.tables import Report as tables_Report


@dataclass
class RunSummary:
    """What :func:`run` did: how many runs it trained, found finished, or left to another
    process sharing the store, their folders and the wall time."""

    results: Path
    trained: int = 0
    finished_before: int = 0
    left_to_another_process: int = 0
    runs: list[Path] = field(default_factory=list)
    wall_s: float = 0.0

    def counts(self) -> dict[str, int]:
        """The three counts by name (the reproduce log's fields)."""
        return {"trained": self.trained, "finished_before": self.finished_before,
                "left_to_another_process": self.left_to_another_process}


def _names(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


def _seeds(value: str | int | Sequence[int]) -> list[int]:
    if isinstance(value, int):
        return [value]
    if value is None:
        raise KdbenchError("give at least one seed, e.g. 0 or 0,1,2")
    try:
        seeds = [int(s) for s in _names(value if isinstance(value, str) else map(str, value))]
    except ValueError:
        raise KdbenchError(f"seeds must be integers like 0,1,2, got {value!r}") from None
    if not seeds:
        raise KdbenchError("give at least one seed, e.g. 0 or 0,1,2")
    return seeds


def _settings(settings: Mapping[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    """``{"train.lr": 3e-4}`` or ``["train.lr=3e-4"]`` -> the nested overrides."""
    from kdbench.config import parse_set

    if isinstance(settings, Mapping):
        items = []
        for k, v in settings.items():
            if not isinstance(v, (str, int, float, bool)) and v is not None:
                v = str(v)  # a path, say
            items.append(f"{k}={json.dumps(v) if not isinstance(v, str) else v}")
        return parse_set(items)
    if isinstance(settings, str):
        settings = [settings]
    return parse_set(list(settings or []))


def _sweeps(sweeps: Mapping[str, Sequence[Any]] | Sequence[str] | None) -> list:
    from kdbench.plan import parse_sweep

    if isinstance(sweeps, Mapping):
        def values(v: Any) -> str:  # "128,256", 128 or [128, 256]
            if isinstance(v, str):
                return v
            return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

        return [parse_sweep(f"{k}={values(v)}") for k, v in sweeps.items()]
    if isinstance(sweeps, str):
        sweeps = [sweeps]
    return [parse_sweep(s) for s in sweeps or []]


def _registry(registry: RegistryArg) -> dict:
    from kdbench.registry import load_registry

    paths = [registry] if isinstance(registry, (str, os.PathLike)) else list(registry or [])
    return load_registry([Path(p) for p in paths])


def _check_threads(threads: int | None) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise KdbenchError(f"threads={threads!r}; give a whole number >= 1, or leave it out "
                           "for this process's share of the cores")


def _check_device(device: str | None) -> None:
    from kdbench.config import check_device_name

    if device is not None:
        check_device_name(device)


@dataclass
class _Plan:
    """The checked arguments of :func:`run`."""

    entries: list
    pairs: list
    overrides: dict[str, Any]
    students: list[str]
    sweeps: list
    seeds: list[int]


def _check_run(methods, dataset, data_root, students, modes, seeds, preset, results, registry,
               settings, sweeps, device) -> _Plan:
    """Every check of :func:`run`'s arguments that needs no torch: settings, registry, methods
    and their hyper-parameters, students, modes, seeds, sweeps, device name, dataset and the
    results folder."""
    from kdbench.config import BACKBONES, preset_students, resolve_config
    from kdbench.data.datasets import check_dataset
    from kdbench.files import check_writable
    from kdbench.plan import check_plan
    from kdbench.registry import select_methods

    reg = _registry(registry)
    if not _names(methods):
        raise KdbenchError("no method given; name registry methods (see `kdbench methods`) or "
                           "all")
    entries = select_methods(reg, ",".join(_names(methods)))
    overrides = _settings(settings)
    unknown = sorted(set(overrides) - {"data", "train", "teacher", "student"} - set(reg))
    if unknown:
        raise KdbenchError(
            f"unknown setting target {unknown[0]!r}"
            f"{did_you_mean(unknown[0], ['data', 'train', 'teacher', 'student', *reg])}; use "
            "data.*, train.*, teacher.*, student.* or <method>.<hyper-parameter>"
        )
    for name in set(overrides) & set(reg):
        if not isinstance(overrides[name], dict):
            raise KdbenchError(f"setting {name}=... needs a hyper-parameter: {name}.<name>=value "
                               "(see `kdbench methods`)")
    _check_device(device)
    config = resolve_config(preset, dataset, overrides)
    for section in ("teacher", "student"):
        weights = config[section]["pretrained"]
        if weights and weights != "imagenet" and not Path(weights).expanduser().is_file():
            raise KdbenchError(f"{section}.pretrained: weights file {weights} not found; give a "
                               "local .pth/.pt path, imagenet (timm's weights) or none")
    chosen = _names(students) or preset_students(preset)
    for s in chosen:
        if s not in BACKBONES:
            raise KdbenchError(f"unknown student {s!r}{did_you_mean(s, BACKBONES)}; choose from "
                               f"{', '.join(BACKBONES)}")
    wanted = _names(modes)
    bad_modes = [m for m in wanted if m not in ("rgb", "both")]
    if bad_modes or not wanted:
        raise KdbenchError(f"unknown mode {(bad_modes or [''])[0]!r}; modes are rgb, both or "
                           "rgb,both")
    seed_list = _seeds(seeds)
    pairs = [(e, m) for e in entries for m in e.modes if m == "none" or m in wanted]
    if not pairs:
        raise KdbenchError(f"no method of {methods!r} runs in modes {modes!r}")
    for e, _ in pairs:  # entry points found (not imported yet)
        e.check_entry()
    sweep_list = _sweeps(sweeps)
    check_plan(pairs, dataset, overrides, sweep_list)
    check_dataset(dataset, data_root)
    check_writable(Path(results))
    backbones = {"teacher": [config["teacher"]["backbone"]], "student": chosen}
    for section, names in backbones.items():  # before hours of data preparation
        if config[section]["pretrained"] == "imagenet":
            from kdbench.models.backbones import check_imagenet

            for name in names:
                check_imagenet(name, f"{section}.pretrained")
    return _Plan(entries, pairs, overrides, chosen, sweep_list, seed_list)


LAUNCHERS = ("inprocess", "print", "local", "slurm")


def run_name(spec: RunSpec) -> str:
    """A run's name in a plan (``--only``): ``<student>/<label>/<mode>/seed<k>``."""
    return f"{spec.student}/{spec.label}/{spec.mode}/seed{spec.seed}"


def _plan_specs(plan: _Plan, dataset: str, with_reports: bool) -> list[tuple[RunSpec, Any]]:
    """Every (run, registry entry) of a checked plan, in the order they run."""
    from kdbench.config import RunSpec
    from kdbench.plan import merge, plan_runs, report_runs

    planned = plan_runs(plan.pairs, dataset, plan.overrides, plan.sweeps)
    if with_reports:
        planned = merge(planned, report_runs(plan.entries, dataset, plan.overrides))
    return [(RunSpec(dataset, student, p.entry.name, p.mode, seed, p.hparams, p.variant),
             p.entry) for seed in plan.seeds for student in plan.students for p in planned]


def _only(specs: list[tuple[RunSpec, Any]], only: str) -> list[tuple[RunSpec, Any]]:
    from kdbench.launch.commands import TEACHER

    if only == TEACHER:
        return []
    chosen = [s for s in specs if run_name(s[0]) == only]
    if not chosen:
        names = [run_name(s) for s, _ in specs]
        raise KdbenchError(f"--only {only!r} is not a run of this plan{did_you_mean(only, names)};"
                           " `--launcher print` lists them")
    return chosen


def _launch(launcher: str, plan: _Plan, args: tuple, rest: tuple, preset: str | None,
            keep_checkpoints: str, with_reports: bool, workers: int | None,
            gpus: str | Sequence[int | str] | None,
            slurm: SlurmOptions | Mapping[str, Any] | None, progress: bool,
            cross: tuple[str, Path | None] | None = None) -> LaunchSummary:
    """The plan's runs as jobs (:mod:`kdbench.launch`), printed, run here or submitted."""
    from kdbench.launch.commands import RunArgs, plan_jobs
    from kdbench.launch.local import LaunchSummary, launch_local, usable_cores
    from kdbench.launch.slurm import SlurmLauncher, SlurmOptions
    from kdbench.progress import stdout_console

    methods, dataset, data_root, students, modes, seeds = args
    results, registry, settings, sweeps, device = rest
    gpu_list = _names(gpus)
    if preset is None:  # each job must plan the same runs, wherever it starts
        cuda = bool(gpu_list) or (device or "").startswith("cuda") or launcher == "slurm"
        preset = "paper" if cuda else "cpu"
        plan = _check_run(methods, dataset, data_root, students, modes, seeds, preset, *rest)
    run_args = RunArgs(
        methods=_names(methods), dataset=dataset,
        data_root=None if data_root is None else str(Path(data_root).resolve()),
        students=plan.students, modes=_names(modes), seeds=plan.seeds, preset=preset,
        results=str(Path(results).resolve()),
        registry=[str(Path(r).resolve()) for r in _registry_paths(registry)],
        settings=_setting_items(settings), sweeps=_sweep_items(sweeps), device=device,
        keep_checkpoints=keep_checkpoints, with_reports=with_reports,
        cross_dataset=cross[0] if cross else None,
        cross_data_root=str(cross[1].resolve()) if cross and cross[1] else None)
    out = Path(run_args.results)
    jobs = plan_jobs(run_args, [(run_name(s), out / s.relpath, s.mode != "none")
                                for s, _ in _plan_specs(plan, dataset, with_reports)])
    if launcher == "print":
        console = stdout_console()
        for job in jobs:
            console.print(job.shell(), highlight=False, soft_wrap=True, markup=False)
        return LaunchSummary(out)
    if launcher == "local":
        if workers is None:
            workers = len(gpu_list) or min(usable_cores(), 8)
        return launch_local(jobs, out, workers, gpu_list, progress)
    options = slurm if isinstance(slurm, SlurmOptions) else SlurmOptions(**dict(slurm or {}))
    return SlurmLauncher(options, out).launch(jobs)


def _registry_paths(registry: RegistryArg) -> list[PathLike]:
    if registry is None:
        return []
    if isinstance(registry, (str, Path)):
        return [registry]
    return list(registry)


def _setting_items(settings: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """``--set`` items for a job's command line."""
    if settings is None:
        return []
    if isinstance(settings, str):
        return [settings]
    if isinstance(settings, Mapping):
        return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in settings.items()]
    return [str(s) for s in settings]


def _sweep_items(sweeps: Mapping[str, Sequence[Any]] | Sequence[str] | None) -> list[str]:
    """``--sweep`` items for a job's command line."""
    if sweeps is None:
        return []
    if isinstance(sweeps, str):
        return [sweeps]
    if isinstance(sweeps, Mapping):
        return [f"{k}={v if isinstance(v, str) else ','.join(map(str, v))}"
                for k, v in sweeps.items()]
    return [str(s) for s in sweeps]


def run(
    methods: str | Sequence[str] = "all",
    dataset: str = "synthetic",
    *,
    data_root: PathLike | None = None,
    students: str | Sequence[str] | None = None,
    modes: str | Sequence[str] = ("rgb", "both"),
    seeds: str | int | Sequence[int] = (0,),
    preset: str | None = None,
    results: PathLike = DEFAULT_RESULTS,
    registry: RegistryArg = None,
    settings: Mapping[str, Any] | Sequence[str] | None = None,
    sweeps: Mapping[str, Sequence[Any]] | Sequence[str] | None = None,
    device: str | None = None,
    restart: bool = False,
    keep_checkpoints: str = "all",
    progress: bool = True,
    with_reports: bool = False,
    threads: int | None = None,
    only: str | None = None,
    launcher: str = "inprocess",
    workers: int | None = None,
    gpus: str | Sequence[int | str] | None = None,
    slurm: SlurmOptions | Mapping[str, Any] | None = None,
    cross_dataset: str | None = None,
    cross_data_root: PathLike | None = None,
) -> RunSummary | LaunchSummary:
    """Train the teacher (once per dataset and teacher config) and every planned student run:
    each method (registry name, or "all") in each of its ``modes``, with its registry variants
    and the ``sweeps`` (``{"<hyper-parameter>": [v1, v2]}``), for each student and seed.
    ``settings`` overrides the preset (``{"train.lr": 3e-4, "<method>.<name>": value}``).
    A finished run is skipped,
    an interrupted one continues; ``restart`` discards both. ``with_reports`` adds the runs the
    registry's report tables need (:func:`reproduce`). ``preset`` defaults to paper on CUDA,
    cpu otherwise. ``threads``: CPU threads of this process (default: the usable cores
    divided among the kdbench processes working on this machine, re-counted every epoch).

    ``only``: just this run of the plan (its name, ``<student>/<label>/<mode>/seed<k>``, as
    ``--launcher print`` lists them), or ``"teacher"``. ``launcher``: ``inprocess`` (one
    after the other, here), ``print`` (one command per run, teacher first; nothing runs),
    ``local`` (``workers`` processes on this machine, one per GPU of ``gpus`` or a share of
    the cores each) or ``slurm`` (submitit, ``slurm``: :class:`SlurmOptions` fields); these
    return a :class:`LaunchSummary`.

    ``cross_dataset``: also test each student on that dataset's test split (Table 7,
    ``<run>/cross/<dataset>.json``) as its run finishes, before ``keep_checkpoints`` prunes."""
    _check_threads(threads)
    if launcher not in LAUNCHERS:
        raise KdbenchError(f"unknown launcher {launcher!r}; use one of " + ", ".join(LAUNCHERS))
    if launcher != "local" and (workers is not None or _names(gpus)):
        raise KdbenchError("--workers and --gpus go with --launcher local")
    if launcher != "slurm" and slurm:
        raise KdbenchError("--slurm-* options go with --launcher slurm")
    if workers is not None and workers < 1:
        raise KdbenchError(f"--workers {workers}: give at least 1")
    if keep_checkpoints not in KEEP_CHECKPOINTS:
        raise KdbenchError(f"keep_checkpoints={keep_checkpoints!r}; use one of "
                           + ", ".join(KEEP_CHECKPOINTS))
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1") and launcher != "inprocess":
        raise KdbenchError(f"under torchrun each run is trained data-parallel by all ranks; "
                           f"drop --launcher {launcher}")
    args = (methods, dataset, data_root, students, modes, seeds)
    rest = (results, registry, settings, sweeps, device)
    plan = _check_run(*args, preset or "cpu", *rest)  # bad input answered before torch loads
    cross = _check_cross(cross_dataset, cross_data_root, dataset)
    if launcher != "inprocess":
        if only is not None or restart:
            raise KdbenchError(f"--launcher {launcher} runs every run of the plan, each as it "
                               f"stands; drop --{'only' if only is not None else 'restart'}")
        return _launch(launcher, plan, args, rest, preset, keep_checkpoints, with_reports,
                       workers, gpus, slurm, progress, cross)
    from kdbench.config import for_device, resolve_config
    from kdbench.data.datasets import open_dataset
    from kdbench.launch.commands import TEACHER
    from kdbench.progress import console
    from kdbench.threads import take_share
    from kdbench.train.runner import (
        Context,
        ensure_teacher,
        fill_teacher_cache,
        is_finished,
        pick_device,
        run_one,
        teacher_fields,
    )

    with take_share(threads) as share:  # released, threads restored, when done
        from kdbench import distributed

        torch_device = distributed.setup(pick_device(device))  # torchrun: this rank's device
        chosen = preset or ("paper" if torch_device.type == "cuda" else "cpu")
        if chosen != (preset or "cpu"):  # the GPU default: check its settings and students
            plan = _check_run(*args, chosen, *rest)
        config = for_device(resolve_config(chosen, dataset, plan.overrides), torch_device.type)
        for e, _ in plan.pairs:  # import every entry point before hours of training start
            e.resolve()
        specs = every = _plan_specs(plan, dataset, with_reports)
        if only is not None:
            specs = _only(specs, only)
        data = open_dataset(dataset, data_root, config["data"]["size"], config["data"]["frames"],
                            progress=progress)
        out = Path(results)
        n_runs = len(specs)
        where = (f"device {torch_device}" if torch_device.type == "cuda" else
                 f"device cpu, {share.threads} thread{'s' * (share.threads != 1)}")
        if distributed.active():
            where += (f" on each of {distributed.size()} ranks ({distributed.backend()}, "
                      f"global batch {config['train']['batch_size']})")
        console.print(f"kdbench run: preset [bold]{chosen}[/], dataset [bold]{dataset}[/] "
                      f"({data.root}), {where}, {n_runs} run{'s' * (n_runs != 1)}; "
                      f"results go to {out.resolve()}", highlight=False)
        ctx = Context(data, dataset, config, out, torch_device, restart, progress,
                      keep_checkpoints=keep_checkpoints, cross=cross)
        t0 = time.perf_counter()
        # the teacher is trained (or loaded) only if a distillation run is left to do
        todo = [s for s, _ in specs if s.mode != "none"
                and (restart or not is_finished(out / s.relpath))]
        if cross and any(restart or not is_finished(out / s.relpath) for s, _ in specs):
            distributed.on_main(lambda: ctx.cross_data() and None)  # bad data: before training
        teacher = ensure_teacher(ctx) if todo or only == TEACHER else None
        if teacher is not None:  # one pass of the teacher caches what every run reads
            readers = todo if only != TEACHER else [  # the teacher's job: the plan's runs
                s for s, _ in every if s.mode != "none" and not is_finished(out / s.relpath)]
            ctx.teacher_fields = teacher_fields([p for p in every if p[0] in readers], teacher)
            if only == TEACHER:
                fill_teacher_cache(ctx, teacher)
        summary = RunSummary(out, runs=[out / s.relpath for s, _ in specs])
        key = {"trained": "trained", "finished": "finished_before",
               "busy": "left_to_another_process"}
        for spec, entry in specs:
            outcome, _ = run_one(ctx, spec, entry, teacher if spec.mode != "none" else None)
            setattr(summary, key[outcome], getattr(summary, key[outcome]) + 1)
        summary.wall_s = time.perf_counter() - t0
        busy = summary.left_to_another_process
        console.print(f"trained {summary.trained}, found finished {summary.finished_before}"
                      + (f", left {busy} to another kdbench process" if busy else "")
                      + f" in {summary.wall_s:.0f} s; `kdbench table --results {results}` lists "
                      "them", highlight=False)
        return summary


# ------------------------------------------------------------------------------ reports


def runs(results: PathLike = DEFAULT_RESULTS, dataset: str | None = None,
         student: str | None = None) -> pd.DataFrame:
    """One row per run folder of the store (teachers and students, finished or not)."""
    from kdbench.report.listing import collect_runs

    df = collect_runs(Path(results))
    if df.empty:
        raise KdbenchError(f"no runs under {results}; start some with `kdbench run`")
    for col, wanted in (("dataset", dataset), ("student", student)):
        if wanted:
            df = df[df[col] == wanted]
            if df.empty:
                raise KdbenchError(f"no runs with {col} {wanted!r} under {results}")
    return df




def _declared(reg: dict, kind: str) -> list[str]:
    from kdbench.registry import report_specs

    return list(report_specs(reg, kind))


def table_kinds(registry: RegistryArg = None) -> list[str]:
    """The table kinds: the built-in ones and each sweep a registry method declares."""
    return _table_kinds(_registry(registry))


def _table_kinds(reg: dict) -> list[str]:
    return ["runs", "comparison", "ablation", *_declared(reg, "sweeps"), "teacher", "cross",
            "cost", "deploy"]


def trace_names(registry: RegistryArg = None) -> list[str]:
    """The traces registry methods declare (each a figure of records against the step)."""
    return _declared(_registry(registry), "traces")


def figure_kinds(registry: RegistryArg = None) -> list[str]:
    """The figures: each trace and sweep a registry method declares, the curves and the
    deploy figure."""
    reg = _registry(registry)
    return [*_declared(reg, "traces"), *_declared(reg, "sweeps"), "curves", "deploy"]


def _known(kind: str, kinds: list[str], what: str) -> None:
    if kind not in kinds:
        raise KdbenchError(f"unknown {what} {kind!r}{did_you_mean(kind, kinds)}; choose one of "
                           f"{', '.join(kinds)} (a registry's `reports` adds more)")


def report(kind: str = "comparison", *, results: PathLike = DEFAULT_RESULTS, metric: str = "acc",
           dataset: str | None = None, student: str | Sequence[str] | None = None,
           registry: RegistryArg = None, preset: str | None = None,
           size: int | None = None, device: str | None = None,
           measure: bool = True, ci: bool = False) -> tables_Report:
    """The table ``kind`` as a ``kdbench.report.tables.Report`` (``.markdown()``,
    ``.latex()``, ``.csv()``, ``.frame()``): mean ± std over seeds of ``metric``. ``cost``
    measures the models of ``preset`` at ``size`` on ``device``. ``ci``: the comparison's
    paired-bootstrap intervals (both - rgb) in its cells."""
    from kdbench.config import METRIC_NAMES
    from kdbench.report import tables

    reg = _registry(registry)
    _known(kind, _table_kinds(reg), "table kind")
    if kind == "runs":
        raise KdbenchError("the runs listing is a DataFrame: use kdbench.api.runs()")
    if metric not in METRIC_NAMES:
        raise KdbenchError(f"unknown metric {metric!r}{did_you_mean(metric, METRIC_NAMES)}; "
                           f"choose one of {', '.join(METRIC_NAMES)}")
    if kind == "cost":
        return _cost(preset, dataset, student, size, device, measure)
    if kind == "deploy":
        from kdbench.report.deploy import deploy_records, deploy_report

        return deploy_report(deploy_records(Path(results)))
    return tables.build(kind, runs(results, dataset, student), reg, metric, ci)


def compare(a: str, b: str, *, results: PathLike = DEFAULT_RESULTS, dataset: str | None = None,
            student: str | None = None, metrics: str | Sequence[str] = "all",
            n_boot: int = 2000) -> tables_Report:
    """Two cells of the store, ``<label>/<mode>`` each (``at/both``, ``<label>@<variant>/<mode>``,
    ``<teacher-free label>/none``): per metric, A - B over the seeds both ran, with the 95 %
    interval of a paired bootstrap over the test videos (:mod:`kdbench.report.paired`)."""
    from kdbench.config import METRIC_NAMES
    from kdbench.report.compare import compare_cells

    wanted = list(METRIC_NAMES) if metrics == "all" else _names(metrics)
    for m in wanted:
        if m not in METRIC_NAMES:
            raise KdbenchError(f"unknown metric {m!r}{did_you_mean(m, METRIC_NAMES)}; "
                               f"choose from {', '.join(METRIC_NAMES)}")
    return compare_cells(runs(results, dataset, student), a, b, wanted, n_boot)


def table(kind: str = "comparison", **options: Any) -> pd.DataFrame:
    """The table ``kind`` (see :func:`report` for the options) as a DataFrame of its cells;
    ``runs`` lists the store's run folders."""
    if kind == "runs":
        keep = {k: options[k] for k in ("results", "dataset", "student") if k in options}
        return runs(**keep)
    return report(kind, **options).frame()


def bench(preset: str | None = None, *, student: str | None = None, device: str | None = None,
          methods: str | Sequence[str] = "all", dataset: str = "synthetic",
          data_root: PathLike | None = None, registry: RegistryArg = None, steps: int = 10,
          rounds: int = 3, json_path: PathLike | None = None, threads: int | None = None,
          processes: bool = True, progress: bool = True) -> dict[str, Any]:
    """Training speed on this machine at a preset's size and batch, measured in one process:
    loader and bare-step images/s, ``loop_over_bare``, each method's ``kd_over_vanilla``
    (``live`` teacher and ``cached`` outputs), the ratios the registry declares (e.g.
    ``rotation_over_none``), peak memory and (CPU, ``processes``) one process against two
    side by side. Written to ``json_path`` too if given."""
    _check_threads(threads)
    for name, value in (("steps", steps), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KdbenchError(f"{name}={value!r}; give a whole number >= 1")
    reg = _registry(registry)
    from kdbench.config import BACKBONES, preset_students
    from kdbench.registry import select_methods

    entries = select_methods(reg, ",".join(_names(methods)) or "all")
    if student is not None and student not in BACKBONES:
        raise KdbenchError(f"unknown student {student!r}{did_you_mean(student, BACKBONES)}; "
                           f"choose one of {', '.join(BACKBONES)}")
    _check_device(device)
    if json_path is not None:
        from kdbench.files import check_writable

        check_writable(Path(json_path).resolve().parent, "the --json folder")
    import torch

    from kdbench.bench import run_bench
    from kdbench.train.runner import pick_device

    torch_device = pick_device(device)
    chosen = preset or ("paper" if torch_device.type == "cuda" else "cpu")
    preset_students(chosen)
    from kdbench.threads import usable_cores

    torch.set_num_threads(threads or usable_cores())
    result = run_bench(chosen, student or preset_students(chosen)[0], torch_device, entries, reg,
                       dataset=dataset, data_root=Path(data_root) if data_root else None,
                       steps=steps, rounds=rounds, threads_check=processes, progress=progress)
    if json_path is not None:
        from kdbench.files import atomic_write_json

        atomic_write_json(Path(json_path), result)
    return result


def _cost(preset: str | None, dataset: str | None, student: str | Sequence[str] | None,
          size: int | None,
          device: str | None, measure: bool):
    from kdbench.config import BACKBONES, preset_students, resolve_config

    _check_device(device)
    chosen = _names(student)
    for s in chosen:
        if s not in BACKBONES:
            raise KdbenchError(f"unknown student {s!r}{did_you_mean(s, BACKBONES)}; choose from "
                               f"{', '.join(BACKBONES)}")
    from kdbench.report import tables
    from kdbench.train.runner import pick_device

    torch_device = pick_device(device)
    preset = preset or ("paper" if torch_device.type == "cuda" else "cpu")
    config = resolve_config(preset, dataset or "synthetic", {})
    return tables.cost(chosen or preset_students(preset), config["teacher"],
                       size or config["data"]["size"], torch_device, measure=measure)


def plot(figure: str = "curves", *, results: PathLike = DEFAULT_RESULTS,
         out: PathLike | None = None, dataset: str | None = None, all_runs: bool = False,
         registry: RegistryArg = None) -> Path:
    """Draw ``figure`` from the store and return its path (default
    ``<results>/<figure>.png``): ``curves`` (loss and validation accuracy per epoch), a
    declared trace (e.g. a gradient-cosine trace against the step) or a declared sweep (the
    metric against the swept value). ``all_runs`` also draws the sweep and ablation variants
    in curves and traces."""
    from kdbench.report.figures import plot_curves, plot_sweep
    from kdbench.report.traces import plot_trace

    reg = _registry(registry)
    traces = _declared(reg, "traces")
    _known(figure, [*traces, *_declared(reg, "sweeps"), "curves", "deploy"], "figure")
    path = Path(out) if out else Path(results) / f"{figure}.png"
    if path.suffix.lower() not in PLOT_FORMATS:
        raise KdbenchError(f"{path}: a figure is written as {', '.join(PLOT_FORMATS)}; give "
                           "an output file name ending in one of them")
    if not Path(results).is_dir():
        raise KdbenchError(f"no result store at {results}; give results=DIR (--results), or "
                           "start runs with `kdbench run`")
    from kdbench.progress import console, stdout_console

    summary = None
    if figure in traces:
        summary = plot_trace(Path(results), figure, path, reg, dataset, all_runs)
        detail = f"{len(summary)} curve{'s' * (len(summary) != 1)}"
    elif figure == "deploy":
        from kdbench.report.deploy import deploy_records, plot_deploy

        records = deploy_records(Path(results))
        if not records:
            raise KdbenchError(f"no deploy/deploy.json in {results}; measure a student first "
                               "with `kdbench export RUN_DIR --format onnx`")
        points = plot_deploy(records, path)
        detail = f"{points} point{'s' * (points != 1)}"
    elif figure == "curves":
        lines, n = plot_curves(runs(results, dataset), path, None if all_runs else reg)
        detail = f"{lines} line{'s' * (lines != 1)}, {n} runs"
    else:
        points = plot_sweep(runs(results, dataset), reg, figure, path)
        detail = f"{points} point{'s' * (points != 1)}"
    console.print(f"wrote {path} ({detail})", highlight=False)
    if summary is not None:  # a trace: the mean of each curve, to stdout
        for _, row in summary.iterrows():
            panels = [c for c in row.index if c.startswith("mean ")]
            stdout_console().print(
                f"{row['curve']}: " + ", ".join(f"{c} {row[c]:+.4f}" for c in panels)
                + f" ({row['seeds']} seeds, {row['records']} records)", highlight=False)
    return path


def trace_means(name: str, *, results: PathLike = DEFAULT_RESULTS, dataset: str | None = None,
                all_runs: bool = False,
                registry: RegistryArg = None) -> pd.DataFrame:
    """Per curve of the trace figure ``name``: the mean of each panel over its records, with
    the number of seeds and records."""
    from kdbench.report.traces import trace_summary

    reg = _registry(registry)
    _known(name, _declared(reg, "traces"), "trace")
    return trace_summary(Path(results), name, reg, dataset, all_runs)


def evaluate(run_dirs: PathLike | Sequence[PathLike], dataset: str, *,
             data_root: PathLike | None = None, device: str | None = None,
             progress: bool = True) -> pd.DataFrame:
    """Test the students of finished runs (folders, or folders holding them) on another
    dataset's test split; writes ``<run>/cross/<dataset>.json`` (Table 7) and returns one row
    per run."""
    from kdbench.data.datasets import check_dataset
    from kdbench.train.store import finished_student_run

    folders = []
    for path in [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else run_dirs:
        path = Path(path)
        found = [path] if (path / "metrics.json").is_file() else sorted(
            p.parent for p in path.rglob("seed*/metrics.json"))
        if not found:
            raise KdbenchError(f"no run folder at or under {path}; give runs/<...>/seed<k> "
                               "folders or a folder holding them")
        folders += found
    configs = {run: finished_student_run(run)["config"]["data"] for run in folders}
    check_dataset(dataset, data_root)
    _check_device(device)
    from kdbench.data.datasets import open_dataset
    from kdbench.progress import console
    from kdbench.train.evaluate import evaluate_run
    from kdbench.train.runner import pick_device

    torch_device = pick_device(device)
    opened, rows = {}, []
    for run_dir in folders:
        key = (configs[run_dir]["size"], configs[run_dir]["frames"])
        if key not in opened:
            opened[key] = open_dataset(dataset, data_root, key[0], key[1], progress=progress,
                                       require=("test",))
        t = evaluate_run(run_dir, opened[key], dataset, torch_device)["test"]
        console.print(f"{run_dir}: on {dataset} acc {t['acc']:.4f} auc {t['auc']:.4f} "
                      f"eer {t['eer']:.4f} video-auc {t['video_auc']:.4f}", highlight=False)
        rows.append({"run": str(run_dir), "dataset": dataset, **t})
    return pd.DataFrame(rows)


def methods(registry: RegistryArg = None) -> pd.DataFrame:
    """The registered methods: name, one-line description (the class docstring's first
    line), entry point, modes, default hyper-parameters and registry file."""
    rows = []
    for e in _registry(registry).values():
        rows.append({"name": e.name, "description": _description(e), "entry": e.entry,
                     "modes": ",".join(e.modes), "defaults": e.defaults,
                     "source": str(e.source)})
    return pd.DataFrame(rows)


def _description(entry: Any) -> str:
    """The first line of the entry class's own docstring, else of its module's, read from the
    source (no import, so no torch)."""
    import ast
    import importlib.util

    try:
        target, cls_name = entry.check_entry()
        path = (entry._path(target) if target.endswith(".py")
                else Path(importlib.util.find_spec(target).origin))
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (KdbenchError, OSError, SyntaxError, AttributeError, TypeError) as exc:
        return f"(cannot read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name),
               None)
    doc = (ast.get_docstring(cls) if cls is not None else None) or ast.get_docstring(tree)
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def _check_cross(cross_dataset: str | None, cross_data_root: PathLike | None,
                 dataset: str) -> tuple[str, Path | None] | None:
    """(dataset, data root) of ``run``'s per-run cross test, checked; None without one."""
    name = _cross_dataset(cross_dataset, dataset)
    if name is None:
        if cross_data_root is not None:
            raise KdbenchError("--cross-data-root goes with --cross-dataset: name the dataset "
                               "it holds")
        return None
    from kdbench.data.datasets import check_dataset

    check_dataset(name, cross_data_root, prefix="--cross-")
    return name, None if cross_data_root is None else Path(cross_data_root)


def _cross_dataset(cross_dataset: str | None, dataset: str) -> str | None:
    """The dataset ``reproduce`` tests on for Table 7: ``auto`` is the embedded shifted domain
    after an embedded dataset, else none; ``none``: none."""
    if cross_dataset == "auto":
        from kdbench.data.synthetic.domains import DEFAULT_CROSS

        cross_dataset = DEFAULT_CROSS.get(dataset)
    return None if cross_dataset == "none" else cross_dataset


def _cross_test_rest(runs_dir: Path, dataset: str, data_root: PathLike | None,
                     device: str | None, progress: bool) -> None:
    """Test the finished students under ``runs_dir`` that have no result on ``dataset`` yet
    (each run's own job tests it as it finishes; this takes the runs finished before), and
    name those that cannot be (no best.pt left)."""
    from kdbench.progress import console
    from kdbench.report.listing import read_or_skip
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
        console.print(
            f"[yellow]Table 7 lacks {len(lost)} finished run{'s' * (len(lost) != 1)} with no "
            f"test on {dataset} and no best.pt left to test: {', '.join(names[:5])}"
            f"{f' and {len(names) - 5} more' if len(names) > 5 else ''}; train each again "
            f"with `kdbench run <this plan> --only <run> --restart --cross-dataset {dataset}"
            f"{root}` (or the whole plan with --restart)[/]", highlight=False)


def reproduce(
    preset: str | None = None,
    dataset: str = "synthetic",
    *,
    data_root: PathLike | None = None,
    cross_dataset: str | None = "auto",
    cross_data_root: PathLike | None = None,
    students: str | Sequence[str] | None = None,
    seeds: str | int | Sequence[int] = (0, 1, 2),
    results: PathLike = DEFAULT_RESULTS,
    registry: RegistryArg = None,
    settings: Mapping[str, Any] | Sequence[str] | None = None,
    device: str | None = None,
    restart: bool = False,
    keep_checkpoints: str = "all",
    progress: bool = True,
    command: str | None = None,
    threads: int | None = None,
    launcher: str = "inprocess",
    workers: int | None = None,
    gpus: str | Sequence[int | str] | None = None,
    slurm: SlurmOptions | Mapping[str, Any] | None = None,
) -> RunSummary | LaunchSummary:
    """Every run the tables need (every method in rgb and both, its variants, and the
    ablation and sweep runs its registry ``reports`` declare), then every table as
    ``<results>/tables/<kind>.md`` and every figure as ``<results>/<figure>.png``; appends a
    record of this call (``command``, times, run counts) to ``<results>/reproduce.jsonl``.
    ``cross_dataset`` (Table 7): ``"auto"`` tests on the embedded ``synthetic_c23`` after
    ``synthetic`` and on nothing after a real dataset; ``None`` or ``"none"``: no cross test.
    Each run is tested there as it finishes; runs finished before are tested at the end."""
    from kdbench.files import atomic_write_text
    from kdbench.progress import console

    t0, started_at = time.perf_counter(), _utc_now()
    cross_dataset = _cross_dataset(cross_dataset, dataset)
    summary = run("all", dataset, data_root=data_root, students=students, seeds=seeds,
                  preset=preset, results=results, registry=registry, settings=settings,
                  device=device, restart=restart, keep_checkpoints=keep_checkpoints,
                  progress=progress, with_reports=True, threads=threads, launcher=launcher,
                  workers=workers, gpus=gpus, slurm=slurm, cross_dataset=cross_dataset,
                  cross_data_root=cross_data_root)
    from kdbench import distributed

    if not distributed.is_main():  # torchrun: rank 0 writes the tables and plots
        return summary
    if launcher != "inprocess":
        from kdbench.launch.slurm import SlurmOptions

        waited = launcher == "local" or (launcher == "slurm" and dict(
            vars(slurm) if isinstance(slurm, SlurmOptions) else slurm or {}).get(
            "cluster", "slurm") != "slurm")
        if not waited or not summary.ok:
            if launcher != "print":
                console.print("the tables and plots are written once every run has finished: "
                              "run this command again then (with --launcher inprocess it "
                              "skips the finished runs)", highlight=False)
            return summary
    from kdbench.train.runner import versions

    out = Path(results)
    if cross_dataset:
        _cross_test_rest(out / "runs" / dataset, cross_dataset, cross_data_root, device,
                         progress)
    for kind in [k for k in table_kinds(registry) if k not in ("runs", "cost")]:
        atomic_write_text(out / "tables" / f"{kind}.md",
                          report(kind, results=out, registry=registry).markdown())
    cost = report("cost", preset=preset, dataset=dataset, student=students, device=device)
    atomic_write_text(out / "tables" / "cost.md", cost.markdown())
    for figure in figure_kinds(registry):
        try:
            plot(figure, results=out, registry=registry)
        except KdbenchError as exc:  # e.g. a sweep with no finished run: say so, go on
            console.print(f"[yellow]plot {figure} skipped: {exc}[/]", highlight=False)
    wall = time.perf_counter() - t0
    with open(out / REPRO_LOG, "a", encoding="utf-8") as log:  # one line per invocation
        log.write(json.dumps({
            "command": command or f"kdbench.api.reproduce(preset={preset!r}, "
                                  f"dataset={dataset!r}, students={students!r}, "
                                  f"seeds={seeds!r}, settings={settings!r}, "
                                  f"registry={registry!r})",
            "started_at": started_at, "finished_at": _utc_now(), "wall_s": round(wall, 1),
            **summary.counts(), "cpu_count": os.cpu_count(),
            "torch_threads": versions()["torch_threads"], "device": device or "auto"},
            sort_keys=True) + "\n")
    console.print(f"reproduce finished in {wall:.0f} s: tables in {out / 'tables'}, plots in "
                  f"{out}, this call logged in {out / REPRO_LOG}", highlight=False)
    summary.wall_s = wall
    return summary


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def command_line(argv: Sequence[str]) -> str:
    """``kdbench ARGV`` as one shell-quoted line (the reproduce log's ``command``)."""
    return shlex.join(["kdbench", *argv])


def synth(root: PathLike | None = None, *, seed: int = 0, workers: int = 2,
          progress: bool = True) -> Path:
    """Generate the embedded synthetic FF++-shaped video tree (default: the data cache) and
    return its folder; an existing tree with the same settings is kept."""
    from dataclasses import replace

    from kdbench.data.datasets import default_data_root
    from kdbench.data.synthetic import SynthConfig, generate
    from kdbench.progress import console

    folder = Path(root) if root else default_data_root() / "synthetic" / "videos"
    t0 = time.perf_counter()
    generate(folder, replace(SynthConfig(), seed=seed), workers=workers, progress=progress)
    console.print(f"synthetic FF++-shaped dataset at {folder} ({time.perf_counter() - t0:.1f} s)",
                  highlight=False)
    return folder


PREPARE_SOURCES = ("ff++", "celebdf", "folder", "deepfakebench")
_PREPARE_ONLY = {"compression": ("ff++", "deepfakebench"), "methods": ("ff++",),
                 "splits": ("ff++",), "frames": ("ff++", "celebdf", "deepfakebench"),
                 "val_fraction": ("celebdf",), "name": ("folder", "deepfakebench"),
                 "seed": ("celebdf", "folder"), "json": ("deepfakebench",)}
_PREPARE_NEEDS = {"deepfakebench": ("json", "name")}
_DEFAULT_DETECTOR = {"folder": "center", "deepfakebench": "full"}


def prepare(source: str, root: PathLike, out: PathLike, *, compression: str | None = None,
            methods: str | Sequence[str] | None = None, splits: PathLike | None = None,
            frames: int | None = None, size: int = 299, detector: str | None = None,
            workers: int = 2, val_fraction: float | None = None, seed: int | None = None,
            name: str | None = None, json_file: PathLike | None = None,
            progress: bool = True) -> dict[str, int]:
    """Turn a dataset as downloaded (``ff++``, ``celebdf``, a ``folder`` of real/ and fake/
    images, or ``deepfakebench``'s extracted frames listed by its rearranged ``json_file``) into a
    prepared folder of face crops; resumes in ``out``. Returns the counts (prepared, skipped,
    failed, frames; missing_frames for listed frames)."""
    from kdbench.data.prepare import FF_METHODS, ffpp_items, prepare_items, summary_line
    from kdbench.progress import console

    if source not in PREPARE_SOURCES:
        raise KdbenchError(f"unknown source {source!r}{did_you_mean(source, PREPARE_SOURCES)}; "
                           f"choose one of {', '.join(PREPARE_SOURCES)}")
    given = {"compression": compression, "methods": methods, "splits": splits,
             "frames": frames, "val_fraction": val_fraction, "name": name, "seed": seed,
             "json": json_file}
    for opt, sources in _PREPARE_ONLY.items():
        if given[opt] is not None and source not in sources:
            raise KdbenchError(f"--{opt.replace('_', '-')} does not apply to prepare {source}; "
                               f"it is an option of {' and '.join(sources)}")
    for opt in _PREPARE_NEEDS.get(source, ()):
        if given[opt] is None:
            raise KdbenchError(f"prepare {source} needs --{opt}: "
                               + {"json": "the dataset JSON that DeepfakeBench's "
                                  "preprocessing/rearrange.py wrote",
                                  "name": "the dataset name to use with --dataset"}[opt])
    root, out, seed = Path(root), Path(out), seed or 0
    noun, meta = "videos", {"source": source}
    detector = detector or _DEFAULT_DETECTOR.get(source, "dlib")
    t0 = time.perf_counter()
    if source == "deepfakebench":
        from kdbench.data.prepare_deepfakebench import deepfakebench_items
        from kdbench.data.prepare_folder import check_name

        dataset = check_name(name)
        listing = deepfakebench_items(root, Path(json_file), compression, frames)
        items = listing.items
        frames = max(len(it.frames) for it in items)
        meta.update(json=str(json_file), datasets=listing.datasets, compression=listing.compression,
                    split_overlaps=listing.overlaps, listed_without_frames=listing.empty)
        if listing.overlaps:
            both = ", ".join(f"{k}: {n}" for k, n in listing.overlaps.items())
            console.print(f"videos listed in several splits ({both}) are kept once, in test over "
                          "val over train", highlight=False)
        for split in ("train", "val", "test"):
            if not any(it.split == split for it in items):
                console.print(f"{json_file} lists no {split} videos: the prepared {dataset} "
                              "can be a cross dataset (--cross-dataset) but not trained on",
                              highlight=False)
    frames = 32 if frames is None else frames
    if source == "ff++":
        dataset = f"ff_{compression or 'c40'}"
        items = ffpp_items(root, compression or "c40", tuple(_names(methods)) or FF_METHODS,
                           Path(splits) if splits else None)
    elif source == "celebdf":
        from kdbench.data.prepare_celebdf import celebdf_items

        val_fraction = 0.1 if val_fraction is None else val_fraction
        split = celebdf_items(root, val_fraction, seed)
        dataset, items = "celebdf", split.items
        meta.update(seed=seed, val_fraction=val_fraction, val_identities=split.val_identities,
                    excluded=split.excluded)
        if split.excluded:
            console.print(f"left out {len(split.excluded)} videos that mix a train and a val "
                          "identity (listed in prepared.json)")
    elif source == "folder":
        from kdbench.data.prepare_folder import check_name, folder_items

        dataset, frames, noun = check_name(name or "folder"), 1, "images"
        items = folder_items(root, seed)
        meta.update(seed=seed)
    counts = prepare_items(items, out, dataset, frames, size, detector, workers, progress, meta)
    console.print(summary_line(counts, time.perf_counter() - t0, out, noun), highlight=False)
    return counts
