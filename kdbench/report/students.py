"""The students table: each student's test AUC per method beside its cost (parameters, GFLOPs
and int8 latency), so a student is picked for a device."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.report.deploy import deploy_records
from kdbench.report.marks import cell_marks, mark_notes
from kdbench.report.tables import Cell, Report, metric_cell


def _int8_latency(records: list[dict[str, Any]]) -> dict[str, tuple[float, float, int]]:
    """By student: (ms/img at batch 1, at batch 32, threads) of its ONNX int8 model, the
    median over its quantized runs (every run of one student has the same graph)."""
    found: dict[str, list[tuple[float, float, int]]] = {}
    for rec in records:
        int8 = rec["formats"].get("onnx_int8")
        if int8 is None or "latency_ms_b1" not in int8:
            continue
        student = str(rec.get("label", "")).split("/")[0]
        found.setdefault(student, []).append(
            (int8["latency_ms_b1"], int8.get("latency_ms_b32", math.nan), rec.get("threads", 0)))
    out = {}
    for student, rows in found.items():
        rows.sort()
        out[student] = rows[len(rows) // 2]
    return out


def students_report(runs: pd.DataFrame, results: Path, methods: list[str],
                    metric: list[str] | str = "auc") -> Report:
    """One row per (dataset, student): parameters (M) and GFLOPs of the student (from its runs'
    metrics), its ONNX int8 latency (from ``kdbench quantize --int8``), and ``metric`` of each
    method and mode that every listed student has (registry settings only), mean ± std over
    seeds."""
    students = runs[(runs["method"] != "teacher") & (runs["variant"].fillna("") == "")]
    done = students[students["status"] == "finished"]
    present = [m for m in methods if m in set(done["method"])]
    groups = [g for _, g in done.groupby(["dataset", "student"])]
    pairs = [(m, mode) for m in present for mode in ("none", "rgb", "both")
             if all(((g["method"] == m) & (g["mode"] == mode)).any() for g in groups)]
    latency = _int8_latency(deploy_records(results))
    columns = ["dataset", "student", "params (M)", "GFLOPs", "int8 ms/img b1", "int8 ms/img b32",
               *[m if mode == "none" else f"{m} {mode}" for m, mode in pairs]]
    rows: list[list[str | Cell]] = []
    order = done.assign(p=done["params"].astype(float)).sort_values(["dataset", "p"])
    for (dataset, student), group in order.groupby(["dataset", "student"], sort=False):
        lat = latency.get(student)
        rows.append([dataset, student, f"{group['params'].iloc[0] / 1e6:.2f}",
                     f"{group['gflops'].iloc[0]:.3f}",
                     f"{lat[0]:.2f}" if lat else "-", f"{lat[1]:.2f}" if lat else "-",
                     *[_cell(group[(group["method"] == m) & (group["mode"] == mode)], metric)
                       for m, mode in pairs]])
    threads = sorted({v[2] for v in latency.values()})
    names = [metric] if isinstance(metric, str) else list(metric)
    notes = [f"{' / '.join(names)} in %, mean ± std over seeds (number of seeds), the methods "
             "and modes every listed student has; parameters and GFLOPs (fvcore, one "
             "multiply-add = one FLOP) of the student at its run's input size, as recorded in "
             "its metrics.json.",
             "int8 ms/img: the median over the student's quantized runs of the ONNX int8 "
             "model's latency (onnxruntime CPU, median of timed batches of 1 and of 32 after "
             "warm-up" + (f", {'/'.join(map(str, threads))} threads" if threads else "")
             + "); '-': no run of the student quantized yet (`kdbench quantize RUN --int8`)."]
    notes += mark_notes(rows)
    return Report(f"Students: test {' / '.join(names)} beside their cost", columns, rows, notes)


def _cell(sel: pd.DataFrame, metric: list[str] | str) -> Cell:
    return cell_marks(metric_cell(sel, metric), sel)
