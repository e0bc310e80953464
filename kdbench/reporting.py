"""The reporting commands as functions: the runs of a store, tables, comparisons, figures,
cross-dataset tests, the registered methods, the usable backbones and the speed benchmark."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from kdbench.config import DEFAULT_RESULTS, default_preset
from kdbench.errors import KdbenchError, did_you_mean
from kdbench.values import comma_list

if TYPE_CHECKING:
    from kdbench.models.catalog import Catalog
    from kdbench.report.tables import Report as tables_Report

log = logging.getLogger(__name__)
PLOT_FORMATS = (".png", ".svg", ".pdf")
PathLike = str | os.PathLike
RegistryArg = PathLike | Sequence[PathLike] | None  # extra registry files


def _registry(registry: RegistryArg) -> dict:
    from kdbench.registry import load_registry

    paths = [registry] if isinstance(registry, (str, os.PathLike)) else list(registry or [])
    return load_registry([Path(p) for p in paths])


def _check_device(device: str | None) -> None:
    from kdbench.config import check_device_name

    if device is not None:
        check_device_name(device)


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
    return ["runs", "comparison", "weighting", "ablation", *_declared(reg, "sweeps"), "teacher",
            "cross", "cost", "deploy", "students", "claims", "compression", "shortcut",
            "generators", "transfer", "resolution", "views"]


def trace_kinds(registry: RegistryArg = None) -> list[str]:
    """The traces registry methods declare (each a figure of records against the step)."""
    return _declared(_registry(registry), "traces")


def figure_kinds(registry: RegistryArg = None) -> list[str]:
    """The figures: each trace and sweep a registry method declares, the curves and the
    deploy figure."""
    reg = _registry(registry)
    return [*_declared(reg, "traces"), *_declared(reg, "sweeps"), "curves", "deploy", "gradcos"]


def _known(kind: str, kinds: list[str], what: str) -> None:
    if kind not in kinds:
        raise KdbenchError(f"unknown {what} {kind!r}{did_you_mean(kind, kinds)}; choose one of "
                           f"{', '.join(kinds)} (a registry's `reports` adds more)")


# the metric a table shows when none is named (the students table compares detectors by AUC)
KIND_METRIC = {"students": "auc", "generators": "auc,ap", "resolution": "auc", "views": "auc"}


def report(kind: str = "comparison", *, results: PathLike = DEFAULT_RESULTS,
           metric: str | Sequence[str] | None = None, dataset: str | None = None,
           student: str | Sequence[str] | None = None, registry: RegistryArg = None,
           preset: str | None = None, size: int | None = None, device: str | None = None,
           measure: bool = True, ci: bool = False,
           data_root: PathLike | None = None) -> tables_Report:
    """The table ``kind`` as a ``kdbench.report.tables.Report`` (``.markdown()``,
    ``.latex()``, ``.csv()``, ``.frame()``): mean ± std over seeds of ``metric``, or of
    several side by side in each cell (``"acc,auc"`` -> ``acc / auc``; None: auc for the
    students table, acc for the others). ``cost`` measures the
    models of ``preset`` at ``size`` on ``device``. ``ci``: the comparison's paired-bootstrap
    intervals (both - rgb) in its cells."""
    from kdbench.report import tables

    reg = _registry(registry)
    _known(kind, _table_kinds(reg), "table kind")
    if kind == "runs":
        raise KdbenchError("the runs listing is a DataFrame: use kdbench.api.runs()")
    metrics = _metrics(metric or KIND_METRIC.get(kind, "acc"))
    if kind == "cost":
        return _cost(preset, dataset, student, size, device, measure)
    if kind == "shortcut":  # a prepared image dataset's files, not the store's runs
        from kdbench.data.shortcut import shortcut_report

        return shortcut_report(data_root)
    if kind == "deploy":
        from kdbench.report.deploy import deploy_records, deploy_report

        return deploy_report(deploy_records(Path(results)))
    if kind == "compression":
        from kdbench.report.compression import compression_report

        return compression_report(Path(results))
    if kind == "views":
        from kdbench.report.views import views_report

        return views_report(runs(results, student=student), Path(results), metrics)
    if kind == "resolution":
        from kdbench.report.resolution import resolution_report

        listing = runs(results, dataset)
        if student:  # the student's runs at every input side (folders <student>@<side>px)
            names = [student] if isinstance(student, str) else list(student)
            listing = listing[listing["student"].str.partition("@")[0].isin(names)]
        return resolution_report(listing, metrics, measure)
    if kind == "transfer":
        from kdbench.report.transfer import transfer_report

        return transfer_report(Path(results))
    if kind == "generators":
        from kdbench.report.generators import generators_report

        return generators_report(Path(results), dataset, metrics)
    if kind == "students":
        from kdbench.report.students import students_report

        order = list(reg) + sorted(set(runs(results)["method"]) - set(reg) - {"teacher"})
        return students_report(_full_input(runs(results, dataset, student)), Path(results),
                               order, metrics)
    return tables.build(kind, _full_input(runs(results, dataset, student)), reg, metrics, ci)


def _full_input(listing: pd.DataFrame) -> pd.DataFrame:
    """The runs of students that read the data's image (not ``<student>@<side>px``: those
    are the resolution table's)."""
    return listing[~listing["student"].astype(str).str.contains("@", regex=False)]


