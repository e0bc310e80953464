"""The `kdbench` command: run, table, methods, synth, prepare."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from kdbench.errors import KdbenchError

DEFAULT_RESULTS = "kdbench-results"  # results/ holds the committed reference runs: named only
PRESET_STUDENTS = {
    "quick": "resnet18_thin",
    "cpu": "resnet18_thin",
    "paper": "resnet18_thin,resnet34_thin,xception",
}


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text)]
    except ValueError as exc:
        raise KdbenchError(f"--seeds expects integers like 0,1,2, got {text!r}") from exc


def cmd_run(args: argparse.Namespace) -> int:
    _run_all(args)
    return 0


class RunChecks(NamedTuple):
    """What :func:`_check_run` found valid."""

    entries: list  # selected MethodEntry
    pairs: list  # (MethodEntry, mode)
    overrides: dict[str, Any]  # parsed --set
    students: list[str]
    sweeps: list  # plan.Sweep


def _check_run(args: argparse.Namespace, preset: str) -> RunChecks:
    """Every check of `kdbench run`'s arguments that needs no torch: settings, registry,
    methods and their hyper-parameters, students, modes, seeds, sweeps, device name, dataset
    and the results folder."""
    from kdbench.config import BACKBONES, check_device_name, parse_set, resolve_config
    from kdbench.data.datasets import check_dataset
    from kdbench.plan import check_plan, parse_sweep
    from kdbench.registry import load_registry, select_methods
    from kdbench.train.store import check_writable

    registry = load_registry(args.registry)
    entries = select_methods(registry, args.methods)
    overrides = parse_set(args.set)
    unknown = sorted(set(overrides) - {"data", "train", "teacher", "student"} - set(registry))
    if unknown:
        raise KdbenchError(
            f"unknown --set target {unknown[0]!r}; use data.*, train.*, teacher.*, student.* or "
            "<method>.<hyper-parameter>"
        )
    for name in set(overrides) & set(registry):
        if not isinstance(overrides[name], dict):
            raise KdbenchError(f"--set {name}=... needs a hyper-parameter: {name}.<name>=value "
                               "(see `kdbench methods`)")
    if args.device is not None:
        check_device_name(args.device)
    config = resolve_config(preset, args.dataset, overrides)
    for section in ("teacher", "student"):
        weights = config[section]["pretrained"]
        if weights and not Path(weights).expanduser().is_file():
            raise KdbenchError(f"{section}.pretrained: weights file {weights} not found; give a "
                               "local .pth/.pt path (kdbench never downloads weights)")
    students = _csv(args.students or PRESET_STUDENTS[preset])
    for s in students:
        if s not in BACKBONES:
            raise KdbenchError(f"unknown student {s!r}; choose from {', '.join(BACKBONES)}")
    modes = _csv(args.modes)
    bad_modes = [m for m in modes if m not in ("rgb", "both")]
    if bad_modes or not modes:
        raise KdbenchError(f"unknown mode {(bad_modes or [''])[0]!r}; --modes takes rgb, both "
                           "or rgb,both")
    _seeds(args.seeds)
    pairs = [(e, m) for e in entries for m in e.modes if m == "none" or m in modes]
    if not pairs:
        raise KdbenchError(f"no method of {args.methods!r} runs in modes {args.modes!r}")
    for e, _ in pairs:  # entry points found (not imported yet), hyper-parameters typed
        e.check_entry()
    sweeps = [parse_sweep(s) for s in args.sweep]
    check_plan(pairs, args.dataset, overrides, sweeps)
    check_dataset(args.dataset, args.data_root)
    check_writable(Path(args.results))
    return RunChecks(entries, pairs, overrides, students, sweeps)


def _run_all(args: argparse.Namespace) -> dict[str, int]:
    """Every planned run; returns how many were trained, found finished, or left to another
    process."""
    checks = _check_run(args, args.preset or "cpu")  # bad input answered before torch loads
    from kdbench.config import RunSpec, resolve_config
    from kdbench.data.datasets import open_dataset
    from kdbench.plan import merge, plan_runs, report_runs
    from kdbench.progress import console
    from kdbench.train.runner import Context, ensure_teacher, is_finished, pick_device, run_one

    device = pick_device(args.device)
    preset = args.preset or ("paper" if device.type == "cuda" else "cpu")
    if preset != (args.preset or "cpu"):  # the GPU default: check its settings and students
        checks = _check_run(args, preset)
    entries, pairs, overrides, students, sweeps = checks
    config = resolve_config(preset, args.dataset, overrides)
    seeds = _seeds(args.seeds)
    for e, _ in pairs:  # import every entry point before hours of training start
        e.resolve()
    plan = plan_runs(pairs, args.dataset, overrides, sweeps)
    if getattr(args, "with_reports", False):  # `kdbench reproduce`: the tables' extra runs
        plan = merge(plan, report_runs(entries, args.dataset, overrides))
    data = open_dataset(args.dataset, args.data_root, config["data"]["size"],
                        config["data"]["frames"], progress=not args.no_progress)
    results = Path(args.results)
    n_runs = len(plan) * len(students) * len(seeds)
    console.print(f"kdbench run: preset [bold]{preset}[/], dataset [bold]{args.dataset}[/] "
                  f"({data.root}), device {device}, {n_runs} run{'s' * (n_runs != 1)}; "
                  f"results go to {results.resolve()}", highlight=False)
    ctx = Context(data, args.dataset, config, results, device, args.restart,
                  not args.no_progress)
    t0 = time.perf_counter()
    specs = [(RunSpec(args.dataset, student, p.entry.name, p.mode, seed, p.hparams, p.variant),
              p.entry) for seed in seeds for student in students for p in plan]
    # the teacher is trained (or loaded) only if a distillation run is left to do
    todo = [s for s, _ in specs if s.mode != "none"
            and (args.restart or not is_finished(ctx.results / s.relpath))]
    teacher = ensure_teacher(ctx) if todo else None
    counts = {"trained": 0, "finished_before": 0, "left_to_another_process": 0}
    key = {"trained": "trained", "finished": "finished_before", "busy": "left_to_another_process"}
    for spec, entry in specs:
        outcome, _ = run_one(ctx, spec, entry, teacher if spec.mode != "none" else None)
        counts[key[outcome]] += 1
    busy = counts["left_to_another_process"]
    console.print(f"trained {counts['trained']}, found finished {counts['finished_before']}"
                  + (f", left {busy} to another kdbench process" if busy else "")
                  + f" in {time.perf_counter() - t0:.0f} s; `kdbench table --results "
                  f"{args.results}` lists them", highlight=False)
    return counts


def cmd_table(args: argparse.Namespace) -> int:
    from rich.table import Table

    from kdbench.progress import stdout_console
    from kdbench.report.listing import COLUMNS, collect_runs

    if args.kind == "cost":  # models only: no result store needed
        return _paper_table(args, None)
    df = collect_runs(Path(args.results))
    if df.empty:
        raise KdbenchError(f"no runs under {args.results}; start some with `kdbench run`")
    for col in ("dataset", "student"):
        wanted = getattr(args, col)
        if wanted:
            df = df[df[col] == wanted]
            if df.empty:
                raise KdbenchError(f"no runs with {col} {wanted!r} under {args.results}")
    if args.kind != "runs":
        return _paper_table(args, df)
    table = Table(title=f"runs in {args.results}")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in ("acc", "auc", "eer", "video_auc",
                                                          "wall_s", "seed") else "left")
    for _, row in df.iterrows():
        cells = []
        for col in COLUMNS:
            v = row[col]
            if col == "method" and row["variant"]:
                v = f"{v}@{row['variant']}"
            if v is None or (isinstance(v, float) and v != v):
                cells.append("-")
            elif isinstance(v, float):
                whole = col in ("wall_s", "best_epoch", "seed")
                cells.append(f"{v:.0f}" if whole else f"{v:.4f}")
            else:
                cells.append(str(v))
        table.add_row(*cells)
    stdout_console().print(table)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from kdbench.progress import console, stdout_console
    from kdbench.registry import load_registry
    from kdbench.report.gradsim import PANELS, plot_gradsim

    out = Path(args.out) if args.out else Path(args.results) / f"{args.figure}.png"
    if out.suffix.lower() not in PLOT_FORMATS:
        raise KdbenchError(f"--out {out}: a figure is written as "
                           f"{', '.join(PLOT_FORMATS)}; give a file name ending in one of them")
    if not Path(args.results).is_dir():
        raise KdbenchError(f"no result store at {args.results}; give --results DIR, or start "
                           "runs with `kdbench run`")
    if args.figure != "gradsim":
        return _plot_runs(args, out)
    registry = None if args.all_runs else load_registry(args.registry)
    summary = plot_gradsim(Path(args.results), out, args.dataset, registry=registry)
    for _, row in summary.iterrows():
        stdout_console().print(
            f"{row['dataset']}/{row['student']}/{row['method']}/{row['mode']}: "
            + ", ".join(f"mean {c} {row[c]:+.4f}" for c in PANELS)
            + f" ({row['seeds']} seeds, {row['records']} records)", highlight=False)
    console.print(f"wrote {out}")
    return 0


def _paper_table(args: argparse.Namespace, df) -> int:
    from kdbench.progress import console
    from kdbench.registry import load_registry
    from kdbench.report import tables

    if args.kind == "cost":
        report = _cost_table(args)
    else:
        report = tables.build(args.kind, df, load_registry(args.registry), args.metric)
    text = report.render(args.format)
    if args.out:
        from kdbench.train.store import atomic_write_text

        atomic_write_text(Path(args.out), text)
        console.print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _plot_runs(args: argparse.Namespace, out: Path) -> int:
    from kdbench.progress import console
    from kdbench.registry import load_registry
    from kdbench.report.figures import plot_curves, plot_sweep
    from kdbench.report.listing import collect_runs

    runs = collect_runs(Path(args.results))
    if args.dataset:
        runs = runs[runs["dataset"] == args.dataset]
    if runs.empty:
        raise KdbenchError(f"no runs under {args.results}; start some with `kdbench run`")
    registry = load_registry(args.registry)
    if args.figure == "curves":
        lines, n = plot_curves(runs, out, None if args.all_runs else registry)
        console.print(f"wrote {out} ({lines} line{'s' * (lines != 1)}, {n} runs)")
    else:
        n = plot_sweep(runs, registry, args.figure, out)
        console.print(f"wrote {out} ({n} points)")
    return 0


def _cost_table(args: argparse.Namespace):
    from kdbench.config import resolve_config
    from kdbench.models.backbones import BACKBONES
    from kdbench.report import tables
    from kdbench.train.runner import pick_device

    device = pick_device(args.device)
    preset = args.preset or ("paper" if device.type == "cuda" else "cpu")
    config = resolve_config(preset, args.dataset or "synthetic", {})
    students = _csv(args.student or PRESET_STUDENTS[preset])
    for s in students:
        if s not in BACKBONES:
            raise KdbenchError(f"unknown student {s!r}; choose from {', '.join(BACKBONES)}")
    size = args.size or config["data"]["size"]
    return tables.cost(students, config["teacher"], size, device, measure=not args.no_measure)


def cmd_eval(args: argparse.Namespace) -> int:
    from kdbench.data.datasets import check_dataset
    from kdbench.train.store import finished_student_run

    runs = []
    for path in args.runs:
        path = Path(path)
        found = [path] if (path / "metrics.json").is_file() else sorted(
            p.parent for p in path.rglob("seed*/metrics.json"))
        if not found:
            raise KdbenchError(f"no run folder at or under {path}; give runs/<...>/seed<k> "
                               "folders or a folder holding them")
        runs += found
    configs = {run: finished_student_run(run)["config"]["data"] for run in runs}
    check_dataset(args.dataset, args.data_root)
    from kdbench.data.datasets import open_dataset
    from kdbench.progress import console
    from kdbench.train.evaluate import evaluate_run
    from kdbench.train.runner import pick_device

    device = pick_device(args.device)
    opened = {}
    for run in runs:
        key = (configs[run]["size"], configs[run]["frames"])
        if key not in opened:
            opened[key] = open_dataset(args.dataset, args.data_root, key[0], key[1],
                                       progress=not args.no_progress, require=("test",))
        rec = evaluate_run(run, opened[key], args.dataset, device)
        t = rec["test"]
        console.print(f"{run}: on {args.dataset} acc {t['acc']:.4f} auc {t['auc']:.4f} "
                      f"eer {t['eer']:.4f} video-auc {t['video_auc']:.4f}", highlight=False)
    return 0


PLOT_FORMATS = (".png", ".svg", ".pdf")
REPRO_TABLES = ("comparison", "ablation", "rotation", "alpha", "teacher", "cross")
REPRO_PLOTS = ("gradsim", "alpha", "rotation", "curves")
REPRO_LOG = "reproduce.jsonl"  # one record per `kdbench reproduce`: command, times, run counts


def _subcommand(name: str, *positional: str, **options: Any) -> argparse.Namespace:
    """`kdbench NAME POSITIONAL --option value ...` parsed by the real parser, so the options a
    command gains later get their defaults (None/False: left out; True: a flag; a list: the
    option repeated)."""
    argv = [name, *positional]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is True:
                argv.append(flag)
            elif v is not None and v is not False:
                argv += [flag, str(v)]
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Every run the paper's tables need, then every table (md) and plot (png) in --results."""
    from kdbench.progress import console
    from kdbench.registry import load_registry
    from kdbench.report import tables
    from kdbench.report.listing import collect_runs
    from kdbench.train.runner import utc_now, versions
    from kdbench.train.store import atomic_write_text

    t0, started_at = time.perf_counter(), utc_now()
    if args.cross_dataset:  # a typo here would otherwise surface after hours of training
        from kdbench.data.datasets import check_dataset

        check_dataset(args.cross_dataset, args.cross_data_root)
    run_args = _subcommand(
        "run", methods="all", dataset=args.dataset, data_root=args.data_root,
        students=args.students, modes="rgb,both", seeds=args.seeds, preset=args.preset,
        results=args.results, registry=args.registry, set=args.set, device=args.device,
        restart=args.restart, no_progress=args.no_progress)
    run_args.with_reports = True  # the default plan plus the runs the tables need
    counts = _run_all(run_args)
    if args.cross_dataset:
        cmd_eval(_subcommand("eval", str(Path(args.results) / "runs" / args.dataset),
                             dataset=args.cross_dataset, data_root=args.cross_data_root,
                             device=args.device, no_progress=args.no_progress))
    out = Path(args.results)
    runs = collect_runs(out)
    registry = load_registry(args.registry)
    for kind in REPRO_TABLES:
        report = tables.build(kind, runs, registry)
        atomic_write_text(out / "tables" / f"{kind}.md", report.markdown())
    cost_args = _subcommand("table", kind="cost", device=args.device, preset=args.preset,
                            dataset=args.dataset, student=args.students)
    atomic_write_text(out / "tables" / "cost.md", _cost_table(cost_args).markdown())
    for figure in REPRO_PLOTS:
        try:
            cmd_plot(_subcommand("plot", figure, results=args.results,
                                 out=out / f"{figure}.png", registry=args.registry))
        except KdbenchError as exc:  # e.g. a sweep with no finished run: say so, go on
            console.print(f"[yellow]plot {figure} skipped: {exc}[/]", highlight=False)
    wall = time.perf_counter() - t0
    with open(out / REPRO_LOG, "a", encoding="utf-8") as log:  # one line per invocation
        log.write(json.dumps({
            "command": shlex.join(["kdbench", *args.argv]), "started_at": started_at,
            "finished_at": utc_now(), "wall_s": round(wall, 1), **counts,
            "cpu_count": os.cpu_count(), "torch_threads": versions()["torch_threads"],
            "device": args.device or "auto"}, sort_keys=True) + "\n")
    console.print(f"reproduce finished in {wall:.0f} s: tables in {out / 'tables'}, plots in "
                  f"{out}, this invocation logged in {out / REPRO_LOG}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from rich.table import Table

    from kdbench.progress import stdout_console
    from kdbench.registry import load_registry

    table = Table(title="registered methods")
    for col in ("name", "entry", "modes", "defaults", "source"):
        table.add_column(col)
    for e in load_registry(args.registry).values():
        table.add_row(e.name, e.entry, ",".join(e.modes), str(e.defaults), str(e.source))
    stdout_console().print(table)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from kdbench.data.datasets import default_data_root
    from kdbench.data.synthetic import SynthConfig, generate
    from kdbench.progress import console

    root = Path(args.root) if args.root else default_data_root() / "synthetic" / "videos"
    t0 = time.perf_counter()
    generate(root, replace(SynthConfig(), seed=args.seed), workers=args.workers,
             progress=not args.no_progress)
    console.print(f"synthetic FF++-shaped dataset at {root} ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from kdbench.data.prepare import FF_METHODS, ffpp_items, prepare_items, summary_line
    from kdbench.progress import console

    only = {"compression": ("ff++",), "methods": ("ff++",), "splits": ("ff++",),
            "frames": ("ff++", "celebdf"), "val_fraction": ("celebdf",), "name": ("folder",),
            "seed": ("celebdf", "folder")}
    for opt, sources in only.items():
        if getattr(args, opt) is not None and args.source not in sources:
            raise KdbenchError(f"--{opt.replace('_', '-')} does not apply to prepare "
                               f"{args.source}; it is an option of {' and '.join(sources)}")
    root, out, seed = Path(args.root), Path(args.out), args.seed or 0
    frames = 32 if args.frames is None else args.frames
    noun, meta = "videos", {"source": args.source}
    detector = args.detector or ("center" if args.source == "folder" else "dlib")
    t0 = time.perf_counter()
    if args.source == "ff++":
        methods = tuple(_csv(args.methods)) if args.methods else FF_METHODS
        dataset = f"ff_{args.compression or 'c40'}"
        items = ffpp_items(root, args.compression or "c40", methods,
                           Path(args.splits) if args.splits else None)
    elif args.source == "celebdf":
        from kdbench.data.prepare_celebdf import celebdf_items

        val_fraction = 0.1 if args.val_fraction is None else args.val_fraction
        split = celebdf_items(root, val_fraction, seed)
        dataset, items = "celebdf", split.items
        meta.update(seed=seed, val_fraction=val_fraction, val_identities=split.val_identities,
                    excluded=split.excluded)
        if split.excluded:
            console.print(f"left out {len(split.excluded)} videos that mix a train and a val "
                          "identity (listed in prepared.json)")
    else:
        from kdbench.data.prepare_folder import check_name, folder_items

        dataset, frames, noun = check_name(args.name or "folder"), 1, "images"
        items = folder_items(root, seed)
        meta.update(seed=seed)
    counts = prepare_items(items, out, dataset, frames, args.size, detector, args.workers,
                           not args.no_progress, meta)
    console.print(summary_line(counts, time.perf_counter() - t0, out, noun), highlight=False)
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line: what is wrong and where the help is."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"kdbench: error: {message} (see `{self.prog} --help`)\n")


def _restart_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--restart", action="store_true",
                        help="discard the planned runs' progress and results (finished or not) "
                        "and train them again; the teacher is kept (without this flag a run "
                        "continues from its last.pt and a finished run is skipped)")
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)  # the default


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="kdbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train the teacher (once) and the students")
    run.add_argument("--methods", default="all", help="comma list of registry names, or all")
    run.add_argument("--dataset", default="synthetic")
    run.add_argument("--data-root", type=Path, default=None,
                     help="prepared folder (real datasets) or synthetic cache folder")
    run.add_argument("--students", default=None, help="comma list (default: the preset's)")
    run.add_argument("--modes", default="rgb,both")
    run.add_argument("--seeds", default="0")
    run.add_argument("--preset", choices=("quick", "cpu", "paper"), default=None,
                     help="default: paper on CUDA, cpu otherwise")
    run.add_argument("--results", default=DEFAULT_RESULTS,
                     help=f"result store (default: ./{DEFAULT_RESULTS})")
    run.add_argument("--registry", type=Path, action="append", default=[],
                     help="extra registry YAML adding or overriding methods (repeatable)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting, e.g. train.lr=0.001 or at.beta=500")
    run.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                     help="one run per value of a method hyper-parameter, e.g. d=128,256 or "
                     "alpha=1,10,100 (repeatable: all combinations)")
    run.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: auto)")
    _restart_options(run)
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=cmd_run)

    table = sub.add_parser("table", help="the runs of a result store, or a paper table")
    table.add_argument("--kind", default="runs",
                       choices=("runs", "comparison", "ablation", "rotation", "alpha", "teacher",
                                "cross", "cost"),
                       help="runs: every run folder; comparison: Table 3; ablation: Table 6; "
                       "rotation: Table 5; alpha: Fig. 3; teacher: Table 4; cross: Table 7 "
                       "(mean ± std); cost: Table 1 (params, GFLOPs, measured images/s)")
    table.add_argument("--results", default=DEFAULT_RESULTS)
    table.add_argument("--format", choices=("md", "latex", "csv"), default="md")
    table.add_argument("--metric", choices=("acc", "auc", "eer", "video_auc"), default="acc")
    table.add_argument("--dataset", default=None)
    table.add_argument("--student", default=None)
    table.add_argument("--registry", type=Path, action="append", default=[],
                       help="user registry (its methods' column order)")
    table.add_argument("--out", default=None, help="write to this file instead of stdout")
    table.add_argument("--preset", choices=("quick", "cpu", "paper"), default=None,
                       help="cost: the resolution, students and teacher of this preset")
    table.add_argument("--size", type=_at_least(8), default=None, help="cost: input size override")
    table.add_argument("--device", default=None, help="cost: where images/s is measured")
    table.add_argument("--no-measure", action="store_true", help="cost: skip the timing")
    table.set_defaults(func=cmd_table)

    plot = sub.add_parser("plot", help="figures from the result store")
    plot.add_argument("figure", choices=("gradsim", "alpha", "rotation", "curves"),
                      help="gradsim: Fig. 4; alpha: Fig. 3; rotation: accuracy vs d (Table 5); "
                      "curves: train loss / val acc per epoch of every run")
    plot.add_argument("--results", default=DEFAULT_RESULTS)
    plot.add_argument("--dataset", default=None, help="only this dataset's runs")
    plot.add_argument("--out", default=None,
                      help="PNG, SVG or PDF path (default: <results>/<figure>.png)")
    plot.add_argument("--all-runs", action="store_true",
                      help="gradsim, curves: also the sweep and ablation variants (default: "
                      "the runs of the default plan, i.e. each method and its registry variants)")
    plot.add_argument("--registry", type=Path, action="append", default=[],
                      help="extra registry YAML (repeatable)")
    plot.set_defaults(func=cmd_plot)

    rep = sub.add_parser("reproduce", help="every run the paper's tables need, then the tables "
                         "(md) and plots (png)")
    rep.add_argument("--preset", choices=("quick", "cpu", "paper"), default=None)
    rep.add_argument("--dataset", default="synthetic")
    rep.add_argument("--data-root", type=Path, default=None)
    rep.add_argument("--cross-dataset", default=None, help="also test every run on this one")
    rep.add_argument("--cross-data-root", type=Path, default=None)
    rep.add_argument("--students", default=None)
    rep.add_argument("--seeds", default="0,1,2")
    rep.add_argument("--results", default=DEFAULT_RESULTS)
    rep.add_argument("--registry", type=Path, action="append", default=[])
    rep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    rep.add_argument("--device", default=None)
    _restart_options(rep)
    rep.add_argument("--no-progress", action="store_true")
    rep.set_defaults(func=cmd_reproduce)

    ev = sub.add_parser("eval", help="test trained students on another dataset (Table 7)")
    ev.add_argument("runs", nargs="+", help="run folders (runs/.../seed<k>) or folders above")
    ev.add_argument("--dataset", required=True, help="the dataset to test on")
    ev.add_argument("--data-root", type=Path, default=None)
    ev.add_argument("--device", default=None)
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=cmd_eval)

    methods = sub.add_parser("methods", help="list the registered methods")
    methods.add_argument("--registry", type=Path, action="append", default=[])
    methods.set_defaults(func=cmd_methods)

    synth = sub.add_parser("synth", help="generate the embedded synthetic forgery videos")
    synth.add_argument("--root", default=None)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=_at_least(1), default=2)
    synth.add_argument("--no-progress", action="store_true")
    synth.set_defaults(func=cmd_synth)

    prep = sub.add_parser("prepare", help="videos or images -> face crops + index")
    prep.add_argument("source", choices=("ff++", "celebdf", "folder"),
                      help="ff++: FaceForensics++; celebdf: Celeb-DF v2; folder: real/ and "
                      "fake/ image folders")
    prep.add_argument("--root", required=True, help="the dataset as downloaded")
    prep.add_argument("--out", required=True, help="prepared folder (resumes if present)")
    prep.add_argument("--compression", default=None, choices=("c40", "c23", "raw"),
                      help="ff++ (default c40)")
    prep.add_argument("--methods", default=None, help="ff++: comma list of manipulations")
    prep.add_argument("--splits", default=None, help="ff++: folder of train/val/test.json")
    prep.add_argument("--frames", type=_at_least(1), default=None,
                      help="frames per video (default 32; images have one)")
    prep.add_argument("--size", type=_at_least(8), default=299)
    prep.add_argument("--detector", default=None,
                      help="dlib (default for ff++, celebdf) or center (pre-cropped data; "
                      "default for folder)")
    prep.add_argument("--workers", type=_at_least(0), default=2)
    prep.add_argument("--val-fraction", type=float, default=None,
                      help="celebdf: share of identities held out for val (default 0.1)")
    prep.add_argument("--seed", type=int, default=None, help="celebdf, folder: split seed (0)")
    prep.add_argument("--name", default=None, help="folder: dataset name (default folder)")
    prep.add_argument("--no-progress", action="store_true")
    prep.set_defaults(func=cmd_prepare)
    return p


def _log_to_stderr() -> None:
    """kdbench's log records on stderr: rich on a terminal, plain unwrapped lines otherwise
    (so a path in a log file stays on one line for grep)."""
    log = logging.getLogger("kdbench")
    for handler in [h for h in log.handlers if getattr(h, "kdbench", False)]:
        log.removeHandler(handler)
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        from kdbench.progress import console

        handler: logging.Handler = RichHandler(console=console, show_time=False,
                                               show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.kdbench = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    """The `kdbench` command; returns its exit status (2 for bad input, one line on stderr)."""
    _log_to_stderr()
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or an argument error (2, one line)
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = argv  # the command line as given, for the reproduce log
    if getattr(args, "resume", False):
        print("kdbench: note: --resume is the default now (an unfinished run always continues; "
              "--restart discards it)", file=sys.stderr)
    try:
        return args.func(args)
    except KdbenchError as exc:
        print(f"kdbench: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `kdbench table | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # disk full, permission denied, ...: say which file
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"kdbench: error: {exc.strerror or exc}{where}; finished runs and epochs are kept "
              "- free space or fix the permissions, then run the same command again",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdbench: interrupted; finished epochs are kept - run the same command again to "
              "continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
