"""The frequency-view table: runs distilled from a teacher whose frequency branch reads the
wavelet view (run folders ``runs/<dataset>@view=dwt/...``, ``teacher.freq_view=dwt``) against
the same student, method and mode distilled from the DCT-view teacher (``runs/<dataset>/...``),
with the two teachers' own test results as the first rows. Each pair: mean ± std over seeds and
the paired two-level bootstrap interval of the difference (dwt - dct) under Holm's correction."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.report.intervals import holm, procedure_note
from kdbench.report.listing import read_or_skip
from kdbench.report.tables import (
    Metrics,
    Report,
    compared,
    interval_text,
    metric_cell,
    metric_names,
)

MAKE = ("train runs from a wavelet-view teacher with `kdbench run --methods METHOD --modes both "
        "--set teacher.freq_view=dwt` beside the same runs of the default teacher")


def _base(folder: str) -> tuple[str, str]:
    """(the folder without its view parts, the view parts) of a dataset folder name."""
    dataset, _, tag = folder.partition("@")
    parts = [p for p in tag.split(",") if p]
    view = [p for p in parts if p.split("=")[0] in ("view", "wavelet", "levels")]
    rest = [p for p in parts if p not in view]
    return (f"{dataset}@{','.join(rest)}" if rest else dataset), ",".join(view)


def _teacher_cell(sel: pd.DataFrame, results: Path, metric: Metrics):
    """The recorded test result of the teacher the runs of ``sel`` were distilled from (a
    string "-" when none is found)."""
    for path in sel["path"]:
        m = read_or_skip(Path(path) / "metrics.json") if (Path(path) / "metrics.json").is_file() \
            else None
        recorded = (m or {}).get("teacher")
        if recorded:
            folder = results / "teachers" / str(m["dataset"]) / Path(recorded).name
            t = read_or_skip(folder / "metrics.json") if (folder / "metrics.json").is_file() \
                else None
            if isinstance(t, dict) and isinstance(t.get("test"), dict):
                row = pd.DataFrame([{k: t["test"].get(k) for k in metric_names(metric)}])
                return metric_cell(row, metric)
    return "-"


def _pick(df: pd.DataFrame, student: str, method: str, variant: str, mode: str
          ) -> pd.DataFrame:
    return df[(df["student"] == student) & (df["method"] == method)
              & (df["variant"].fillna("") == variant) & (df["mode"] == mode)]


def views_report(runs: pd.DataFrame, results: Path, metric: Metrics = "auc") -> Report:
    """The frequency-view table of the store's run listing (see the module doc)."""
    runs = runs[(runs["status"] == "finished")].copy()
    bases = [_base(str(d)) for d in runs["dataset"]]
    runs["base"], runs["view"] = [b for b, _ in bases], [v for _, v in bases]
    other = runs[(runs["view"] != "") & (runs["method"] != "teacher")]
    if other.empty:
        raise KdbenchError("the store has no run distilled from a wavelet-view teacher; " + MAKE)
    first = metric_names(metric)[0]
    rows, comparisons, where = [], [], []
    for (base, view), side in other.groupby(["base", "view"], sort=True):
        plain = runs[(runs["dataset"] == base) & (runs["method"] != "teacher")]
        rows.append([f"{base} ({view})", "teacher", "both",
                     _teacher_cell(plain, Path(results), metric),
                     _teacher_cell(side, Path(results), metric), ""])
        keys = side.groupby(["student", "method", "variant", "mode"], dropna=False).groups
        for student, method, variant, mode in sorted(keys, key=str):
            variant = variant if isinstance(variant, str) else ""
            a, b = (_pick(df, student, method, variant, mode) for df in (side, plain))
            name = f"{method}@{variant}" if variant else method
            c = compared(a, b, first, label=f"{student} {name} {mode}")
            rows.append([f"{base} {student}", name, mode, metric_cell(b, metric),
                         metric_cell(a, metric), ""])
            if c is not None:
                comparisons.append(c)
                where.append((len(rows) - 1, c))
    holm(comparisons)
    for i, c in where:
        rows[i][-1] = f"{interval_text(c)}{c.mark}"
    label = " / ".join(m.upper() for m in metric_names(metric))
    notes = [f"{label}: test, in %, mean ± std over seeds (number of seeds); teacher rows: the "
             "teacher the runs were distilled from (one training)",
             f"Δ: {first.upper()} of the wavelet-view runs minus the DCT-view runs on the same "
             "test frames, paired by seed [difference; interval; t-test p]"]
    note = procedure_note(comparisons, "wavelet view against DCT view")
    if note:
        notes.append(note)
    return Report(f"Frequency view: DCT against wavelet teacher, {label}",
                  ["runs", "method", "mode", "DCT view", "wavelet view", "Δ wavelet - DCT"],
                  rows, notes)