def _metrics(metric: str | Sequence[str]) -> list[str]:
    """The metric names of ``metric`` (one, or a comma list), each checked."""
    from kdbench.config import METRIC_NAMES

    names = list(dict.fromkeys(comma_list(metric)))
    if not names:
        raise KdbenchError(f"no metric given; choose from {', '.join(METRIC_NAMES)}, or a comma "
                           "list such as acc,auc")
    for m in names:
        if m not in METRIC_NAMES:
            raise KdbenchError(f"unknown metric {m!r}{did_you_mean(m, METRIC_NAMES)}; choose "
                               f"from {', '.join(METRIC_NAMES)}, or a comma list such as acc,auc")
    return names


def compare(a: str, b: str, *, results: PathLike = DEFAULT_RESULTS, dataset: str | None = None,
            student: str | None = None, metrics: str | Sequence[str] = "all",
            n_boot: int = 2000) -> tables_Report:
    """Two cells of the store, ``<label>/<mode>`` each (``at/both``, ``<label>@<variant>/<mode>``,
    ``<teacher-free label>/none``): per metric, A - B over the seeds both ran, with the 95 %
    interval of a paired bootstrap over the test videos (:mod:`kdbench.report.paired`)."""
    from kdbench.config import METRIC_NAMES
    from kdbench.report.compare import compare_cells

    wanted = list(METRIC_NAMES) if metrics == "all" else comma_list(metrics)
    for m in wanted:
        if m not in METRIC_NAMES:
            raise KdbenchError(f"unknown metric {m!r}{did_you_mean(m, METRIC_NAMES)}; "
                               f"choose from {', '.join(METRIC_NAMES)}")
    return compare_cells(_full_input(runs(results, dataset, student)), a, b, wanted, n_boot)


