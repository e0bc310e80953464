"""`kdbench compare A B`: two cells of the store, the paired difference of each metric."""

from __future__ import annotations

import pandas as pd

from kdbench.errors import KdbenchError, did_you_mean
from kdbench.report.intervals import holm, procedure_note, two_level_bootstrap
from kdbench.report.marks import cell_marks, mark_notes
from kdbench.report.tables import Report, cell, seed_predictions


def _cell_runs(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    """The finished student runs of the cell ``<label>/<mode>`` (label = method[@variant])."""
    students = runs[(runs["method"] != "teacher") & (runs["status"] == "finished")]
    labels = [f"{m}@{v}/{mode}" if v else f"{m}/{mode}" for m, v, mode in
              zip(students["method"], students["variant"].fillna(""), students["mode"])]
    known = sorted(set(labels))
    if name not in known:
        raise KdbenchError(f"no finished runs of {name!r}{did_you_mean(name, known)}; the store "
                           f"has {', '.join(known) or 'none'} (<label>/<mode>)")
    sel = students[[label == name for label in labels]]
    groups = sorted(set(zip(sel["dataset"], sel["student"])))
    if len(groups) > 1:
        raise KdbenchError(f"{name} has runs of several datasets or students "
                           f"({', '.join('/'.join(g) for g in groups)}); pick one with "
                           "--dataset and --student")
    return sel


def compare_cells(runs: pd.DataFrame, a: str, b: str, metrics: list[str],
                  n_boot: int) -> Report:
    """One row per metric: A and B (mean ± std over seeds), A - B with its two-level bootstrap
    interval (seeds, then test clusters) over the seeds both cells ran, Holm-corrected across
    the metrics, and the paired t-test over seeds."""
    sa, sb = _cell_runs(runs, a), _cell_runs(runs, b)
    pa, pb = seed_predictions(sa), seed_predictions(sb)
    if pa is None or pb is None:
        raise KdbenchError(f"{a if pa is None else b} has runs without predictions.npz (made "
                           "before kdbench kept per-frame predictions); run them again with "
                           "--restart")
    tests = holm([two_level_bootstrap(pa, pb, metric, n_boot=n_boot) for metric in metrics])
    rows: list[list] = []
    for metric, c in zip(metrics, tests):
        verdict = "no difference"
        if c.marked:
            verdict = "A higher" if c.diff > 0 else "A lower"
        t = c.t_test
        rows.append([metric, cell_marks(cell(sa[metric]), sa), cell_marks(cell(sb[metric]), sb),
                     c.text(), "-" if t is None else f"{t:.3f}", verdict])
    seeds = ", ".join(map(str, tests[0].seeds)) if tests else ""
    notes = [f"A = {a}, B = {b}; % over the seeds both ran ({seeds}); A - B [interval]: "
             "'no difference' when the interval holds 0; t p: the paired t-test over the "
             "seeds (3 seeds or more).", procedure_note(tests, "A - B")]
    notes += mark_notes(rows)
    return Report(f"{a} vs {b}", ["metric", "A", "B", "A - B [interval]", "t p", "verdict"],
                  rows, notes)
