"""`kdbench table --kind claims`: each claim of a paper, the value the store measures with its
interval, and whether the store reproduces it (yes / no / untestable here, with the reason).

A method's registry entry declares its paper's claims (``reports.claims``), each with a
``test`` this module knows; the cells a claim names are the method's runs with the given mode
and hyper-parameters (``a``, ``b``: ``{method?, mode, set?}``), so no method is named here.
Every difference is a two-level bootstrap (:mod:`kdbench.report.intervals`) of test accuracy
(AUC for the cross-dataset test), read at 95 %; a claim of several comparisons (every baseline,
every alpha) corrects them with Holm.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.report.intervals import Comparison, holm, two_level_bootstrap
from kdbench.report.listing import read_or_skip
from kdbench.report.tables import Report, _variant, compared, seed_predictions
from kdbench.train.predictions import PREDICTIONS, load_predictions

METRIC = "acc"
Verdict = tuple[str, str, str]  # measured, reproduced, why


class _Group:
    """The finished runs of one (dataset, student) and the registry, for the tests."""

    def __init__(self, runs: pd.DataFrame, teachers: pd.DataFrame, registry: dict,
                 dataset: str, owner: str) -> None:
        self.runs, self.teachers, self.registry = runs, teachers, registry
        self.dataset, self.owner = dataset, owner

    def cell(self, spec: dict[str, Any]) -> pd.DataFrame:
        method = spec.get("method", self.owner)
        entry = self.registry.get(method)
        variant = (_variant(entry, self.dataset, dict(spec.get("set") or {}))
                   if entry is not None else "")
        r = self.runs
        return r[(r["method"] == method) & (r["mode"] == spec["mode"])
                 & (r["variant"].fillna("") == variant)]

    def name(self, spec: dict[str, Any]) -> str:
        extra = ",".join(f"{k}={v}" for k, v in (spec.get("set") or {}).items())
        return f"{spec.get('method', self.owner)} {spec['mode']}" + (f" ({extra})" if extra
                                                                      else "")


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def _diff_text(c: Comparison) -> str:
    iv = c.interval()
    n = len(c.seeds)
    return f"{_pts(iv.diff)} [{_pts(iv.lo)}, {_pts(iv.hi)}] ({n} seed{'s' * (n != 1)})"


def _missing(*names: str) -> Verdict:
    return "-", "untestable", f"no finished runs with stored predictions of {' / '.join(names)}"


def _above(g: _Group, row: dict) -> Verdict:
    a, b = g.cell(row["a"]), g.cell(row["b"])
    c = compared(a, b, METRIC)
    if c is None:
        return _missing(g.name(row["a"]), g.name(row["b"]))
    iv = c.interval()
    return (f"{g.name(row['a'])} - {g.name(row['b'])}: {_diff_text(c)}",
            "yes" if iv.lo > 0 else "no", "" if iv.lo > 0 else _why_not(iv.hi))


def _why_not(hi: float) -> str:
    return "the interval holds 0" if hi >= 0 else "the difference has the other sign"


def _others_both_below_rgb(g: _Group, row: dict) -> Verdict:
    tests = []
    for method in sorted(set(g.runs["method"]) - {g.owner}):
        c = compared(g.cell({"method": method, "mode": "both"}),
                     g.cell({"method": method, "mode": "rgb"}), METRIC, label=method)
        if c is not None:
            tests.append(c)
    if not tests:
        return _missing("other methods' rgb and both runs")
    holm(tests)
    down = [c.label for c in tests if c.marked and c.diff < 0]
    up = [c.label for c in tests if c.marked and c.diff > 0]
    mean = float(np.mean([c.diff for c in tests]))
    measured = (f"mean both - rgb {_pts(mean)}; lower in {len(down)} of {len(tests)}, higher in "
                f"{len(up)}" + (f" ({', '.join(up)})" if up else "") + " (Holm)")
    ok = not up and len(down) > len(tests) / 2
    return measured, "yes" if ok else "no", "" if ok else (
        "no baseline is lower in both mode with an interval clear of 0" if not down
        else f"only {len(down)} of {len(tests)} are lower" if not up
        else f"{len(up)} are higher in both mode")


def _best(g: _Group, row: dict) -> Verdict:
    a = g.cell(row["a"])
    defaults = g.runs[g.runs["variant"].fillna("") == ""]
    means = defaults.groupby(["method", "mode"])[METRIC].mean().sort_values(ascending=False)
    key = (row["a"].get("method", g.owner), row["a"]["mode"])
    if key not in means or len(means) < 2:
        return _missing(g.name(row["a"]))
    rank = list(means.index).index(key) + 1
    rival = next(k for k in means.index if k != key)
    c = compared(a, g.cell({"method": rival[0], "mode": rival[1]}), METRIC)
    if c is None:
        return _missing(g.name(row["a"]), " ".join(rival))
    iv = c.interval()
    ok = rank == 1 and iv.lo > 0
    return (f"rank {rank} of {len(means)} by mean; - {' '.join(rival)}: {_diff_text(c)}",
            "yes" if ok else "no", "" if ok else (f"{' '.join(rival)} is higher by mean"
                                                  if rank > 1 else "the interval holds 0"))


def _above_teacher(g: _Group, row: dict) -> Verdict:
    a = seed_predictions(g.cell(row["a"]))
    t = g.teachers[g.teachers["dataset"] == g.dataset]
    paths = [Path(p) / PREDICTIONS for p in t["path"] if (Path(p) / PREDICTIONS).is_file()]
    if a is None or len(paths) != 1:
        return _missing(g.name(row["a"]), "one stored teacher")
    teacher = load_predictions(paths[0])
    c = two_level_bootstrap(a, {s: teacher for s in a}, METRIC)
    iv = c.interval()
    return (f"student - teacher: {_diff_text(c)}", "yes" if iv.lo > 0 else "no",
            "" if iv.lo > 0 else _why_not(iv.hi))


def _ablation_rows(g: _Group) -> list[dict]:
    entry = g.registry[g.owner]
    return [{"mode": r["mode"], "set": r.get("set") or {}, "label": r["label"]}
            for r in entry.reports.get("ablation", [])]


def _best_ablation(g: _Group, row: dict) -> Verdict:
    rows = [r for r in _ablation_rows(g) if not g.cell(r).empty]
    target = g.cell(row["a"])
    if target.empty or len(rows) < 2:
        return _missing("the ablation rows")
    others = [r for r in rows if not g.cell(r)["path"].isin(target["path"]).all()]
    best = max(others, key=lambda r: g.cell(r)[METRIC].mean())
    c = compared(target, g.cell(best), METRIC)
    if c is None:
        return _missing(g.name(row["a"]), best["label"])
    iv = c.interval()
    ok = iv.lo > 0
    return (f"- {best['label']} (the best other row): {_diff_text(c)}", "yes" if ok else "no",
            "" if ok else _why_not(iv.hi))


def _sweep_cells(g: _Group, row: dict) -> tuple[str, list[tuple[Any, pd.DataFrame]]]:
    spec = g.registry[g.owner].reports["sweeps"][row["sweep"]]
    key = next(iter(spec["sweep"]))
    return key, [(v, g.cell({"mode": spec["mode"], "set": {key: v}})) for v in spec["sweep"][key]]


def _effective(sel: pd.DataFrame, key: str, value: Any) -> Any:
    used = {str(i.get(f"{key}_effective")) for i in sel["run_info"] if f"{key}_effective" in i}
    return used.pop() if len(used) == 1 else value


def _peak(g: _Group, row: dict) -> Verdict:
    key, cells = _sweep_cells(g, row)
    target = row["value"][key]
    cells = [(v, s) for v, s in cells if not s.empty]
    if len(cells) < 3:
        return _missing(f"the {row['sweep']} sweep")
    used = {str(v): _effective(s, key, v) for v, s in cells}
    clamped = [v for v, s in cells if str(used[str(v)]) != str(v)]
    if clamped:
        ran = ", ".join(f"{key}={v} ran as {key}={used[str(v)]}" for v in clamped)
        return ("-", "untestable", f"{ran} (clamped to what the store's input size "
                f"allows), so the values around {key}={target} cannot be told apart")
    means = {str(v): s[METRIC].mean() for v, s in cells}
    best = max(means, key=means.get)
    last = str(cells[-1][0])
    c = compared(dict(cells).get(target, cells[0][1]), cells[-1][1], METRIC)
    measured = ", ".join(f"{v}: {100 * m:.2f}" for v, m in means.items())
    ok = best == str(target) and c is not None and c.interval().lo > 0
    return (measured + (f"; {key}={target} - {key}={last}: {_diff_text(c)}" if c else ""),
            "yes" if ok else "no", "" if ok else f"the highest mean is at {key}={best}"
            if best != str(target) else "the drop after the peak has an interval holding 0")


def _flat(g: _Group, row: dict) -> Verdict:
    key, cells = _sweep_cells(g, row)
    target = next(s for v, s in cells if str(v) == str(row["value"][key]))
    tests = [c for v, s in cells if str(v) != str(row["value"][key])
             if (c := compared(s, target, METRIC, label=f"{key}={v}")) is not None]
    if not tests:
        return _missing(f"the {row['sweep']} sweep")
    holm(tests)
    moved = [c.label for c in tests if c.marked]
    spread = [c.diff for c in tests]
    measured = (f"vs {key}={row['value'][key]}: {_pts(min(spread))} ... {_pts(max(spread))}; "
                f"{len(moved)} of {len(tests)} differ (Holm)")
    return measured, "yes" if not moved else "no", "" if not moved else \
        f"{', '.join(moved)} differ"


def _trace_means(sel: pd.DataFrame, trace: str, field: str) -> list[float]:
    means = []
    for path in sel["path"]:
        rows = read_or_skip(Path(path) / f"{trace}.jsonl", lines=True) or []
        values = [float(r[field]) for r in rows if r.get(field) is not None]
        if values:
            means.append(float(np.mean(values)))
    return means


def _seed_interval(values: list[float], n_boot: int = 2000) -> tuple[float, float, float]:
    """The mean of per-run values and its bootstrap interval over the runs."""
    v = np.asarray(values)
    rng = np.random.default_rng(0)
    reps = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(v.mean()), float(lo), float(hi)


def _trace(g: _Group, row: dict, negative: bool) -> Verdict:
    values = _trace_means(g.cell(row["a"]), row["trace"], row["field"])
    if len(values) < 2:
        return ("-", "untestable", f"{len(values)} run{'s' * (len(values) != 1)} of "
                f"{g.name(row['a'])} with {row['field']} in {row['trace']}.jsonl; an interval "
                "needs two or more")
    mean, lo, hi = _seed_interval(values)
    n = len(values)
    measured = f"{row['field']} {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] ({n} run{'s' * (n != 1)})"
    if negative:
        return measured, "yes" if hi < 0 else "no", "" if hi < 0 else (
            "positive: the terms agree here" if lo > 0 else "the interval holds 0")
    tol = float(row.get("tolerance", 0.1))
    ok = -tol <= lo and hi <= tol
    return measured, "yes" if ok else "no", "" if ok else f"not within ±{tol}"


def _cross_above(g: _Group, row: dict) -> Verdict:
    out = []
    sides = [g.cell(row["a"]), g.cell(row["b"])]
    found: list[dict[str, dict[int, Any]]] = [{}, {}]
    for side, sel in zip(found, sides):
        for r in sel.itertuples():
            for npz in sorted((Path(r.path) / "cross").glob("*.npz")):
                side.setdefault(npz.stem, {})[int(r.seed)] = load_predictions(npz)
    targets = sorted(set(found[0]) & set(found[1]))
    if not targets:
        return ("-", "untestable", "no cross-dataset test of both cells (`kdbench eval`, or "
                "`--cross-dataset` when training)")
    tests = [two_level_bootstrap(found[0][t], found[1][t], "auc", label=t) for t in targets]
    holm(tests)
    for c in tests:
        out.append(f"{c.label} AUC {g.name(row['a'])} - {g.name(row['b'])}: {_diff_text(c)}")
    ok = all(c.marked and c.diff > 0 for c in tests)
    return "; ".join(out), "yes" if ok else "no", "" if ok else "the interval holds 0 or is " \
        "below it"


TESTS: dict[str, Callable[[_Group, dict], Verdict]] = {
    "above": _above, "others_both_below_rgb": _others_both_below_rgb, "best": _best,
    "above_teacher": _above_teacher, "best_ablation": _best_ablation, "peak": _peak,
    "flat": _flat, "trace_negative": lambda g, r: _trace(g, r, True),
    "trace_near_zero": lambda g, r: _trace(g, r, False), "cross_above": _cross_above,
}


def claims(runs: pd.DataFrame, registry: dict) -> Report:
    """One row per declared claim and (dataset, student) of the store."""
    done = runs[runs["status"] == "finished"]
    students = done[done["method"] != "teacher"]
    teachers = done[done["method"] == "teacher"]
    rows = []
    for owner, entry in registry.items():
        for row in entry.reports.get("claims", []):
            for (dataset, student), group in students.groupby(["dataset", "student"]):
                g = _Group(group, teachers, registry, dataset, owner)
                try:
                    measured, verdict, why = TESTS[row["test"]](g, row)
                except (KdbenchError, KeyError, StopIteration, ValueError) as exc:
                    measured, verdict, why = "-", "untestable", f"cannot test: {exc}"
                rows.append([row["claim"], f"{dataset} / {student}", row.get("paper", ""),
                             measured, verdict + (f": {why}" if why else "")])
    notes = [f"Differences in points of test {METRIC} (cross-dataset: AUC): a two-level bootstrap "
             "(seeds, then identity pairs of test videos) read at 95 %; a claim of several "
             "comparisons corrects them with Holm. A trace's value: the mean over runs of each "
             "run's mean record, with a bootstrap over the runs. 'paper': the paper's own "
             "figure, on its data (FF++ c40 / Celeb-DF at 299 px).",
             "reproduced: yes when the claimed direction's interval is clear of 0, no "
             "otherwise; untestable when the store lacks the runs or cannot test it (the "
             "reason follows)."]
    if not rows:
        notes.append("no registry method declares claims (reports.claims), or the store has "
                     "no finished runs")
    return Report("The paper's claims on this store", ["claim", "dataset / student", "paper",
                                                       "measured", "reproduced"], rows, notes)
