"""`kdbench table --kind weighting`: Table 3 read both ways. ``both`` mode adds a second
distillation term at the method's weight (``both_weighting: sum``, the paper's), so "both vs
rgb" mixes frequency knowledge with more distillation; ``both_weighting: mean`` halves each
branch's term, so the total distillation weight equals rgb mode's. One row per method that has
mean runs: rgb, both (sum), both (mean), and both - rgb under each weighting with its interval.
"""

from __future__ import annotations

import pandas as pd

from kdbench.config import variant_tag
from kdbench.report.intervals import holm, procedure_note
from kdbench.report.marks import cell_marks
from kdbench.report.tables import (
    Metrics,
    Report,
    _label,
    compared,
    incomplete_notes,
    interval_text,
    metric_cell,
    metric_names,
)

MEAN = variant_tag({"both_weighting": "mean"}, {})  # the mean runs' folder tag


def weighting(runs: pd.DataFrame, methods: list[str], metric: Metrics = "acc") -> Report:
    """Rows (dataset, student, method) of every method with ``both_weighting=mean`` runs;
    columns rgb, both sum, both mean and, per metric, both - rgb under each weighting (the
    difference and its interval at its Holm level, Holm across the table's comparisons)."""
    students = runs[runs["method"] != "teacher"]
    done = students[students["status"] == "finished"]
    names = metric_names(metric)
    columns = ["dataset", "student", "method", "rgb", "both (sum)", "both (mean)",
               *[f"both - rgb, {w} ({m})" for m in names for w in ("sum", "mean")]]
    rows, tests = [], []
    with_mean = set(done[done["variant"].fillna("") == MEAN]["method"])
    order = [m for m in methods if m in with_mean] + sorted(with_mean - set(methods))
    used = []
    for (dataset, student), group in students.groupby(["dataset", "student"], sort=True):
        for method in order:
            mine = group[group["method"] == method]
            variant = mine["variant"].fillna("")
            sels = {"rgb": mine[(mine["mode"] == "rgb") & (variant == "")],
                    "sum": mine[(mine["mode"] == "both") & (variant == "")],
                    "mean": mine[(mine["mode"] == "both") & (variant == MEAN)]}
            if sels["mean"].empty:
                continue
            used += list(sels.values())  # unfinished ones too: the notes name them
            sels = {k: sel[sel["status"] == "finished"] for k, sel in sels.items()}
            cells = [cell_marks(metric_cell(sels[k], metric), sels[k])
                     for k in ("rgb", "sum", "mean")]
            diffs = []
            for m in names:
                for w in ("sum", "mean"):
                    c = compared(sels[w], sels["rgb"], m, label=f"{method} {w} {m}")
                    diffs.append(c)
                    if c is not None:
                        tests.append(c)
            rows.append([dataset, student, method, *cells, *diffs])
    holm(tests)
    rows = [[*row[:6], *["-" if c is None else interval_text(c) + c.mark for c in row[6:]]]
            for row in rows]
    notes = [f"{_label(metric)} in %, mean ± std over seeds (number of seeds); both (sum): "
             "each branch's term at the method's weight (the paper's; Table 3's both); both "
             "(mean): each at half weight (`--sweep both_weighting=mean`), so the total "
             "distillation weight equals rgb mode's. [d; lo, hi; t p]: both - rgb in points, "
             "its interval at its Holm level, the paired t-test's p over the seeds."]
    if tests:
        notes.append(procedure_note(tests, "both - rgb"))
    if not rows:
        notes.append("no both_weighting=mean runs in this store: `kdbench run --methods M "
                     "--modes both --sweep both_weighting=mean`")
    if used:
        notes += incomplete_notes(pd.concat(used))
    return Report(f"Both modes' weighting (Table 3 read both ways): test {_label(metric)}",
                  columns, rows, notes)
