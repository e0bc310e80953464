"""The `kdbench` command: parses the arguments and calls :mod:`kdbench.api`."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from kdbench.cli_parser import build_parser
from kdbench.errors import KdbenchError, os_error_line
from kdbench.logs import to_stderr
from kdbench.progress import keeping
from kdbench.request import request_options


def cmd_run(args: argparse.Namespace) -> int:
    from kdbench import api

    summary = api.run(**request_options(args))
    if not summary.commands and args.only is None and summary.runs:
        sys.stdout.write(api.plan_report(summary).render("md"))
    return _finished(summary, args.launcher)


def _finished(summary, launcher: str | None) -> int:
    """Print what the executor did; 1 when a launched run failed (each was reported with its
    log), else 0."""
    from kdbench.progress import stdout_console

    if summary.commands:  # --launcher print
        console = stdout_console()
        for line in summary.commands:
            console.print(line, highlight=False, soft_wrap=True, markup=False)
        return 0
    if launcher not in (None, "inprocess"):
        print(f"launcher: trained {summary.trained}, found finished {summary.finished_before}, "
              f"failed {len(summary.failed)}"
              + (f", not started {len(summary.skipped)}" if summary.skipped else "")
              + f" in {summary.wall_s:.0f} s", file=sys.stderr)
    return 0 if summary.ok else 1


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

    return _finished(api.reproduce(**request_options(args),
                                   command=shlex.join(["kdbench", *args.argv])), args.launcher)


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
                        measure=not args.no_measure, ci=args.ci, data_root=args.data_root)
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
    from kdbench import api, reporting
    from kdbench.progress import stdout_console

    options = {"results": args.results, "dataset": args.dataset, "all_runs": args.all_runs,
               "registry": args.registry}
    api.plot(args.figure, out=args.out, x=args.x, **options)
    if args.figure in [*reporting.trace_kinds(args.registry), "gradcos"]:  # each curve's means
        for _, row in reporting.trace_means(args.figure, **options).iterrows():
            panels = [c for c in row.index if c.startswith("mean ")]
            stdout_console().print(
                f"{row['curve']}: " + ", ".join(f"{c} {row[c]:+.4f}" for c in panels)
                + f" ({row['seeds']} seeds, {row['records']} records)", highlight=False)
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from kdbench import api
    from kdbench.progress import stdout_console

    found = api.diagnose(args.dataset, preset=args.preset, methods=args.methods,
                         steps=args.steps, every=args.every, results=args.results,
                         data_root=args.data_root, device=args.device,
                         progress=not args.no_progress, settings=args.settings or None,
                         registry=args.registry or None, student=args.student)
    for d in found:
        stdout_console().print(
            f"{d.student} {d.method} both, {args.dataset}: cos(grad L_rgb, grad L_fre) at stage "
            f"{d.stage} = {d.cos_mean:+.3f} ± {d.cos_std:.3f} ({d.records} records over "
            f"{d.steps} steps, {d.seconds:.0f} s; |grad fre| / |grad rgb| = "
            f"{d.norm_ratio:.2f})", highlight=False)
        stdout_console().print(d.sentence(), highlight=False)
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


EXPORT_KEPT = ("the run and its deploy/ files finished before are kept; the step that was "
               "interrupted is redone by the same command")


def cmd_export(args: argparse.Namespace) -> int:
    from kdbench import api

    with keeping(EXPORT_KEPT):
        record = api.export(args.run, format=args.format, data_root=args.data_root,
                            threads=args.threads, teacher=not args.no_teacher)
    return _print_deploy(record)


def _print_deploy(record: dict) -> int:
    """A run's deploy record as the deploy table, on stdout."""
    from kdbench.progress import stdout_console
    from kdbench.report.deploy import deploy_report

    stdout_console().print(deploy_report([record]).markdown(), highlight=False, markup=False)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from kdbench import api

    if not args.int8:
        raise KdbenchError("say the precision: `kdbench quantize RUN_DIR --int8` (static, the "
                           "default) or `--int8 dynamic` (the Linear layers alone)")
    with keeping(EXPORT_KEPT):
        record = api.quantize(args.run, int8=args.int8, calib=args.calib,
                              data_root=args.data_root, threads=args.threads)
    return _print_deploy(record)


