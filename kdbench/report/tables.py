"""Paper-shaped tables from the result store, with the spread over seeds.

A table is built as a :class:`Report` (column names, rows of cells, notes) from the run listing
(:func:`kdbench.report.listing.collect_runs`) and rendered as markdown, LaTeX or CSV.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.config import METRIC_NAMES, variant_tag
from kdbench.registry import report_specs
from kdbench.report.intervals import Comparison, holm, procedure_note, two_level_bootstrap
from kdbench.report.majority import fraction_from_predictions, majority_notes, split_fractions
from kdbench.report.marks import cell_marks, mark_notes
from kdbench.train.predictions import PREDICTIONS, Predictions, load_predictions

METRICS = METRIC_NAMES
Metrics = str | Sequence[str]  # one metric, or several shown side by side ("acc,auc")


@dataclass
class Cell:
    """mean +- std over ``n`` seeds (std is NaN for one seed), plus an optional mark; with
    ``parts``, one cell per metric shown side by side (``acc / auc``), its numbers the
    first's."""

    mean: float
    std: float
    n: int
    mark: str = ""
    interval: str = ""  # a paired difference and its interval, shown after the cell
    parts: list[Cell] = field(default_factory=list)
    metric: str = ""  # a part's metric
    flagged: list[tuple] = field(default_factory=list)  # its collapsed runs (report.marks)

    def text(self, scale: float = 100.0, count: bool = True) -> str:
        if self.parts:  # the number of seeds once when the metrics share it
            same = len({p.n for p in self.parts}) == 1
            values = " / ".join(p.text(scale, count=not same) for p in self.parts)
            return values + self.mark + (f" ({self.n})" if same and self.n else "")
        if self.n == 0 or math.isnan(self.mean):
            return "-"
        spread = "" if math.isnan(self.std) else f" ± {self.std * scale:.2f}"
        extra = f" {self.interval}" if self.interval else ""
        n = f" ({self.n})" if count else ""
        return f"{self.mean * scale:.2f}{spread}{self.mark}{n}{extra}"


@dataclass
class Report:
    title: str
    columns: list[str]
    rows: list[list[str | Cell]]
    notes: list[str] = field(default_factory=list)

    def text_rows(self) -> list[list[str]]:
        return [[c.text() if isinstance(c, Cell) else str(c) for c in row] for row in self.rows]

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(r) + " |" for r in self.text_rows()]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def latex(self) -> str:
        def esc(t: str) -> str:
            return (t.replace("\\", r"\textbackslash{}").replace("_", r"\_")
                    .replace("%", r"\%").replace("&", r"\&").replace("#", r"\#")
                    .replace("±", r"$\pm$").replace("↑", r"$\uparrow$")
                    .replace("↓", r"$\downarrow$"))

        n_text = sum(not isinstance(c, Cell) for c in self.rows[0]) if self.rows \
            else len(self.columns)
        spec = "l" * n_text + "r" * (len(self.columns) - n_text)
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(self.title)}}}",
                 rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                 " & ".join(esc(c) for c in self.columns) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) for c in r) + r" \\" for r in self.text_rows()]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        lines += [f"% {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """One line per cell with the numbers themselves (mean, std, n), for further analysis."""
        records = []
        for row in self.rows:
            keys = [c for c in row if not isinstance(c, Cell)]
            for col, c in zip(self.columns, row):
                if not isinstance(c, Cell):
                    continue
                for part in c.parts or [c]:  # a row per metric of a cell of several
                    metric = {"metric": part.metric} if c.parts else {}
                    records.append({**dict(zip(self.columns, keys)), "column": col, **metric,
                                    "mean": part.mean, "std": part.std, "n": part.n,
                                    "mark": part.mark + (c.mark if c.parts else "")})
        return pd.DataFrame(records).to_csv(index=False)

    def render(self, fmt: str) -> str:
        return {"md": self.markdown, "latex": self.latex, "csv": self.csv}[fmt]()

    def frame(self) -> pd.DataFrame:
        """The table as a DataFrame of its cells' text (``mean ± std (n)``)."""
        return pd.DataFrame(self.text_rows(), columns=self.columns)

    def __str__(self) -> str:
        return self.markdown()


def cell(values: pd.Series) -> Cell:
    v = values.dropna().astype(float)
    return Cell(float(v.mean()) if len(v) else math.nan,
                float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v))