def plan_report(summary: Any) -> tables_Report:
    """The table a run ends with: the plan's teacher (kind and backbone) and each of its
    student runs, test accuracy and AUC over the finished seeds (``summary``: a RunSummary)."""
    from kdbench.report.plan_table import plan_report as build

    return build(Path(summary.results), list(summary.runs), summary.teacher)


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
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise KdbenchError(f"threads={threads!r}; give a whole number >= 1, or leave it out "
                           "for this process's share of the cores")
    for name, value in (("steps", steps), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KdbenchError(f"{name}={value!r}; give a whole number >= 1")
    reg = _registry(registry)
    from kdbench.config import BACKBONES, preset_students
    from kdbench.registry import select_methods

    entries = select_methods(reg, ",".join(comma_list(methods)) or "all")
    if student is not None and student not in BACKBONES:  # timm only for a name not built in
        from kdbench.models.backbones import check_backbone

        check_backbone(student, "--student")
    _check_device(device)
    if json_path is not None:
        from kdbench.files import check_writable

        check_writable(Path(json_path).resolve().parent, "the --json folder",
                       "give --json a file name in a folder")
    from kdbench.bench import run_bench
    from kdbench.deploy.measure import torch_threads
    from kdbench.threads import usable_cores
    from kdbench.train.runner import pick_device

    torch_device = pick_device(device)
    chosen = preset or default_preset(torch_device.type)
    with torch_threads(threads or usable_cores()):  # restored after, for a notebook
        result = run_bench(chosen, student or preset_students(chosen)[0], torch_device, entries,
                           reg, dataset=dataset, data_root=Path(data_root) if data_root else None,
                           steps=steps, rounds=rounds, threads_check=processes,
                           progress=progress)
    if json_path is not None:
        from kdbench.files import atomic_write_json

        atomic_write_json(Path(json_path), result)
    return result


def _cost(preset: str | None, dataset: str | None, student: str | Sequence[str] | None,
          size: int | None,
          device: str | None, measure: bool):
    from kdbench.config import BACKBONES, preset_students, resolve_config

    _check_device(device)
    chosen = comma_list(student)
    for s in chosen:
        if s not in BACKBONES:  # timm only for a name not built in
            from kdbench.models.backbones import check_backbone

            check_backbone(s, "--student")
    from kdbench.report import tables
    from kdbench.train.runner import pick_device

    torch_device = pick_device(device)
    preset = preset or default_preset(torch_device.type)
    config = resolve_config(preset, dataset or "synthetic", {})
    return tables.cost(chosen or preset_students(preset), config["teacher"],
                       size or config["data"]["size"], torch_device, measure=measure)


def plot(figure: str = "curves", *, results: PathLike = DEFAULT_RESULTS,
         out: PathLike | None = None, dataset: str | None = None, all_runs: bool = False,
         registry: RegistryArg = None, x: str = "gflops") -> Path:
    """Draw ``figure`` from the store and return its path (default
    ``<results>/<figure>.png``): ``curves`` (loss and validation accuracy per epoch), a
    declared trace (e.g. a gradient-cosine trace against the step) or a declared sweep (the
    metric against the swept value), ``deploy`` or ``pareto`` (test AUC against ``x``:
    gflops, latency or size, of every model of the compression table). ``all_runs`` also
    draws the sweep and ablation variants in curves and traces."""
    from kdbench.report.figures import plot_curves, plot_sweep
    from kdbench.report.traces import plot_trace

    reg = _registry(registry)
    traces = _declared(reg, "traces")
    _known(figure, [*traces, *_declared(reg, "sweeps"), "curves", "deploy", "gradcos",
                    "pareto"], "figure")
    path = Path(out) if out else Path(results) / f"{figure}.png"
    if path.suffix.lower() not in PLOT_FORMATS:
        raise KdbenchError(f"{path}: a figure is written as {', '.join(PLOT_FORMATS)}; give "
                           "an output file name ending in one of them")
    if not Path(results).is_dir():
        raise KdbenchError(f"no result store at {results}; give results=DIR (--results), or "
                           "start runs with `kdbench run`")
    if figure in traces:
        curves = len(plot_trace(Path(results), figure, path, reg, dataset, all_runs))
        detail = f"{curves} curve{'s' * (curves != 1)}"
    elif figure == "gradcos":
        from kdbench.report.gradcos import plot_gradcos

        curves = len(plot_gradcos(Path(results), path, dataset))
        detail = f"{curves} curve{'s' * (curves != 1)}"
    elif figure == "deploy":
        from kdbench.report.deploy import deploy_records, plot_deploy

        records = deploy_records(Path(results))
        if not records:
            raise KdbenchError(f"no deploy/deploy.json in {results}; measure a student first "
                               "with `kdbench export RUN_DIR --format onnx`")
        points = plot_deploy(records, path)
        detail = f"{points} point{'s' * (points != 1)}"
    elif figure == "pareto":
        from kdbench.report.pareto import plot_pareto

        points = plot_pareto(Path(results), path, x)
        detail = f"{points} point{'s' * (points != 1)}"
    elif figure == "curves":
        lines, n = plot_curves(_full_input(runs(results, dataset)), path,
                               None if all_runs else reg)
        detail = f"{lines} line{'s' * (lines != 1)}, {n} runs"
    else:
        points = plot_sweep(_full_input(runs(results, dataset)), reg, figure, path)
        detail = f"{points} point{'s' * (points != 1)}"
    log.info(f"wrote {path} ({detail})")
    return path


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
        log.info(f"{run_dir}: on {dataset} acc {t['acc']:.4f} auc {t['auc']:.4f} "
                 f"eer {t['eer']:.4f} video-auc {t['video_auc']:.4f}")
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


def models(pattern: str | None = None, size: int = 64, limit: int = 25,
           progress: bool = True) -> Catalog:
    """The backbones a student or teacher branch can use: without ``pattern`` kdbench's own
    three, with one (fnmatch-style, e.g. ``"mobilenet*"``) those and timm's matching models,
    at most ``limit`` rows. Each is built on the CPU and run at ``size`` px: stage maps and
    their channels, the student's parameters and GFLOPs, ImageNet weights, whether it can be a
    dual teacher's branch and give pre-activation maps; a model that fails has its reason
    instead. ``.frame()`` is a DataFrame, ``.markdown()`` the table."""
    for name, value, low in (("size", size, 8), ("limit", limit, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise KdbenchError(f"{name}={value!r}; give a whole number >= {low}")
    if pattern is not None and not isinstance(pattern, str):
        raise KdbenchError(f"pattern={pattern!r}; give a model name or an fnmatch-style "
                           "pattern such as 'mobilenet*'")
    from kdbench.models.catalog import catalog

    return catalog(pattern or None, size, limit, progress)


def trace_means(name: str, *, results: PathLike = DEFAULT_RESULTS, dataset: str | None = None,
                all_runs: bool = False,
                registry: RegistryArg = None) -> pd.DataFrame:
    """Per curve of the trace figure ``name`` (a declared trace, or ``gradcos``): the mean of
    each panel over its records, with the number of seeds and records."""
    from kdbench.report.gradcos import collect_gradcos, gradcos_summary
    from kdbench.report.traces import trace_summary

    if name == "gradcos":
        return gradcos_summary(collect_gradcos(Path(results), dataset))
    reg = _registry(registry)
    _known(name, _declared(reg, "traces"), "trace")
    return trace_summary(Path(results), name, reg, dataset, all_runs)