def cmd_compress(args: argparse.Namespace) -> int:
    from kdbench import api

    with keeping("the parent run is untouched; an interrupted fine-tuning continues from its "
                 "last epoch with the same command"):
        out, m = api.compress(args.run, prune=args.prune, target=args.target, scope=args.scope,
                              steps=args.steps, finetune=args.finetune,
                              finetune_with=args.finetune_with,
                              finetune_mode=args.finetune_mode, data_root=args.data_root,
                              device=args.device, threads=args.threads,
                              progress=not args.no_progress, registry=args.registry)
    c, t, p = m["compression"], m["test"], m["parent"]
    what = "weights zeroed" if c["technique"] == "unstructured" else "parameters removed"
    print(f"{out}: {100 * c['achieved']:.1f} % of the {what}; {m['params'] / 1e6:.3f} M "
          f"parameters ({m['nonzero_params'] / 1e6:.3f} M non-zero), {m['gflops']:.4f} GFLOPs, "
          f"{m['gzip_mb']:.2f} MB gzipped; test acc {100 * t['acc']:.2f} AUC {100 * t['auc']:.2f} "
          f"(parent {100 * p['test']['acc']:.2f} / {100 * p['test']['auc']:.2f})")
    if c["technique"] == "unstructured":
        print("unstructured pruning keeps dense tensors: latency and GFLOPs do not change; "
              "the gain is the compressed file size")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from kdbench import api
    from kdbench.values import comma_list

    with keeping("the parent run is untouched; an interrupted transfer continues from its "
                 "last epoch with the same command"):
        out, m = api.transfer(args.run, to=args.to, strategy=args.strategy, epochs=args.epochs,
                              shots=args.shots, lr=args.lr,
                              train_generators=comma_list(args.train_generators or ""),
                              test_generators=comma_list(args.test_generators or ""),
                              data_root=args.data_root, device=args.device,
                              threads=args.threads, progress=not args.no_progress,
                              registry=args.registry)
    tr, t = m["transfer"], m["test"]
    print(f"{out}: {tr['strategy']} trained {tr['trainable_params']:,} of "
          f"{tr['all_params']:,} parameters on {tr['train_frames']} frames in "
          f"{tr['train_time_s']:.0f} s; test acc {100 * t['acc']:.2f} AUC {100 * t['auc']:.2f}")
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


def cmd_models(args: argparse.Namespace) -> int:
    from rich.table import Table

    from kdbench import api
    from kdbench.models.catalog import COLUMNS
    from kdbench.progress import stdout_console

    result = api.models(args.pattern, size=args.size, limit=args.limit,
                        progress=not args.no_progress)
    failed = any(row.problem for row in result.rows)
    columns = COLUMNS if failed else COLUMNS[:-1]  # the problem column only when one failed
    table = Table(title=result.title)
    for col in columns:
        table.add_column(col, justify="right" if col in ("stages", "params (M)", "GFLOPs")
                         else "left", overflow="fold")
    for cells in result.text_rows():
        table.add_row(*cells[:len(columns)])
    console = stdout_console()
    console.print(table)
    for note in result.notes:
        console.print(note, highlight=False, markup=False)
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
                raise_root=args.raise_root, skip_lists=args.skip_lists, crop=args.crop,
                reencode=args.reencode, progress=not args.no_progress)
    return 0


DATA_PARALLEL = ("run", "reproduce")  # the commands torchrun may start (kdbench.distributed)


def main(argv: list[str] | None = None) -> int:
    """The `kdbench` command; returns its exit status (2 for bad input, one line on stderr)."""
    to_stderr()
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
        return globals()[f"cmd_{args.command}"](args)
    except KdbenchError as exc:
        said = _says_it(exc)
        if said is not None:
            print(f"kdbench: error{said}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `kdbench table | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # disk full, permission denied, ...: say which file
        print(os_error_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        from kdbench.progress import kept_on_interrupt

        print(f"kdbench: interrupted; {kept_on_interrupt(exc)}", file=sys.stderr)
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
