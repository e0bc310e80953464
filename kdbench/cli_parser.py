"""The `kdbench` argument parser: one subcommand per command; the options of `run` and
`reproduce` are generated from the run request (:mod:`kdbench.request`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from kdbench import __version__
from kdbench.compress.settings import FINETUNE_MODES, SCOPES, TECHNIQUES
from kdbench.config import DEFAULT_RESULTS, METRIC_NAMES
from kdbench.data.commands import CROPS, PREPARE_SOURCES
from kdbench.deploy.api import INT8
from kdbench.report.pareto import AXES
from kdbench.request import PRESET_NAMES, add_arguments


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


def _deployed_run(parser: argparse.ArgumentParser) -> None:
    """export and quantize: the run folder, its data and the threads the timing uses."""
    parser.add_argument("run", type=Path, help="a finished run folder (runs/.../seed<k>)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="prepared folder of the run's dataset (default: as for kdbench run)")
    _threads(parser)


def _compress(sub) -> None:
    comp = sub.add_parser("compress", help="prune a finished run's student into a child run "
                          "(optionally fine-tuned, with any distiller), tested like a run")
    comp.add_argument("run", type=Path, help="a finished run folder (runs/.../seed<k>), or a "
                      "single-branch teacher's (teachers/<dataset>/<folder>)")
    comp.add_argument("--prune", required=True, choices=TECHNIQUES,
                      help="unstructured: L1 magnitude masks (weights zeroed, dense tensors); "
                      "structured: channels removed with Torch-Pruning (a smaller model)")
    comp.add_argument("--target", type=float, required=True,
                      help="fraction in (0, 1): of the weights zeroed (unstructured) or of the "
                      "parameters removed, as measured (structured)")
    comp.add_argument("--scope", choices=SCOPES, default=SCOPES[0],
                      help="unstructured: the fraction in every layer, or over all layers")
    comp.add_argument("--steps", type=_at_least(1), default=1,
                      help="structured: prune in this many steps, fine-tuned between them")
    comp.add_argument("--finetune", type=_at_least(0), default=0, metavar="EPOCHS",
                      help="epochs of fine-tuning after pruning (0: tested as pruned)")
    comp.add_argument("--finetune-with", default=None, metavar="METHOD",
                      help="a registered distiller to fine-tune with, against the run's teacher "
                      "(default: cross-entropy alone)")
    comp.add_argument("--finetune-mode", choices=FINETUNE_MODES, default=FINETUNE_MODES[0],
                      help="the distiller's mode when --finetune-with names one")
    comp.add_argument("--data-root", type=Path, default=None,
                      help="prepared folder of the run's dataset (default: as for kdbench run)")
    _threads(comp)
    _common(comp, results=False, device=True, progress=True)


def _transfer(sub) -> None:
    tr = sub.add_parser("transfer", help="adapt a finished run's student to another dataset or "
                        "other generators (linear, partial:K, full, lora:R, adapter), as a new "
                        "run")
    tr.add_argument("run", type=Path, help="a finished run folder (runs/.../seed<k>), or a "
                    "single-branch teacher's (teachers/<dataset>/<folder>)")
    tr.add_argument("--to", required=True, metavar="DATASET",
                    help="the target dataset (as for kdbench run --dataset)")
    tr.add_argument("--strategy", required=True, metavar="STRATEGY",
                    help="linear (the head), partial:K (the last K stages and the head), full, "
                    "lora:R (PEFT LoRA of rank R on the convolutions, the head trained, merged "
                    "before export; pip install 'kdbench[transfer]') or adapter (a "
                    "depthwise-separable block after the last stage)")
    tr.add_argument("--epochs", type=_at_least(1), default=5,
                    help="epochs of training on the target (default: 5)")
    tr.add_argument("--shots", type=_at_least(1), default=None, metavar="N",
                    help="N training images per class (default: the whole training split)")
    tr.add_argument("--lr", type=float, default=None,
                    help="learning rate, constant (default: the parent's initial one)")
    tr.add_argument("--train-generators", default=None, metavar="A,B",
                    help="the target's generators to train on (default: all)")
    tr.add_argument("--test-generators", default=None, metavar="C,D",
                    help="the target's generators to test on (default: all)")
    tr.add_argument("--data-root", type=Path, default=None,
                    help="prepared folder of the target dataset (default: as for kdbench run)")
    _threads(tr)
    _common(tr, results=False, device=True, progress=True)


def _request(parser: argparse.ArgumentParser, command: str) -> None:
    """The options of a run request (:mod:`kdbench.request`), plus the retired --resume."""
    add_arguments(parser, command, _at_least)
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)  # the default


def build_parser() -> argparse.ArgumentParser:
    """The `kdbench` argument parser."""
    p = Parser(prog="kdbench", description="A knowledge-distillation benchmark suite for "
               "efficient facial forgery detection: a dual-branch RGB + frequency teacher "
               "distilled into small students by any registered method.")
    p.add_argument("--version", action="version", version=f"kdbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train the teacher (once) and the students")
    _request(run, "run")

    table = sub.add_parser("table", help="the runs of a result store, or a paper table")
    table.add_argument("--kind", default="runs",
                       help="runs: every run folder; comparison: Table 3; weighting: Table 3 "
                       "read both ways (both_weighting sum and mean); claims: each claim of "
                       "the paper and whether the store reproduces it; ablation: Table 6; "
                       "teacher: Table 4; cross: Table 7; cost: Table 1 (params, GFLOPs, "
                       "images/s); deploy: exported students' size, CPU latency and accuracy "
                       "per format; or a sweep a registry method declares (`kdbench table "
                       "--kind x` lists them)")
    _common(table, device=True)
    table.add_argument("--format", choices=("md", "latex", "csv"), default="md",
                       help="output format")
    table.add_argument("--metric", default=None, metavar="METRIC[,METRIC]",
                       help=f"the metric in the cells ({', '.join(METRIC_NAMES)}), or a comma "
                       "list shown side by side, e.g. acc,auc -> 'acc / auc' (default acc; "
                       "auc for --kind students)")
    table.add_argument("--dataset", default=None, help="only this dataset's runs")
    table.add_argument("--student", default=None, help="only this student's runs")
    table.add_argument("--out", default=None, help="write to this file instead of stdout")
    table.add_argument("--preset", choices=PRESET_NAMES, default=None,
                       help="cost: the resolution, students and teacher of this preset")
    table.add_argument("--size", type=_at_least(8), default=None,
                       help="cost: input size (default: the preset's)")
    table.add_argument("--no-measure", action="store_true", help="cost: skip the timing")
    table.add_argument("--data-root", type=Path, default=None,
                       help="shortcut: the prepared image dataset whose manifest.csv it reads")
    table.add_argument("--ci", action="store_true",
                       help="comparison: print both - rgb with its two-level bootstrap interval "
                       "at its Holm level and the paired t-test over seeds")

    cmp_ = sub.add_parser("compare", help="two cells of the store: each metric's paired "
                          "difference with its two-level bootstrap interval (seeds, then test "
                          "identity pairs), Holm across the metrics")
    cmp_.add_argument("a", help="<label>/<mode>, e.g. at/both")
    cmp_.add_argument("b", help="<label>/<mode>, e.g. at/rgb, or a teacher-free one with mode none")
    _common(cmp_, registry=False)
    cmp_.add_argument("--dataset", default=None, help="only this dataset's runs")
    cmp_.add_argument("--student", default=None, help="only this student's runs")
    cmp_.add_argument("--metric", default="all", help="comma list of metrics (default all)")
    cmp_.add_argument("--resamples", type=_at_least(100), default=2000,
                      help="bootstrap resamples (default 2000)")

    plot = sub.add_parser("plot", help="figures from the result store")
    plot.add_argument("figure", help="curves: train loss and val acc per epoch; deploy: AUC "
                      "against CPU latency of exported students; pareto: AUC against cost of "
                      "every compressed and uncompressed model, the front drawn; or a trace or "
                      "sweep a registry method declares (`kdbench plot x` lists them)")
    _common(plot)
    plot.add_argument("--dataset", default=None, help="only this dataset's runs")
    plot.add_argument("--out", default=None,
                      help="PNG, SVG or PDF path (default: <results>/<figure>.png)")
    plot.add_argument("--x", choices=tuple(AXES), default="gflops",
                      help="pareto: the cost axis (GFLOPs, ONNX batch-32 latency or file MB)")
    plot.add_argument("--all-runs", action="store_true",
                      help="curves and traces: also the sweep and ablation variants (default: "
                      "the runs of the default plan, i.e. each method and its registry "
                      "variants)")

    rep = sub.add_parser("reproduce", help="every run the paper's tables need, then the "
                         "tables (md) and plots (png)")
    _request(rep, "reproduce")

    diag = sub.add_parser("diagnose", help="the paper's premise on your data: the cosine "
                          "between the RGB and frequency distillation gradients, in a few "
                          "hundred steps from the teacher, and what it means for the mode")
    _common(diag, device=True, progress=True, data=True)
    diag.add_argument("--preset", choices=PRESET_NAMES, default=None,
                      help="settings and student (default: cpu, or paper on CUDA)")
    diag.add_argument("--methods", default=None,
                      help="comma list of methods with a both mode, or all (default: those "
                      "whose registry entry declares reports.diagnose)")
    diag.add_argument("--steps", type=_at_least(2), default=200,
                      help="training steps per method (default 200; the first 10%% are "
                      "left out)")
    diag.add_argument("--every", type=_at_least(1), default=5,
                      help="steps between records (default 5)")
    diag.add_argument("--set", dest="settings", action="append", default=[],
                      metavar="KEY=VALUE", help="a setting, as for kdbench run")
    diag.add_argument("--student", default=None, help="the student (default: the preset's "
                      "first)")

    ev = sub.add_parser("eval", help="test trained students on another dataset (Table 7)")
    ev.add_argument("runs", nargs="+", help="run folders (runs/.../seed<k>) or folders above")
    ev.add_argument("--dataset", required=True, help="the dataset to test on")
    ev.add_argument("--data-root", type=Path, default=None,
                    help="prepared folder of that dataset")
    _common(ev, results=False, registry=False, device=True, progress=True)

    bench = sub.add_parser("bench", help="training speed on this machine: loader, step, loop, "
                           "each method over the teacher-free baseline (live teacher, cached), "
                           "threads")
    bench.add_argument("--preset", choices=PRESET_NAMES, default=None,
                       help="size and batch of this preset (default: paper on CUDA, cpu "
                       "otherwise)")
    bench.add_argument("--student", default=None,
                       help="a built-in backbone or any timm CNN (`kdbench models`; default: "
                       "the preset's first student)")
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

    pred = sub.add_parser("predict", help="a trained student's fake score for video and image "
                          "files (face crops made as `kdbench prepare` makes them)")
    pred.add_argument("inputs", nargs="+", help="video files, image files or folders of them "
                      "(searched recursively)")
    pred.add_argument("--run", type=Path, default=None,
                      help="a finished run folder of the store (runs/.../seed<k>)")
    pred.add_argument("--checkpoint", type=Path, default=None,
                      help="instead of --run: a best.pt or deploy/student.pt (with --student)")
    pred.add_argument("--student", default=None,
                      help="with --checkpoint: the run's student (a built-in backbone or a "
                      "timm CNN)")
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

    exp = sub.add_parser("export", help="a run's student alone to ONNX, checked against "
                         "PyTorch, then timed and tested (deploy/deploy.json)")
    _deployed_run(exp)
    exp.add_argument("--format", choices=("onnx",), default="onnx", help="export format")
    exp.add_argument("--no-teacher", action="store_true",
                     help="do not time the teacher for scale")

    quant = sub.add_parser("quantize", help="int8 post-training static quantization of a "
                           "run's exported student (onnxruntime), then tested and timed")
    _deployed_run(quant)
    quant.add_argument("--int8", nargs="?", const="static", default=None, choices=tuple(INT8),
                       help="static (default): int8 weights and activations (QDQ), calibrated; "
                       "dynamic: int8 weights of the Linear layers alone, activations at run "
                       "time (the convolutions stay fp32)")
    quant.add_argument("--calib", type=_at_least(1), default=256,
                       help="training frames the activation ranges are calibrated on")

    _compress(sub)
    _transfer(sub)

    methods = sub.add_parser("methods", help="list the registered distillers")
    _common(methods, results=False)

    models = sub.add_parser("models", help="list the backbones a student or teacher branch "
                            "can use: stage maps, parameters, GFLOPs, ImageNet weights")
    models.add_argument("pattern", nargs="?", default=None,
                        help="a timm model name or fnmatch-style pattern, quoted, e.g. "
                        "'mobilenet*' (default: kdbench's own three backbones)")
    models.add_argument("--size", type=_at_least(8), default=64,
                        help="input size in px the GFLOPs are counted at")
    models.add_argument("--limit", type=_at_least(1), default=25,
                        help="at most this many backbones (the rest are counted)")
    _common(models, results=False, registry=False, progress=True)

    synth = sub.add_parser("synth", help="generate the embedded synthetic forgery videos")
    synth.add_argument("--root", default=None,
                       help="output folder (default: the data cache's synthetic/videos)")
    synth.add_argument("--seed", type=int, default=0, help="generator seed")
    synth.add_argument("--workers", type=_at_least(1), default=2, help="worker processes")
    _common(synth, results=False, registry=False, progress=True)

    prep = sub.add_parser("prepare", help="videos or images -> face crops + index")
    prep.add_argument("source", choices=PREPARE_SOURCES,
                      help="ff++: FaceForensics++; celebdf: Celeb-DF v2; folder: real/ and "
                      "fake/ image folders; deepfakebench: frames DeepfakeBench extracted; "
                      "forensynths, synthbuster, genimage: AI-generated image datasets")
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
                      help="celebdf: share of identities held out for val; genimage: share of "
                      "its train images held out for val (default 0.1)")
    prep.add_argument("--seed", type=int, default=None,
                      help="celebdf, folder, synthbuster, genimage: split seed (0)")
    prep.add_argument("--name", default=None,
                      help="folder (default folder), deepfakebench: the name for --dataset")
    prep.add_argument("--raise", dest="raise_root", type=Path, default=None, metavar="DIR",
                      help="synthbuster: the RAISE-1k photographs (its reals)")
    prep.add_argument("--skip-list", dest="skip_lists", type=Path, action="append", default=[],
                      metavar="FILE", help="genimage: a published list of corrupt files "
                      "(repeatable)")
    prep.add_argument("--crop", choices=tuple(CROPS), default=None,
                      help="forensynths, synthbuster, genimage: center (the central square, "
                      "default) or resize (the whole image)")
    prep.add_argument("--reencode", default=None, metavar="none|jpeg:Q",
                      help="image sources: write every image in one format first, so reals and "
                      "fakes do not differ by their files' compression")
    _common(prep, results=False, registry=False, progress=True)
    return p