def metric_names(metric: Metrics) -> list[str]:
    """``"acc"``, ``"acc,auc"`` or ``["acc", "auc"]`` -> the metric names, in order."""
    items = metric.split(",") if isinstance(metric, str) else list(metric)
    return list(dict.fromkeys(m.strip() for m in items if m.strip()))


def metric_cell(sel: pd.DataFrame, metric: Metrics) -> Cell:
    """The cell of ``metric`` over the runs of ``sel``; of several metrics, a cell of parts."""
    names = metric_names(metric)
    if len(names) == 1:
        return cell(sel[names[0]])
    parts = [cell(sel[m]) for m in names]
    for m, part in zip(names, parts):
        part.metric = m
    return Cell(parts[0].mean, parts[0].std, parts[0].n, parts=parts)


def _label(metric: Metrics) -> str:
    return " / ".join(metric_names(metric))


def seed_predictions(sel: pd.DataFrame) -> dict[int, Predictions] | None:
    """The stored test predictions of the finished runs in ``sel``, by seed (None when a run
    has none: it was made before kdbench kept them)."""
    done = sel[sel["status"] == "finished"]
    paths = {int(r.seed): Path(r.path) / PREDICTIONS for r in done.itertuples()}
    if not paths or not all(p.is_file() for p in paths.values()):
        return None
    return {seed: load_predictions(p) for seed, p in paths.items()}


def compared(a: pd.DataFrame, b: pd.DataFrame, metric: str, label: str = ""
             ) -> Comparison | None:
    """The two-level bootstrap of ``metric``(a) - ``metric``(b) over their shared seeds (None
    without stored predictions or a shared seed)."""
    pa, pb = seed_predictions(a), seed_predictions(b)
    if pa is None or pb is None or not set(pa) & set(pb):
        return None
    return two_level_bootstrap(pa, pb, metric, label=label)


def interval_text(c: Comparison) -> str:
    """``[d; lo, hi; t p]``: the difference in points, its Holm-level interval and, with 3
    seeds or more, the paired t-test's p over the seeds."""
    iv = c.interval()
    t = c.t_test
    return (f"[{iv.diff * 100:+.2f}; {iv.lo * 100:+.2f}, {iv.hi * 100:+.2f}"
            + (f"; t p={t:.2f}" if t is not None else "") + "]")


def incomplete_notes(runs: pd.DataFrame) -> list[str]:
    """One note per run folder that has no finished metrics (listed, never dropped silently)."""
    bad = runs[runs["status"] != "finished"]
    return [f"not finished: {r.path} ({r.status})" for r in bad.itertuples()]


def comparison(runs: pd.DataFrame, methods: list[str], metric: Metrics = "acc",
               ci: bool = False) -> Report:
    """Table 3: rows dataset x student; one column per method and mode the store holds (a
    teacher-free method's mode ``none`` is named by the method alone).

    Only runs with the registry's settings (no variant) count. ``methods`` fixes the column
    order (registry order); methods without any run are left out. A ``both`` cell is marked
    ↑/↓ when both - rgb is declared by the two-level bootstrap under Holm's correction across
    the table's comparisons (every both cell and metric); ``ci`` prints the intervals.
    """
    students = runs[(runs["method"] != "teacher") & (runs["variant"].fillna("") == "")]
    finished = students[students["status"] == "finished"]
    present = [m for m in methods if m in set(students["method"])]
    columns = ["dataset", "student"]
    pairs: list[tuple[str, str]] = []
    for m in present:
        for mode in ("none", "rgb", "both"):  # the modes the store holds for the method
            if ((students["method"] == m) & (students["mode"] == mode)).any():
                pairs.append((m, mode))
                columns.append(m if mode == "none" else f"{m} {mode}")
    rows, tests = [], []
    for (dataset, student), group in finished.groupby(["dataset", "student"], sort=True):
        cells, sels = {}, {}
        for m, mode in pairs:
            sels[(m, mode)] = group[(group["method"] == m) & (group["mode"] == mode)]
            cells[(m, mode)] = cell_marks(metric_cell(sels[(m, mode)], metric),
                                          sels[(m, mode)])
        for m, mode in pairs:
            if mode == "both" and (m, "rgb") in cells:
                for name, part in zip(metric_names(metric), cells[(m, mode)].parts
                                      or [cells[(m, mode)]]):
                    c = compared(sels[(m, mode)], sels[(m, "rgb")], name)
                    if c is not None:
                        tests.append((part, c))
        rows.append([dataset, student, *[cells[p] for p in pairs]])
    holm([c for _, c in tests])
    for part, c in tests:
        part.mark = c.mark + part.mark
        if ci:
            part.interval = interval_text(c)
    notes = [f"{_label(metric)} in %, mean ± std over seeds (number of seeds); runs without "
             "stored predictions are not marked."]
    notes += [procedure_note([c for _, c in tests], "both - rgb")] if tests else []
    notes += majority_notes(split_fractions(finished))
    if ci:
        notes.append("[d; lo, hi; t p]: both - rgb in points, its interval at its Holm level, "
                     "and the paired t-test's p over the seeds (3 seeds or more).")
    notes += incomplete_notes(students)
    return Report(f"Comparison (Table 3): test {_label(metric)}", columns, rows, notes)


