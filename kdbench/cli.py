"""The `kdbench` command: parses the arguments and calls :mod:`kdbench.api`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from kdbench import __version__
from kdbench.config import DEFAULT_RESULTS, METRIC_NAMES
from kdbench.errors import KdbenchError


def cmd_run(args: argparse.Namespace) -> int:
    from kdbench import api

    summary = api.run(
        args.methods, args.dataset, data_root=args.data_root, students=args.students,
        modes=args.modes, seeds=args.seeds, preset=args.preset, results=args.results,
        registry=args.registry, settings=args.set, sweeps=args.sweep, device=args.device,
        restart=args.restart, keep_checkpoints=args.keep_checkpoints,
        progress=not args.no_progress, threads=args.threads, with_reports=args.with_reports,
        only=args.only, cross_dataset=args.cross_dataset, cross_data_root=args.cross_data_root,
        **_launcher_args(args))
    return _launch_status(summary)


def _launcher_args(args: argparse.Namespace) -> dict:
    slurm = {"partition": args.slurm_partition, "gpus_per_job": args.slurm_gpus_per_job,
             "time_min": args.slurm_time, "max_parallel": args.slurm_max_parallel,
             "folder": args.slurm_folder, "cluster": args.slurm_cluster}
    given = {k: v for k, v in slurm.items() if v is not None}
    return {"launcher": args.launcher, "workers": args.workers, "gpus": args.gpus,
            "slurm": given or None}


def _launch_status(summary) -> int:
    """1 when a launched run failed (each was reported with its log), else 0."""
    from kdbench.progress import console

    failed = getattr(summary, "failed", [])
    if hasattr(summary, "job_ids") and summary.wall_s:
        console.print(f"launcher: trained {summary.trained}, found finished "
                      f"{summary.finished_before}, failed {len(failed)}"
                      + (f", not started {len(summary.skipped)}" if summary.skipped else "")
                      + f" in {summary.wall_s:.0f} s", highlight=False)
    return 1 if failed or getattr(summary, "skipped", []) else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from kdbench import api
    from kdbench.bench import bench_table
    from kdbench.progress import stdout_console

    result = api.bench(args.preset, student=args.student, device=args.device,
                       methods=args.methods, dataset=args.dataset, data_root=args.data_root,
                       registry=args.registry, steps=args.steps, rounds=args.rounds,
                       json_path=args.json, threads=args.threads,
                       processes=not args.no_processes, progress=not args.no_progress)
    stdout_console().print(bench_table(result))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from kdbench import api

    api.reproduce(args.preset, args.dataset, data_root=args.data_root,
                  cross_dataset=args.cross_dataset, cross_data_root=args.cross_data_root,
                  students=args.students, seeds=args.seeds, results=args.results,
                  registry=args.registry, settings=args.set, device=args.device,
                  restart=args.restart, keep_checkpoints=args.keep_checkpoints,
                  progress=not args.no_progress, command=api.command_line(args.argv),
                  threads=args.threads, **_launcher_args(args))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from kdbench import api

    report = api.compare(args.a, args.b, results=args.results, dataset=args.dataset,
                         student=args.student, metrics=args.metric, n_boot=args.resamples)
    print(report.markdown())
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from kdbench import api
    from kdbench.progress import console

    if args.kind == "runs":
        _print_runs(api.runs(args.results, args.dataset, args.student), args.results)
        return 0
    report = api.report(args.kind, results=args.results, metric=args.metric,
                        dataset=args.dataset, student=args.student, registry=args.registry,
                        preset=args.preset, size=args.size, device=args.device,
                        measure=not args.no_measure, ci=args.ci)
    text = report.render(args.format)
    if args.out:
        from kdbench.files import atomic_write_text

        atomic_write_text(Path(args.out), text)
        console.print(f"wrote {args.out}", highlight=False)
    else:
        sys.stdout.write(text)
    return 0


def _print_runs(df, results: str) -> None:
    from rich.table import Table

    from kdbench.progress import stdout_console
    from kdbench.report.listing import COLUMNS

    table = Table(title=f"runs in {results}")
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


def cmd_plot(args: argparse.Namespace) -> int:
    from kdbench import api

    options = {"results": args.results, "dataset": args.dataset, "all_runs": args.all_runs,
               "registry": args.registry}
    api.plot(args.figure, out=args.out, **options)  # a trace's curve means go to stdout
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from kdbench import api

    api.evaluate(args.runs, args.dataset, data_root=args.data_root, device=args.device,
                 progress=not args.no_progress)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from kdbench import api
    from kdbench.deploy.score_table import print_scores, write_scores

    scores, student = api.predict(args.inputs, run=args.run, checkpoint=args.checkpoint,
                                  student=args.student, size=args.size, frames=args.frames,
                                  detector=args.detector, agg=args.agg, device=args.device,
                                  progress=not args.no_progress)
    for path, fmt in ((args.json, "json"), (args.csv, "csv")):
        if path:
            write_scores(scores, Path(path), fmt, student)
    return print_scores(scores, student)


def cmd_export(args: argparse.Namespace) -> int:
    from kdbench import api

    api.export(args.run, format=args.format, data_root=args.data_root, threads=args.threads,
               teacher=not args.no_teacher)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from kdbench import api

    if not args.int8:
        raise KdbenchError("say the precision: `kdbench quantize RUN_DIR --int8` (the only one "
                           "so far)")
    api.quantize(args.run, calib=args.calib, data_root=args.data_root, threads=args.threads)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from rich.table import Table

    from kdbench import api
    from kdbench.progress import stdout_console

    table = Table(title="registered methods")
    for col in ("name", "description", "modes", "defaults", "entry", "source"):
        table.add_column(col)
    for _, row in api.methods(args.registry).iterrows():
        table.add_row(row["name"], row["description"], row["modes"], str(row["defaults"]),
                      row["entry"], row["source"])
    stdout_console().print(table)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from kdbench import api

    api.synth(args.root, seed=args.seed, workers=args.workers, progress=not args.no_progress)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from kdbench import api

    api.prepare(args.source, args.root, args.out, compression=args.compression,
                methods=args.methods, splits=args.splits, frames=args.frames, size=args.size,
                detector=args.detector, workers=args.workers, val_fraction=args.val_fraction,
                seed=args.seed, name=args.name, json_file=args.json,
                progress=not args.no_progress)
    return 0


# ------------------------------------------------------------------------------ the parser


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where X says something the help does not already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in (
                action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (what is wrong and where the help is), and every
    option's default in its help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _DefaultsHelp)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"kdbench: error: {message} (see `{self.prog} --help`)\n")


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


def _common(parser: argparse.ArgumentParser, *, results: bool = True, registry: bool = True,
            device: bool = False, progress: bool = False, data: bool = False) -> None:
    """The options several subcommands share, with one help text each."""
    if data:
        parser.add_argument("--dataset", default="synthetic",
                            help="synthetic (embedded, no download), ff_c40, ff_c23, ff_raw, "
                            "celebdf, folder, or the --name of a prepared folder")
        parser.add_argument("--data-root", type=Path, default=None,
                            help="prepared folder of a real dataset, or where to keep the "
                            "synthetic one (default for synthetic: $KDBENCH_DATA or "
                            "~/.cache/kdbench)")
    if results:
        parser.add_argument("--results", default=DEFAULT_RESULTS,
                            help="result store folder (results/ is the committed reference "
                            "store, written only when named)")
    if registry:
        parser.add_argument("--registry", type=Path, action="append", default=[],
                            help="extra registry YAML adding or overriding methods "
                            "(repeatable)")
    if device:
        parser.add_argument("--device", default=None,
                            help="cpu, cuda or cuda:N (default: cuda when there is one)")
    if progress:
        parser.add_argument("--no-progress", action="store_true",
                            help="no progress bars (they show on a terminal only)")


def _threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=_at_least(1), default=None,
                        help="CPU threads of this process (default: the usable cores divided "
                        "among the kdbench processes working on this machine)")


def _training(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--students", default=None,
                        help="comma list of resnet18_thin, resnet34_thin, xception (default: "
                        "the preset's)")
    parser.add_argument("--preset", choices=("quick", "cpu", "paper"), default=None,
                        help="quick: smoke size; cpu: 64 px; paper: the paper's setting "
                        "(default: paper on CUDA, cpu otherwise)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. train.lr=3e-4, or a method's "
                        "hyper-parameter as <method>.<name>=value (repeatable; typed like the "
                        "default; `kdbench methods` lists them)")
    parser.add_argument("--tensorboard", action="append_const", dest="set",
                        const="train.tensorboard=true",
                        help="a TensorBoard event file in each run folder (pip install "
                        "'kdbench[tb]'; then tensorboard --logdir RESULTS)")
    parser.add_argument("--restart", action="store_true",
                        help="discard the planned runs' progress and results (finished or not) "
                        "and train them again; the teacher is kept (without it a run continues "
                        "from its last.pt and a finished run is skipped)")
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)  # the default
    _threads(parser)
    parser.add_argument("--keep-checkpoints", choices=("all", "best", "none"), default="all",
                        help="checkpoints kept once a run is finished: all (best.pt and "
                        "last.pt), best (best.pt, needed by `kdbench eval`) or none")


def _deployed_run(parser: argparse.ArgumentParser) -> None:
    """export and quantize: the run folder, its data and the threads the timing uses."""
    parser.add_argument("run", type=Path, help="a finished run folder (runs/.../seed<k>)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="prepared folder of the run's dataset (default: as for kdbench run)")
    _threads(parser)


def _launchers(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("launchers (docs: README, Running at scale)")
    g.add_argument("--launcher", choices=("inprocess", "print", "local", "slurm"),
                   default="inprocess", help="inprocess: the runs one after the other here; "
                   "print: one command per run, teacher first; local: worker processes on this "
                   "machine; slurm: submitit jobs")
    g.add_argument("--workers", type=_at_least(1), default=None,
                   help="local: worker processes (default: one per GPU of --gpus, or the usable "
                   "cores up to 8, each with its share of the threads)")
    g.add_argument("--gpus", default=None, help="local: comma list of GPU ids, one worker "
                   "each in turn (CUDA_VISIBLE_DEVICES)")
    g.add_argument("--slurm-partition", default=None, help="slurm: the partition")
    g.add_argument("--slurm-gpus-per-job", type=_at_least(0), default=None,
                   help="slurm: GPUs per job (1)")
    g.add_argument("--slurm-time", type=_at_least(1), default=None, metavar="MINUTES",
                   help="slurm: time limit per job in minutes (1440); a job that reaches it "
                   "is requeued and continues from its last.pt")
    g.add_argument("--slurm-max-parallel", type=_at_least(1), default=None,
                   help="slurm: runs of the job array at once (16)")
    g.add_argument("--slurm-folder", default=None,
                   help="slurm: submitit's folder of job scripts and logs (<results>/slurm)")
    g.add_argument("--slurm-cluster", choices=("slurm", "local", "debug"), default=None,
                   help="slurm: local or debug runs the same submitit jobs on this machine "
                   "(default: slurm)")


def build_parser() -> argparse.ArgumentParser:
    """The `kdbench` argument parser."""
    p = Parser(prog="kdbench", description="A knowledge-distillation benchmark suite for "
               "efficient facial forgery detection: a dual-branch RGB + frequency teacher "
               "distilled into small students by any registered method.")
    p.add_argument("--version", action="version", version=f"kdbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train the teacher (once) and the students")
    run.add_argument("--methods", default="all", help="comma list of registry names, or all")
    _common(run, data=True, device=True, progress=True)
    run.add_argument("--modes", default="rgb,both",
                     help="rgb (RGB branch only), both (RGB and frequency branches), or rgb,both")
    run.add_argument("--seeds", default="0", help="comma list of seeds, e.g. 0,1,2")
    run.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                     help="one run per value of a method hyper-parameter, as <name>=v1,v2 "
                     "(repeatable: all combinations)")
    _training(run)
    run.add_argument("--with-reports", action="store_true",
                     help="also the runs the registry's report tables need (as reproduce)")
    run.add_argument("--only", default=None, metavar="RUN",
                     help="just this run of the plan (<student>/<label>/<mode>/seed<k>, as "
                     "--launcher print lists them), or teacher")
    run.add_argument("--cross-dataset", default=None, metavar="DATASET",
                     help="also test each student on this dataset's test split as its run "
                     "finishes (Table 7), e.g. synthetic_c23")
    run.add_argument("--cross-data-root", type=Path, default=None,
                     help="prepared folder of the cross dataset")
    _launchers(run)
    run.set_defaults(func=cmd_run)

    table = sub.add_parser("table", help="the runs of a result store, or a paper table")
    table.add_argument("--kind", default="runs",
                       help="runs: every run folder; comparison: Table 3; ablation: Table 6; "
                       "teacher: Table 4; cross: Table 7; cost: Table 1 (params, GFLOPs, "
                       "images/s); deploy: exported students' size, CPU latency and accuracy "
                       "per format; or a sweep a registry method declares (`kdbench table "
                       "--kind x` lists them)")
    _common(table, device=True)
    table.add_argument("--format", choices=("md", "latex", "csv"), default="md",
                       help="output format")
    table.add_argument("--metric", choices=METRIC_NAMES, default="acc",
                       help="the metric in the cells")
    table.add_argument("--dataset", default=None, help="only this dataset's runs")
    table.add_argument("--student", default=None, help="only this student's runs")
    table.add_argument("--out", default=None, help="write to this file instead of stdout")
    table.add_argument("--preset", choices=("quick", "cpu", "paper"), default=None,
                       help="cost: the resolution, students and teacher of this preset")
    table.add_argument("--size", type=_at_least(8), default=None,
                       help="cost: input size (default: the preset's)")
    table.add_argument("--no-measure", action="store_true", help="cost: skip the timing")
    table.add_argument("--ci", action="store_true",
                       help="comparison: print both - rgb with its 95%% paired-bootstrap interval")
    table.set_defaults(func=cmd_table)

    cmp_ = sub.add_parser("compare", help="two cells of the store: each metric's paired "
                          "difference with a 95%% bootstrap interval")
    cmp_.add_argument("a", help="<label>/<mode>, e.g. at/both")
    cmp_.add_argument("b", help="<label>/<mode>, e.g. at/rgb, or a teacher-free one with mode none")
    _common(cmp_, registry=False)
    cmp_.add_argument("--dataset", default=None, help="only this dataset's runs")
    cmp_.add_argument("--student", default=None, help="only this student's runs")
    cmp_.add_argument("--metric", default="all", help="comma list of metrics (default all)")
    cmp_.add_argument("--resamples", type=_at_least(100), default=2000,
                      help="bootstrap resamples (default 2000)")
    cmp_.set_defaults(func=cmd_compare)

    plot = sub.add_parser("plot", help="figures from the result store")
    plot.add_argument("figure", help="curves: train loss and val acc per epoch; deploy: AUC "
                      "against CPU latency of exported students; or a trace or sweep a registry "
                      "method declares (`kdbench plot x` lists them)")
    _common(plot)
    plot.add_argument("--dataset", default=None, help="only this dataset's runs")
    plot.add_argument("--out", default=None,
                      help="PNG, SVG or PDF path (default: <results>/<figure>.png)")
    plot.add_argument("--all-runs", action="store_true",
                      help="curves and traces: also the sweep and ablation variants (default: "
                      "the runs of the default plan, i.e. each method and its registry "
                      "variants)")
    plot.set_defaults(func=cmd_plot)

    rep = sub.add_parser("reproduce", help="every run the paper's tables need, then the "
                         "tables (md) and plots (png)")
    _common(rep, data=True, device=True, progress=True)
    rep.add_argument("--cross-dataset", default="auto",
                     help="also test every run on this dataset (Table 7); default auto: "
                     "synthetic_c23 after synthetic, none after a real dataset; none: skip")
    rep.add_argument("--cross-data-root", type=Path, default=None,
                     help="prepared folder of the cross dataset")
    rep.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    _training(rep)
    _launchers(rep)
    rep.set_defaults(func=cmd_reproduce)

    ev = sub.add_parser("eval", help="test trained students on another dataset (Table 7)")
    ev.add_argument("runs", nargs="+", help="run folders (runs/.../seed<k>) or folders above")
    ev.add_argument("--dataset", required=True, help="the dataset to test on")
    ev.add_argument("--data-root", type=Path, default=None,
                    help="prepared folder of that dataset")
    _common(ev, results=False, registry=False, device=True, progress=True)
    ev.set_defaults(func=cmd_eval)

    bench = sub.add_parser("bench", help="training speed on this machine: loader, step, loop, "
                           "each method over the teacher-free baseline (live teacher, cached), "
                           "threads")
    bench.add_argument("--preset", choices=("quick", "cpu", "paper"), default=None,
                       help="size and batch of this preset (default: paper on CUDA, cpu "
                       "otherwise)")
    bench.add_argument("--student", default=None,
                       help="resnet18_thin, resnet34_thin or xception (default: the preset's "
                       "first)")
    bench.add_argument("--methods", default="all", help="comma list of registry names, or all")
    _common(bench, results=False, device=True, progress=True, data=True)
    bench.add_argument("--steps", type=_at_least(1), default=10, help="train steps per pass")
    bench.add_argument("--rounds", type=_at_least(1), default=3,
                       help="timed passes of each configuration (after one warm-up pass)")
    bench.add_argument("--json", default=None, metavar="FILE", help="also write the figures "
                       "as JSON (keys: loop_over_bare, kd_over_vanilla, rotation_over_none, "
                       "device, preset, ...)")
    bench.add_argument("--no-processes", action="store_true",
                       help="CPU: skip the one-process-against-two measurement")
    _threads(bench)
    bench.set_defaults(func=cmd_bench)

    pred = sub.add_parser("predict", help="a trained student's fake score for video and image "
                          "files (face crops made as `kdbench prepare` makes them)")
    pred.add_argument("inputs", nargs="+", help="video files, image files or folders of them "
                      "(searched recursively)")
    pred.add_argument("--run", type=Path, default=None,
                      help="a finished run folder of the store (runs/.../seed<k>)")
    pred.add_argument("--checkpoint", type=Path, default=None,
                      help="instead of --run: a best.pt or deploy/student.pt (with --student)")
    pred.add_argument("--student", default=None,
                      help="with --checkpoint: resnet18_thin, resnet34_thin or xception")
    pred.add_argument("--size", type=_at_least(8), default=None,
                      help="with --checkpoint: input and face crop size (default 64)")
    pred.add_argument("--frames", type=_at_least(1), default=None,
                      help="evenly spaced frames per video (default: the run's preset)")
    pred.add_argument("--detector", default=None, help="dlib, center or full (default: the "
                      "run's preparation; dlib for a bare checkpoint)")
    pred.add_argument("--agg", choices=("mean", "max"), default="mean",
                      help="a video's score from its frames' fake probabilities")
    pred.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    pred.add_argument("--csv", default=None, metavar="FILE", help="also write the rows as CSV")
    _common(pred, results=False, registry=False, device=True, progress=True)
    pred.set_defaults(func=cmd_predict)

    exp = sub.add_parser("export", help="a run's student alone to ONNX, checked against "
                         "PyTorch, then timed and tested (deploy/deploy.json)")
    _deployed_run(exp)
    exp.add_argument("--format", choices=("onnx",), default="onnx", help="export format")
    exp.add_argument("--no-teacher", action="store_true",
                     help="do not time the teacher for scale")
    exp.set_defaults(func=cmd_export)

    quant = sub.add_parser("quantize", help="int8 post-training static quantization of a "
                           "run's exported student (onnxruntime), then tested and timed")
    _deployed_run(quant)
    quant.add_argument("--int8", action="store_true", help="int8 weights and activations (QDQ)")
    quant.add_argument("--calib", type=_at_least(1), default=256,
                       help="training frames the activation ranges are calibrated on")
    quant.set_defaults(func=cmd_quantize)

    methods = sub.add_parser("methods", help="list the registered distillers")
    _common(methods, results=False)
    methods.set_defaults(func=cmd_methods)

    synth = sub.add_parser("synth", help="generate the embedded synthetic forgery videos")
    synth.add_argument("--root", default=None,
                       help="output folder (default: the data cache's synthetic/videos)")
    synth.add_argument("--seed", type=int, default=0, help="generator seed")
    synth.add_argument("--workers", type=_at_least(1), default=2, help="worker processes")
    _common(synth, results=False, registry=False, progress=True)
    synth.set_defaults(func=cmd_synth)

    prep = sub.add_parser("prepare", help="videos or images -> face crops + index")
    prep.add_argument("source", choices=("ff++", "celebdf", "folder", "deepfakebench"),
                      help="ff++: FaceForensics++; celebdf: Celeb-DF v2; folder: real/ and "
                      "fake/ image folders; deepfakebench: frames DeepfakeBench extracted")
    prep.add_argument("--root", required=True,
                      help="the dataset as downloaded (deepfakebench: its rgb_dir)")
    prep.add_argument("--json", default=None,
                      help="deepfakebench: the dataset JSON its preprocessing/rearrange.py wrote")
    prep.add_argument("--out", required=True, help="prepared folder (resumes if present)")
    prep.add_argument("--compression", default=None, choices=("c40", "c23", "raw"),
                      help="ff++ (default c40); deepfakebench (needed when the JSON has several)")
    prep.add_argument("--methods", default=None,
                      help="ff++: comma list of manipulations (default: all four)")
    prep.add_argument("--splits", default=None, help="ff++: folder of train/val/test.json")
    prep.add_argument("--frames", type=_at_least(1), default=None,
                      help="frames per video (default 32; deepfakebench: all listed; images "
                      "have one)")
    prep.add_argument("--size", type=_at_least(8), default=299, help="face crop size in px")
    prep.add_argument("--detector", default=None,
                      help="dlib (default for ff++, celebdf), center (centred faces; default "
                      "for folder) or full (face crops; default for deepfakebench)")
    prep.add_argument("--workers", type=_at_least(0), default=2, help="worker processes")
    prep.add_argument("--val-fraction", type=float, default=None,
                      help="celebdf: share of identities held out for val (default 0.1)")
    prep.add_argument("--seed", type=int, default=None, help="celebdf, folder: split seed (0)")
    prep.add_argument("--name", default=None,
                      help="folder (default folder), deepfakebench: the name for --dataset")
    _common(prep, results=False, registry=False, progress=True)
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


DATA_PARALLEL = ("run", "reproduce")  # the commands torchrun may start (kdbench.distributed)


def main(argv: list[str] | None = None) -> int:
    """The `kdbench` command; returns its exit status (2 for bad input, one line on stderr)."""
    _log_to_stderr()
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or an argument error (2, one line)
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = argv  # the command line as given, for the reproduce log
    if getattr(args, "resume", False):
        print("kdbench: note: --resume is the default now (an unfinished run always continues; "
              "--restart discards it)", file=sys.stderr)
    try:
        if os.environ.get("WORLD_SIZE", "1") != "1" and args.command not in DATA_PARALLEL:
            raise KdbenchError(f"kdbench {args.command} runs in one process; start only "
                               "`kdbench run` or `kdbench reproduce` under torchrun")
        return args.func(args)
    except KdbenchError as exc:
        said = _says_it(exc)
        if said is not None:
            print(f"kdbench: error{said}: {exc}", file=sys.stderr)
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
    finally:
        ranks = sys.modules.get("kdbench.distributed")  # loaded (with torch) by a run
        if ranks is not None:
            ranks.teardown()


def _says_it(exc: KdbenchError) -> str | None:
    """How this process reports ``exc`` ("" as usual, " (rank N)", None: not at all): under
    torchrun an error every rank raises alike is reported by rank 0 alone, another rank's own
    error with its rank."""
    ranks = sys.modules.get("kdbench.distributed")
    if ranks is None or ranks.is_main():
        return ""
    return None if isinstance(exc, ranks.RankZeroError) else f" (rank {ranks.rank()})"


if __name__ == "__main__":
    sys.exit(main())
