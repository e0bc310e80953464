"""The resolution table: students that read a smaller, degraded input than their teacher
(``student.size``: run folders ``runs/<dataset>/<student>@<size>px/...``) beside the same
student at the data's size, per method and mode: input side, GFLOPs (recorded by each run),
PyTorch CPU latency of the student at that side (measured here, all sizes in one process, one
thread) and the test AUC, mean ± std over seeds."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.report.tables import Metrics, Report, metric_cell, metric_names

MAKE = ("train students at smaller inputs with `kdbench run --set student.size=32` (or `kdbench "
        "reproduce --resolution`)")
_PX = re.compile(r"^(\d+)px")


def _sides(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with ``base`` (the student's backbone) and ``side`` (its input side) columns."""
    runs = runs.copy()
    parts = runs["student"].astype(str).str.partition("@")
    runs["base"], tag = parts[0], parts[2]
    runs["side"] = [int(m.group(1)) if (m := _PX.match(t)) else None for t in tag]
    runs["degraded"] = tag
    return runs


def _data_side(runs: pd.DataFrame) -> int | None:
    """The data's side of the plain runs (from a finished run's recorded settings)."""
    from kdbench.report.listing import read_or_skip

    for path in runs["path"]:
        m = read_or_skip(Path(path) / "metrics.json") if (Path(path) / "metrics.json").is_file() \
            else None
        if isinstance(m, dict) and m.get("config"):
            return int(m["config"]["data"]["size"])
    return None


def resolution_report(runs: pd.DataFrame, metric: Metrics = "auc", measure: bool = True,
                      threads: int = 1) -> Report:
    """The resolution table of the store's run listing (see the module doc)."""
    runs = _sides(runs[(runs["status"] == "finished") & (runs["method"] != "teacher")])
    small = runs[runs["degraded"] != ""]
    if small.empty:
        raise KdbenchError("the store has no run of a student at a smaller input; " + MAKE)
    bases = set(small["base"])
    plain = runs[runs["base"].isin(bases) & (runs["degraded"] == "")]
    full = _data_side(plain) if not plain.empty else None
    small = small.assign(side=[s if s == s and s is not None else full for s in small["side"]])
    runs = pd.concat([small, plain.assign(side=full)])
    runs["degraded"] = runs["degraded"].fillna("")
    keys = sorted({(b, m, v, mo) for b, m, v, mo in zip(
        small["base"], small["method"], small["variant"].fillna(""), small["mode"])})
    latency = _latencies(sorted({(b, int(s)) for b, s in zip(runs["base"], runs["side"])
                                 if s == s and s is not None}), measure, threads)
    rows = []
    for base, method, variant, mode in keys:
        sel = runs[(runs["base"] == base) & (runs["method"] == method)
                   & (runs["variant"].fillna("") == variant) & (runs["mode"] == mode)]
        inputs = sorted({(int(s), t) for s, t in zip(sel["side"], sel["degraded"])
                         if s == s and s is not None}, key=lambda st: (-st[0], st[1]))
        for side, tag in inputs:
            chosen = sel[(sel["side"] == side) & (sel["degraded"] == tag)]
            gfl = chosen["gflops"].dropna()
            lat = latency.get((base, side), {})
            rows.append([base, f"{method}@{variant}" if variant else method, mode, str(side),
                         _degradation(tag),
                         f"{gfl.mean():.4f}" if len(gfl) else "-",
                         _ms(lat.get("latency_ms_b1")), _ms(lat.get("latency_ms_b32")),
                         metric_cell(chosen, metric)])
    label = " / ".join(m.upper() for m in metric_names(metric))
    notes = [f"{label}: test, in %, mean ± std over seeds (number of seeds); GFLOPs: recorded "
             "by each run at its input side",
             "ms b1, ms b32: PyTorch CPU latency per image of the student at that side, batch 1 "
             f"and 32, {threads} thread(s), measured in this process (the same machine and "
             "load for every side)" if measure else "latency not measured (measure=False)",
             f"the side {full} px rows are the plain runs of the data's size"
             if full else "no plain run of the data's size in the store"]
    return Report(f"Resolution: students at smaller inputs, {label}",
                  ["student", "method", "mode", "side (px)", "degraded", "GFLOPs", "ms b1",
                   "ms b32", label], rows, notes)


def _degradation(tag: str) -> str:
    """The blur / JPEG / noise part of a student's input tag ("-" for none)."""
    rest = [p for p in tag.split("-") if p and not _PX.match(p)]
    return ", ".join(rest) or "-"


def _ms(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _latencies(pairs: list[tuple[str, int]], measure: bool, threads: int
               ) -> dict[tuple[str, int], dict[str, float]]:
    if not measure or not pairs:
        return {}
    from kdbench.deploy.measure import latencies, torch_predictor, torch_threads
    from kdbench.models.students import create_student

    out = {}
    with torch_threads(threads):
        models = {b: create_student(b).eval() for b in {b for b, _ in pairs}}
        for base, side in pairs:
            out[(base, side)] = latencies(torch_predictor(models[base]), side, (20, 5))
    return out