# ---------------------------------------------------------------- tables from registry specs


def _students(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["method"] != "teacher"]


def _groups(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """The (dataset, student) pairs that have student runs, sorted."""
    s = _students(runs)
    return sorted(set(zip(s["dataset"], s["student"])))


def _select(runs: pd.DataFrame, dataset: str, student: str, method: str, mode: str,
            variant: str) -> pd.DataFrame:
    r = runs
    return r[(r["dataset"] == dataset) & (r["student"] == student) & (r["method"] == method)
             & (r["mode"] == mode) & (r["variant"].fillna("") == variant)]


def _finished_cell(sel: pd.DataFrame, metric: Metrics) -> Cell:
    done = sel[sel["status"] == "finished"]
    return cell_marks(metric_cell(done, metric), done)


def _majority(runs: pd.DataFrame, groups: list[tuple[str, str]]) -> list[str]:
    """The majority-rate note of the datasets of ``groups``."""
    return majority_notes(split_fractions(runs[runs["dataset"].isin({d for d, _ in groups})]))


def _variant(entry, dataset: str, changes: dict[str, Any]) -> str:
    return variant_tag(entry.hparams(dataset, changes), entry.hparams(dataset))


def _entries_with(registry: dict, kind: str) -> list:
    return [e for e in registry.values() if kind in e.reports]


def _sweeps_named(registry: dict, name: str) -> list[tuple[Any, dict]]:
    """(entry, spec) of each method declaring the sweep ``name`` (``reports.sweeps``)."""
    return report_specs(registry, "sweeps").get(name, [])


def _baselines(registry: dict) -> list:
    """Methods that run without a teacher (mode none): the "none" rows."""
    return [e for e in registry.values() if e.modes == ["none"]]


def ablation(runs: pd.DataFrame, registry: dict, metric: Metrics = "acc") -> Report:
    """Table 6: one row per ablation setting a method's registry ``reports.ablation`` lists,
    after the teacher-free baseline; one column per (dataset, student)."""
    groups = _groups(runs)
    columns = ["setting", *[f"{d} / {s}" for d, s in groups]]
    rows, used = [], []
    for base in _baselines(registry):
        rows.append([f"none ({base.name})", *[
            _finished_cell(_select(runs, d, s, base.name, "none", ""), metric)
            for d, s in groups]])
    for entry in _entries_with(registry, "ablation"):
        for spec in entry.reports["ablation"]:
            cells = []
            for d, s in groups:
                sel = _select(runs, d, s, entry.name, spec["mode"],
                              _variant(entry, d, spec.get("set") or {}))
                used.append(sel)
                cells.append(_finished_cell(sel, metric))
            rows.append([f"{spec['label']} ({entry.name} {spec['mode']})", *cells])
    notes = [f"{_label(metric)} in %, mean ± std over seeds (number of seeds).",
             *_majority(runs, groups)]
    if used:
        notes += incomplete_notes(pd.concat(used))
    return Report(f"Ablation (Table 6): test {_label(metric)}", columns, rows, notes)


def sweep_flags(spec: dict) -> list[str]:
    """The ``--sweep key=v1,v2`` options that train a declared sweep's runs."""
    return [f"--sweep {k}={','.join(map(str, v))}" for k, v in spec["sweep"].items()]


def sweep_command(entry, spec: dict) -> str:
    """The `kdbench run` that trains a method's declared sweep ``spec``."""
    return (f"kdbench run --methods {entry.name} --modes {spec['mode']} "
            + " ".join(sweep_flags(spec)))


def sweep(runs: pd.DataFrame, registry: dict, kind: str, metric: Metrics = "acc") -> Report:
    """The sweep table ``kind`` a method's registry declares (``reports.sweeps.<kind>``), e.g.
    Table 5 or Fig. 3 as a table: one row per value (combination) of the swept
    hyper-parameters."""
    groups = _groups(runs)
    declared = _sweeps_named(registry, kind)
    keys = sorted({k for _, spec in declared for k in spec["sweep"]})
    columns = ["method", *keys, *[f"{d} / {s}" for d, s in groups]]
    rows, used = [], []
    for entry, spec in declared:
        names = list(spec["sweep"])
        for combo in itertools.product(*(spec["sweep"][k] for k in names)):
            changes = dict(zip(names, combo))
            sels = [_select(runs, d, s, entry.name, spec["mode"], _variant(entry, d, changes))
                    for d, s in groups]
            used += sels
            rows.append([f"{entry.name} {spec['mode']}",
                         *[_value_used(k, changes[k], sels) if k in changes else ""
                           for k in keys], *[_finished_cell(sel, metric) for sel in sels]])
    notes = [f"{_label(metric)} in %, mean ± std over seeds (number of seeds); run with "
             + " ".join(f"`{flag}`" for _, spec in declared for flag in sweep_flags(spec)),
             *_majority(runs, groups)]
    if any("used)" in row[1 + i] for row in rows for i in range(len(keys))):
        notes.append("`v (u used)`: the method could not use v here and used u "
                     "(`run_info.<name>_effective` in the runs' metrics.json).")
    if used:
        notes += incomplete_notes(pd.concat(used))
    title = next((spec.get("title") for _, spec in declared if spec.get("title")), kind)
    return Report(f"{title}: test {_label(metric)}", columns, rows, notes)


def _value_used(key: str, value: Any, selections: list[pd.DataFrame]) -> str:
    """A swept value, with the value the finished runs really used where that differs."""
    used = sorted({str(info[f"{key}_effective"]) for sel in selections
                   for info in sel[sel["status"] == "finished"]["run_info"]
                   if f"{key}_effective" in info} - {str(value)})
    return f"{value} ({', '.join(used)} used)" if used else str(value)


def teacher_vs_student(runs: pd.DataFrame, registry: dict, metric: Metrics = "acc"
                       ) -> Report:
    """Table 4: the teacher-free student, the teacher (its kind and backbone) and the distilled
    student (each method with ``reports.teacher``), one column per (dataset, student)."""
    groups = _groups(runs)
    teachers = runs[(runs["method"] == "teacher") & (runs["status"] == "finished")]
    columns = ["model", *[f"{d} / {s}" for d, s in groups]]
    rows = [[f"{b.name} student", *[_finished_cell(_select(runs, d, s, b.name, "none", ""),
                                                   metric) for d, s in groups]]
            for b in _baselines(registry)]
    for label in sorted(set(teachers["teacher_label"].dropna())):  # one row per teacher kind
        mine = teachers[teachers["teacher_label"] == label]
        rows.append([f"teacher ({label})", *[metric_cell(mine[mine["dataset"] == d], metric)
                                             for d, _ in groups]])
    for entry in _entries_with(registry, "teacher"):
        mode = entry.reports["teacher"]["mode"]
        rows.append([f"{entry.name} {mode} student", *[
            _finished_cell(_select(runs, d, s, entry.name, mode, ""), metric)
            for d, s in groups]])
    notes = [f"{_label(metric)} in %, mean ± std over seeds (number of seeds); the teacher row "
             "counts the teachers trained for the dataset (one per teacher config).",
             *_majority(runs, groups)]
    return Report(f"Teacher vs student (Table 4): test {_label(metric)}", columns, rows, notes)


def build(kind: str, runs: pd.DataFrame, registry: dict, metric: Metrics = "acc",
          ci: bool = False) -> Report:
    """The table ``kind`` (comparison, ablation, teacher, cross, or a sweep the registry
    declares) from the run listing; ``metric``: one, or several shown as ``acc / auc`` in each
    cell (``"acc,auc"``); ``ci``: the comparison's paired intervals in its cells.
    Cells are marked † (a run distilled from other teacher weights than the stored ones), ⊘ (a
    collapsed run) and ≡ (seeds tied exactly), each with its note."""
    report = _build(kind, runs, registry, metric, ci)
    report.notes += mark_notes(report.rows)
    return report


def _build(kind: str, runs: pd.DataFrame, registry: dict, metric: Metrics,
           ci: bool) -> Report:
    if kind == "comparison":
        order = list(registry) + sorted(set(runs["method"]) - set(registry) - {"teacher"})
        return comparison(runs, order, metric, ci)
    if kind == "ablation":
        return ablation(runs, registry, metric)
    if kind == "teacher":
        return teacher_vs_student(runs, registry, metric)
    if kind == "cross":
        return cross(runs)
    if kind in ("weighting", "claims"):
        order = list(registry) + sorted(set(runs["method"]) - set(registry) - {"teacher"})
        if kind == "weighting":
            from kdbench.report.weighting import weighting

            return weighting(runs, order, metric)
        from kdbench.report.claims import claims

        return claims(runs, registry)
    if _sweeps_named(registry, kind):
        return sweep(runs, registry, kind, metric)
    raise ValueError(f"unknown table kind {kind!r}")


def cost(students: list[str], teacher_cfg: dict[str, Any], size: int, device,
         measure: bool = True) -> Report:
    """Table 1: parameters, GFLOPs (fvcore, one image at ``size``) and measured inference
    images/s on ``device`` for each student and the dual-branch teacher (inference path:
    the teacher without its projectors)."""
    import torch

    from kdbench.models.cost import count_params, gflops, images_per_s
    from kdbench.models.students import create_student
    from kdbench.models.teacher_build import architecture_teacher
    from kdbench.report.listing import teacher_label

    models = [(f"student {s}", create_student(s)) for s in students]
    teacher = architecture_teacher(teacher_cfg)
    models.append((f"teacher ({teacher_label(teacher.kind, teacher.name)})", teacher))
    rows = []
    for name, model in models:
        torch.manual_seed(0)
        rate = images_per_s(model, size, device) if measure else math.nan
        rows.append([name, f"{count_params(model) / 1e6:.2f}", f"{gflops(model, size):.3f}",
                     "-" if math.isnan(rate) else f"{rate:.1f}"])
    threads = torch.get_num_threads() if device.type == "cpu" else None
    where = f"{device}" + (f", {threads} thread{'s' * (threads != 1)}" if threads else "")
    notes = [f"{size} x {size} input; parameters in millions (the teacher's include its "
             "projectors and auxiliary heads); GFLOPs by fvcore (one multiply-add = one FLOP); "
             f"images/s measured on this machine ({where}), batch 16, best of 3."]
    return Report(f"Cost (Table 1) at {size} px", ["model", "params (M)", "GFLOPs",
                                                   "images/s"], rows, notes)


def cross(runs: pd.DataFrame) -> Report:
    """Table 7: AUC and EER of each (train dataset, student, method, mode) on every dataset it
    was tested on with `kdbench eval` (``<run>/cross/<dataset>.json``)."""
    from pathlib import Path

    from kdbench.report.listing import read_or_skip

    records, fractions = [], {}
    for r in _students(runs).itertuples():
        for path in sorted((Path(r.path) / "cross").glob("*.json")):
            rec = read_or_skip(path)
            if rec is None:
                continue
            fraction = rec["test"].get("fake_fraction")  # else the labels of its predictions
            if fraction is None:
                fraction = fraction_from_predictions([path.with_suffix(".npz")])
            fractions.setdefault(rec["test_dataset"], []).append(fraction)
            records.append({"train": r.dataset, "student": r.student,
                            "method": r.method + (f"@{r.variant}" if r.variant else ""),
                            "mode": r.mode, "seed": r.seed, "test_on": rec["test_dataset"],
                            "other_teacher": r.other_teacher,
                            **{k: rec["test"].get(k) for k in METRICS}})
    df = pd.DataFrame(records)
    targets = sorted(set(df["test_on"])) if len(df) else []
    columns = ["trained on", "student", "method", "mode",
               *[f"{t} {m}" for t in targets for m in ("AUC", "EER")]]
    rows = []
    if len(df):
        for key, group in df.groupby(["train", "student", "method", "mode"], sort=True):
            cells = []
            for t in targets:
                sel = group[group["test_on"] == t]
                cells += [cell_marks(cell(sel[m]), sel) for m in ("auc", "eer")]
            rows.append([*key, *cells])
    notes = ["AUC and EER in %, mean ± std over seeds (number of seeds); add a column with "
             "`kdbench eval <runs folder> --dataset <name>`.", *majority_notes(fractions)]
    return Report("Cross-dataset (Table 7)", columns, rows, notes)
