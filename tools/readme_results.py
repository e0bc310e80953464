"""Write README's "Reference results" section from the committed result store.

Every number in that section is read from ``results/`` through the code behind `kdbench table`
and `kdbench plot gradsim`, or copied from the files `kdbench reproduce` wrote there;
``tests/test_readme_results.py`` fails when README and store disagree.

    python tools/readme_results.py          # rewrite the section in README.md
"""

from __future__ import annotations

import math
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from kdbench.files import read_json, read_jsonl
from kdbench.registry import load_registry
from kdbench.report import tables
from kdbench.report.listing import collect_runs
from kdbench.report.traces import trace_summary

ROOT = Path(__file__).resolve().parents[1]
START, END = "## Reference results", "## Tests and benchmarks"
COMMAND = "kdbench reproduce --preset cpu --seeds 0,1,2 --results results"
TABLES = ("ablation", "rotation", "alpha", "teacher")


def _setting(results: Path) -> str:
    """The preset's data and training settings, read from a run's metrics.json."""
    m = read_json(next(iter(sorted((results / "runs").rglob("metrics.json")))))
    cfg = m["config"]
    return (f"`{m['preset']}` preset: {cfg['data']['size']} px, {cfg['data']['frames']} frames "
            f"per video, {cfg['train']['epochs']} epochs; {m['student']} student, dual-branch "
            f"teacher of two {cfg['teacher']['backbone']} branches")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _stretches(items: list, span, gap: timedelta = timedelta(0)) -> list[list]:
    """``items`` grouped into stretches of time: an item whose ``span(item)`` = (start, end)
    begins before the stretch so far ends (plus ``gap``) joins it."""
    groups: list[list] = []
    last_end = None
    for item in sorted(items, key=lambda i: span(i)[0]):
        start, end = span(item)
        if groups and start < last_end + gap:
            groups[-1].append(item)
            last_end = max(last_end, end)
        else:
            groups.append([item])
            last_end = end
    return groups


def _when(start: datetime, end: datetime) -> str:
    until = f"{end:%H:%M}" if end.date() == start.date() else f"{end:%Y-%m-%d %H:%M}"
    return f"{start:%Y-%m-%d %H:%M}-{until} UTC"


def _sessions(results: Path) -> list[str]:
    """One line per group of `kdbench reproduce` invocations whose times overlap (processes
    run side by side on one store), from ``results/reproduce.jsonl``."""
    log = results / "reproduce.jsonl"
    records = read_jsonl(log) if log.is_file() else []
    lines = []
    for g in _stretches(records, lambda r: (datetime.fromisoformat(r["started_at"]),
                                            datetime.fromisoformat(r["finished_at"]))):
        start = datetime.fromisoformat(min(r["started_at"] for r in g))
        end = datetime.fromisoformat(max(r["finished_at"] for r in g))
        commands = sorted({r["command"] for r in g})
        machine = ", ".join(sorted({f"{r['cpu_count']} cores, {r['torch_threads']} torch "
                                    f"thread{'s' * (r['torch_threads'] != 1)}" for r in g}))
        lines.append(
            f"- {len(g)} process{'es' * (len(g) > 1)} of `{'`, `'.join(commands)}` ({machine}"
            f"{' each' * (len(g) > 1)}), {_when(start, end)}: "
            f"**{_duration((end - start).total_seconds())}** wall; trained "
            f"{sum(r['trained'] for r in g)} runs, found {min(r['finished_before'] for r in g)} "
            "finished.")
    return lines


GAP = timedelta(minutes=5)  # a pause longer than this between runs starts a new stretch


def _training_spans(runs: pd.DataFrame) -> list[str]:
    """One line per stretch of time in which runs that record `finished_at` followed each
    other without a pause over GAP (started = finished_at - wall_time_s; the pause between two
    runs is the teacher cache being filled): its wall time, runs and peak concurrency."""
    timed = runs.dropna(subset=["finished_at", "wall_s"])
    spans = [(datetime.fromisoformat(f) - timedelta(seconds=float(w)),
              datetime.fromisoformat(f), float(w))
             for f, w in zip(timed["finished_at"], timed["wall_s"])]
    lines = []
    for g in _stretches(spans, lambda sp: sp[:2], GAP):
        start, end = g[0][0], max(e for _, e, _ in g)
        peak = max(sum(s <= t < e for s, e, _ in g) for t, _, _ in g)
        lines.append(f"- {_when(start, end)}: {len(g)} runs, at most {peak} at a time: "
                     f"**{_duration((end - start).total_seconds())}** wall "
                     f"({sum(w for _, _, w in g) / 60:.0f} min of run time).")
    return lines


