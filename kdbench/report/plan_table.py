"""The table `kdbench run` ends with: the plan's teacher and each of its runs, over seeds."""

from __future__ import annotations

from pathlib import Path

from kdbench.report.listing import collect_runs
from kdbench.report.marks import cell_marks, mark_notes
from kdbench.report.tables import Report, metric_cell

METRICS = ("acc", "auc")


def plan_report(results: Path, runs: list[Path], teacher: Path | None) -> Report:
    """The teacher row (its kind and backbone) and one row per (student, method, mode) of
    ``runs``: test accuracy and AUC, mean ± std over the finished seeds."""
    df = collect_runs(results)
    rows: list[list] = []
    if teacher is not None:
        t = df[(df["path"] == str(teacher)) & (df["status"] == "finished")]
        if len(t):
            rows.append([f"teacher ({t['teacher_label'].iloc[0]})", "",
                         *[metric_cell(t, m) for m in METRICS]])
    order = {str(p): i for i, p in enumerate(runs)}  # the plan's order
    mine = df[df["path"].isin(set(order)) & (df["status"] == "finished")]
    mine = mine.assign(order=mine["path"].map(order)).sort_values("order")
    for (student, method, variant, mode), g in mine.groupby(
            ["student", "method", "variant", "mode"], sort=False, dropna=False):
        label = f"{method}@{variant}" if isinstance(variant, str) and variant else method
        rows.append([f"{student} {label}", mode,
                     *[cell_marks(metric_cell(g, m), g) for m in METRICS]])
    left = len(runs) - len(mine)
    notes = ["test accuracy and AUC in %, mean ± std over seeds (number of seeds)"]
    if left:
        notes.append(f"{left} of the plan's {len(runs)} runs not finished")
    notes += mark_notes(rows)
    return Report(f"this plan's runs in {results}", ["model", "mode", "acc", "auc"], rows, notes)
