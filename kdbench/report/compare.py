"""`kdbench compare A B`: two cells of the store, the paired difference of each metric."""

from __future__ import annotations

import pandas as pd

from kdbench.errors import KdbenchError, did_you_mean
from kdbench.report.paired import paired_bootstrap
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
    """One row per metric: A and B (mean ± std over seeds) and A - B with its 95 % paired
    bootstrap interval over the seeds both cells ran."""
    sa, sb = _cell_runs(runs, a), _cell_runs(runs, b)
    pa, pb = seed_predictions(sa), seed_predictions(sb)
    if pa is None or pb is None:
        raise KdbenchError(f"{a if pa is None else b} has runs without predictions.npz (made "
                           "before kdbench kept per-frame predictions); run them again with "
                           "--restart")
    rows: list[list] = []
    seeds: tuple[int, ...] = ()
    for metric in metrics:
        iv = paired_bootstrap(pa, pb, metric, n_boot=n_boot)
        seeds = iv.seeds
        verdict = "no difference"
        if iv.excludes_zero:
            verdict = "A higher" if iv.diff > 0 else "A lower"
        rows.append([metric, cell(sa[metric]), cell(sb[metric]), iv.text(), verdict])
    notes = [f"A = {a}, B = {b}; % over the seeds both ran ({', '.join(map(str, seeds))}); "
             f"A - B [95 % interval]: paired bootstrap over test videos, {n_boot} resamples, "
             "seeds paired and pooled; 'no difference' when the interval contains 0."]
    return Report(f"{a} vs {b}", ["metric", "A", "B", "A - B [95 % CI]", "verdict"], rows,
                  notes)