def _both_vs_rgb(report: tables.Report) -> list[str]:
    """For each method with rgb and both cells: both - rgb against the combined std."""
    lines = []
    for row in report.rows:
        cells = dict(zip(report.columns, row))
        where = f"{cells['dataset']}/{cells['student']} " if len(report.rows) > 1 else ""
        for col in report.columns:
            rgb_col = col.removesuffix(" both") + " rgb"
            if not col.endswith(" both") or rgb_col not in cells:
                continue
            both, rgb = cells[col], cells[rgb_col]
            if both.n == 0 or rgb.n == 0:
                continue
            diff = 100 * (both.mean - rgb.mean)
            noise = 100 * math.hypot(both.std, rgb.std)
            verdict = ("fewer than 2 seeds, no std" if math.isnan(noise)
                       else f"beyond the combined std {noise:.2f}" if abs(diff) > noise
                       else f"within the combined std {noise:.2f}")
            lines.append(f"{where}{col.removesuffix(' both')} {diff:+.2f} ({verdict})")
    return lines


def _earlier_teacher_runs(results: Path) -> list[str]:
    """Distillation runs made at another commit than the committed teacher, before runs
    recorded `teacher_test`: they distilled from an earlier teacher."""
    commits = {read_json(p).get("git_commit")
               for p in (results / "teachers").rglob("metrics.json")}
    seeds: dict[str, list[int]] = {}
    for path in sorted((results / "runs").rglob("metrics.json")):
        m = read_json(path)
        if m.get("mode") in (None, "none") or m.get("teacher_test") \
                or m.get("git_commit") in commits:
            continue
        label = m["method"] + (f"@{m['variant']}" if m.get("variant") else "") + f" {m['mode']}"
        seeds.setdefault(label, []).append(int(m["seed"]))
    return [f"{label} (seed {', '.join(map(str, sorted(v)))})" for label, v in seeds.items()]


def _gradsim_lines(results: Path, registry: dict) -> list[str]:
    """The mean gradient cosine of each curve of `kdbench plot gradsim`."""
    df = trace_summary(results, "gradsim", registry)
    panels = [c for c in df.columns if c.startswith("mean ")]
    return [f"`{r['curve']}`: mean cosine "
            + ", ".join(f"{c[5:]} {r[c]:+.3f}" for c in panels)
            + f" ({r['seeds']} seed{'s' * (r['seeds'] != 1)}, {r['records']} records)"
            for _, r in df.iterrows()]


def _mean_term(results: Path, label: str, key: str = "train_loss_kd_freq") -> float | None:
    """The mean of a loss term over all epochs and seeds of the runs in folder ``label``
    (e.g. ``tokd@d=128``) in both mode."""
    vals = [r[key] for path in sorted((results / "runs").glob(f"*/*/{label}/both/seed*/"
                                                                "history.jsonl"))
            for r in read_jsonl(path) if key in r]
    return sum(vals) / len(vals) if vals else None


def _weakest_cell(results: Path, acc: tables.Report, rotation: tables.Report,
                  ablation: tables.Report) -> str:
    """Why TOKD both is the weakest cell, in two sentences of the store's own numbers: what
    the rotation-size and ablation runs separate, and what they rule out."""
    cols = dict(zip(acc.columns, acc.rows[0])) if acc.rows else {}
    both, rgb = cols.get("tokd both"), cols.get("tokd rgb")
    full = _mean_term(results, "tokd")
    norot_row = next((r for r in ablation.rows if str(r[0]).startswith("RGB + Fre + projector "
                                                                       "(")), None)
    parts = [(str(r[1]), r[2]) for r in rotation.rows
             if isinstance(r[2], tables.Cell) and r[2].n and "used)" not in str(r[1])
             and r[2].mean != (both.mean if both else None)]
    if not (both and rgb and norot_row and parts and full is not None):
        return ""
    norot = norot_row[1]
    better = [d for d, c in parts if c.mean > both.mean]
    d128, norot_term = _mean_term(results, "tokd@d=128"), _mean_term(results, "tokd@rotation=false")
    verdict = ("higher than" if len(better) == len(parts) and norot.mean > both.mean
               else "not all higher than")
    same = (f"the weighted frequency term L_KD_Fre is about as large in those runs "
            f"({norot_term:.1f} without rotation, {d128:.1f} at d = 128, averaged over epochs "
            f"and seeds) as in the weak one ({full:.1f}), so the size of that term alone does "
            "not explain the gap" if norot_term is not None and d128 is not None else "")
    return (
        f"**Why TOKD both is the weakest cell here** ({both.text()} against {rgb.text()} for "
        f"rgb): its runs separate it by the rotation - rotating a part of S_B(x) gives "
        + ", ".join(f"{c.text()} (d = {d})" for d, c in parts)
        + f" and no rotation {norot.text()}, {verdict} rotating all of it (d = 1024 is every "
        f"value of S_B(x) at 64 px, and d = 2048 was clamped to it); {same}. Why a rotation "
        "of the whole vector hurts on this data is not measured yet (the paper also reports a "
        "middle d best and its largest d worse).\n")


