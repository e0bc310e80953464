"""The deploy table and figure: each deployed student per format (PyTorch fp32, ONNX fp32,
ONNX int8) and its teacher for scale, from the store's ``<run>/deploy/deploy.json`` files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kdbench.report.tables import Report

DISPLAY = {"teacher_pytorch_fp32": "teacher, PyTorch fp32", "pytorch_fp32": "PyTorch fp32",
           "onnx_fp32": "ONNX fp32", "onnx_int8": "ONNX int8",
           "onnx_int8_dynamic": "ONNX int8 dynamic (Linear)"}
COLUMNS = ["run", "model / format", "params (M)", "file (MB)", "ms/img b1", "ms/img b32",
           "acc", "AUC"]


def deploy_records(results: Path) -> list[dict[str, Any]]:
    """Every ``deploy/deploy.json`` under the store ``results`` (damaged ones skipped)."""
    from kdbench.report.listing import read_or_skip

    records = []
    for path in sorted(Path(results).rglob("deploy/deploy.json")):
        rec = read_or_skip(path)
        if rec is not None and rec.get("formats"):
            records.append(rec)
    return records


def teacher_branches(entry: dict[str, Any]) -> str:
    """A teacher entry's name in the table (:func:`kdbench.report.listing.teacher_label`)."""
    from kdbench.report.listing import teacher_label

    return teacher_label(entry.get("kind"), entry.get("backbone", "?"),
                         entry.get("freq_backbone"))


def deploy_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (run, format), teachers once each: the numbers of the table and figure."""
    rows, teachers = [], set()
    for rec in records:
        for key in DISPLAY:
            entry = rec["formats"].get(key)
            if entry is None:
                continue
            if key.startswith("teacher"):
                who = entry.get("teacher") or rec["label"]
                if who in teachers:
                    continue
                teachers.add(who)
                run = f"teacher ({teacher_branches(entry)}), {rec['dataset']}"
            else:
                run = rec["label"]
            test = entry.get("test") or {}
            rows.append({"run": run, "format": DISPLAY[key], "key": key,
                         "params": entry["params"], "file_mb": entry["file_mb"],
                         "b1": entry["latency_ms_b1"], "b32": entry["latency_ms_b32"],
                         "acc": test.get("acc", math.nan), "auc": test.get("auc", math.nan),
                         "threads": rec.get("threads"), "cpu": rec.get("cpu"),
                         "size": rec.get("size")})
    return rows


def deploy_report(records: list[dict[str, Any]]) -> Report:
    """The deploy table of ``records`` (see :func:`deploy_rows`)."""
    rows = deploy_rows(records)
    table = [[r["run"], r["format"], f"{r['params'] / 1e6:.2f}", f"{r['file_mb']:.2f}",
              f"{r['b1']:.2f}", f"{r['b32']:.2f}", _pct(r["acc"]), _pct(r["auc"])]
             for r in rows]
    where = sorted({(r["cpu"], r["threads"], r["size"]) for r in rows}, key=str)
    notes = [f"measured on {cpu}, {threads} thread{'s' * (threads != 1)}, {size} x {size} "
             "input" for cpu, threads, size in where]
    if not rows:
        notes.append("no deploy/deploy.json in this store yet: measure a run's student with "
                     "`kdbench export RUN --format onnx` (and `kdbench quantize RUN --int8`)")
    notes += ["latency: ms per image, the median of repeated timed batches of 1 and of 32 "
              "random images after warm-up (PyTorch eager with no grad; onnxruntime's CPU "
              "provider); file: the student's weights alone (PyTorch: its state dict) or the "
              "ONNX file; acc (threshold 0.5) and AUC in % on the run's test split, measured "
              "with each format (the teacher's: its recorded test metrics)",
              "made by `kdbench export RUN --format onnx` and `kdbench quantize RUN --int8`"]
    return Report("Deploying students (CPU)", COLUMNS, table, notes)


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def plot_deploy(records: list[dict[str, Any]], out: Path) -> int:
    """Test AUC against CPU latency at batch 32 (log scale, 1-2-5 ticks), one point per model
    and format, every label inside the axes; returns the number of points."""
    from kdbench.report.figures import _pyplot, label_points, save_labelled

    plt = _pyplot()
    rows = [r for r in deploy_rows(records) if not math.isnan(r["auc"])]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"teacher_pytorch_fp32": "s", "pytorch_fp32": "o", "onnx_fp32": "^",
               "onnx_int8": "D", "onnx_int8_dynamic": "v"}
    for key, label in DISPLAY.items():
        pts = [r for r in rows if r["key"] == key]
        if pts:
            ax.scatter([r["b32"] for r in pts], [100 * r["auc"] for r in pts],
                       marker=markers[key], s=50, label=label)
    # a student's point: method/mode, with its student too when the store has several
    students = {r["run"].split("/")[0] for r in rows if not r["key"].startswith("teacher")}
    first = 0 if len(students) > 1 else 1
    names = [r["run"] if r["key"].startswith("teacher") else "/".join(r["run"].split("/")[first:3])
             for r in rows]
    ax.set_xscale("log")
    ax.set_xlabel("CPU latency at batch 32 (ms / image, log scale)")
    ax.set_ylabel("test AUC (%)")
    ax.set_title("Accuracy against latency of the deployed students")
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=8)
    labels = label_points(ax, [r["b32"] for r in rows], [100 * r["auc"] for r in rows], names)
    save_labelled(fig, ax, labels, out)
    return len(rows)