def build_section(results: Path) -> str:
    """The README section, every figure read from ``results``."""
    registry = load_registry()
    runs = collect_runs(results)
    unfinished = runs[runs["status"] != "finished"]["path"].tolist()
    if unfinished:
        raise ValueError(f"{len(unfinished)} unfinished run folder(s), e.g. {unfinished[0]}: "
                         "finish them (run the same `kdbench reproduce` again) or move them out "
                         f"of {results} (a clean clone would not have them)")
    students = runs[runs["method"] != "teacher"]  # all finished (checked above)
    hours = float(runs["wall_s"].fillna(0).sum()) / 3600
    seeds = sorted(int(s) for s in students["seed"].dropna().unique())
    acc = tables.build("comparison", runs, registry, "acc")
    auc = tables.build("comparison", runs, registry, "auc")
    others = "\n".join(tables.build(kind, runs, registry).markdown() for kind in TABLES)
    weakest = _weakest_cell(results, acc, tables.build("rotation", runs, registry),
                            tables.build("ablation", runs, registry))
    cost = (results / "tables" / "cost.md").read_text()
    sessions = "\n".join(_sessions(results)) or "- (no `kdbench reproduce` logged yet)"
    spans = "\n".join(_training_spans(runs)) or "- (no run records `finished_at`)"
    gradsim = "\n".join(f"- {line}" for line in _gradsim_lines(results, registry))
    gaps = ";\n".join(_both_vs_rgb(acc))
    earlier = "; ".join(_earlier_teacher_runs(results)) or "none"
    return f"""{START}

`results/` holds the metrics, histories and traces (no checkpoints) of every run the paper's
tables need on the embedded synthetic dataset, made on this project's CPU machine (see the
wall times below): {_setting(results)}; seeds {", ".join(map(str, seeds))}.
One command makes them, skipping the runs already finished, then writes every table to
`results/tables/*.md` and the plots `results/{{gradsim,alpha,rotation,curves}}.png`:

```bash
{COMMAND}
```

**Wall time.** The {len(students)} student runs and the teacher recorded {hours:.1f} h of
training in all (`wall_time_s` in their `metrics.json`), shared out between the processes that
ran side by side (two `kdbench` processes can share a store: each run is claimed by a lock).
The store was filled in steps: first `kdbench run --methods all --preset cpu --seeds 0,1,2`
(the comparison runs), then `kdbench reproduce` for the rest. The runs of the last step record
when they finished (`finished_at`), which gives its wall time:

{spans}

and `kdbench reproduce` logs each invocation in `results/reproduce.jsonl` (the log starts
after that step):

{sessions}

Every table below is printed by `kdbench table --kind KIND --results results` (`--metric auc`
for the second); the cost table is `results/tables/cost.md` as `reproduce` measured it.

{acc.markdown()}
{auc.markdown()}
**Both-branch minus RGB-only, test acc (points), against the combined std** (the paper reports
both below rgb for every baseline, and above it for TOKD):
{gaps}.

{weakest}
{others}
The cross-dataset table (Table 7, `results/tables/cross.md`) needs a second dataset: the
embedded one has no sibling, so it is empty here; `kdbench reproduce --cross-dataset celebdf
--cross-data-root DIR` (or `kdbench eval RUNS --dataset D`) fills it.

{cost}
**Gradient cosine (Fig. 4)**, `kdbench plot gradsim --results results` (the default plan's
runs; `--all-runs` adds the sweep variants):

![gradient cosine between the RGB and frequency distillation gradients](results/gradsim.png)

{gradsim}

Caveats, visible in the files: the teacher's checkpoint is not committed, and CPU float
results depend on the thread count (`versions.torch_threads`). The teacher in
`results/teachers/` was retrained after these runs had distilled from an earlier one, trained
with the same settings (their `git_commit` differs from the teacher's and they have no
`teacher_test`): {earlier}. Every other run distilled from the committed teacher and records
its test metrics as `teacher_test`.
"""


def readme_section(text: str) -> str:
    """The Reference results section of README text (up to the next section)."""
    return text[text.index(START):text.index(END)]


def main() -> int:
    os.chdir(ROOT)  # run folders are named relative to the repository, as `kdbench table` does
    readme = Path("README.md")
    text = readme.read_text()
    section = build_section(Path("results")) + "\n"
    readme.write_text(text.replace(readme_section(text), section))
    print(f"wrote the {START[3:]!r} section of {readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
