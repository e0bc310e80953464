"""Write results/README.md, the reference results, from the committed result store.

Every number in it is read from ``results/`` through the code behind `kdbench table` and
`kdbench plot gradsim`, or copied from the files `kdbench reproduce` wrote there;
``tests/test_readme_results.py`` fails when a number of results/README.md and the store
disagree.

    python tools/readme_results.py          # rewrite results/README.md
"""

from __future__ import annotations

import copy
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: tools/ is a package
from tools.readme_mobile import MOBILE, MOBILE_PLAN, mobile_section  # noqa: E402, F401

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("results") / "README.md"  # relative to ROOT
COMMAND = "bash tools/reference_store.sh"
TABLES = ("ablation", "rotation", "alpha", "teacher")
BASELINES = ["at", "pkt", "vid", "sp", "fitnet", "kd", "rkd", "nst", "reviewkd", "ofd", "crd"]
# the main store's plan, step by step as tools/reference_store.sh runs it (checked by
# tests/test_readme_results.py): Table 3 at five seeds, the both_weighting=mean runs of every
# baseline, and reproduce's ablation and sweep runs at three seeds
MAIN_PLAN = [
    ("run", {"preset": "cpu", "methods": "all", "seeds": [0, 1, 2, 3, 4],
             "cross_dataset": "synthetic_c23"}),
    ("run", {"preset": "cpu", "methods": BASELINES, "modes": ["both"],
             "sweeps": ["both_weighting=mean"], "seeds": [0, 1, 2, 3, 4],
             "cross_dataset": "synthetic_c23"}),
    ("reproduce", {"preset": "cpu", "seeds": [0, 1, 2], "compression": True}),
]


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
        lines.append(f"- {_when(start, end)}: {len(g)} run{'s' * (len(g) != 1)}, at most "
                     f"{peak} at a time: "
                     f"**{_duration((end - start).total_seconds())}** wall "
                     f"({sum(w for _, _, w in g) / 60:.0f} min of run time).")
    return lines


def _both_vs_rgb(report: tables.Report) -> list[str]:
    """For each method with rgb and both cells of a comparison built with ``ci=True``: both -
    rgb in points with its interval at its Holm level (marked where it excludes 0) and the
    paired t-test's p over the seeds."""
    lines = []
    for row in report.rows:
        cells = dict(zip(report.columns, row))
        where = f"{cells['dataset']}/{cells['student']} " if len(report.rows) > 1 else ""
        for col in report.columns:
            rgb_col = col.removesuffix(" both") + " rgb"
            if not col.endswith(" both") or rgb_col not in cells or not cells[col].interval:
                continue
            diff, _, rest = cells[col].interval.strip("[]").partition("; ")
            bounds, _, t_p = rest.partition("; ")
            mark = "".join(m for m in cells[col].mark if m in "↑↓")
            lines.append(f"{where}{col.removesuffix(' both')} {diff} [{bounds}]{mark}"
                         + (f" ({t_p})" if t_p else ""))
    return lines


def _without_intervals(report: tables.Report) -> tables.Report:
    """A copy of a table built with ``ci=True`` as it is built without (the same marks; the
    bootstrap runs once), its note on the printed intervals left out."""
    plain = copy.deepcopy(report)
    for row in plain.rows:
        for c in row:
            for part in ([*c.parts, c] if isinstance(c, tables.Cell) else []):
                part.interval = ""
    plain.notes = [n for n in plain.notes if not n.startswith("[d; lo, hi")]
    return plain


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _teacher_lines(runs: pd.DataFrame, results: Path) -> str:
    """Which teacher weights the store's distillation runs used, from the sha256 each run
    records (`teacher_sha256`) against the stored teacher's (`weights_sha256`), and whether
    the stored teacher, trained again, gave the weights recorded before (`recorded_sha256`)."""
    teachers = runs[runs["method"] == "teacher"]
    students = runs[(runs["method"] != "teacher") & (runs["mode"] != "none")]
    stored = sorted(set(teachers["teacher_sha256"].dropna()))
    used = students["teacher_sha256"].fillna("not recorded").value_counts()
    other = students[students["other_teacher"].fillna(False).astype(bool)]
    text = (f"The {_plural(len(students), 'distillation run')} record the sha256 of the teacher "
            "weights they distilled from (`teacher_sha256`): "
            + ", ".join(f"{n} `{sha[:12]}`" for sha, n in used.items())
            + f"; the stored teacher's own is `{', '.join(x[:12] for x in stored) or 'none'}` "
            "(`weights_sha256`).")
    if len(other):
        text += (f" {_plural(len(other), 'run')} distilled from other weights (marked † in the "
                 "tables): " + ", ".join(sorted(other["path"])) + ".")
    elif len(stored) == 1 and set(used.index) == set(stored):
        text += " Every one distilled from the stored teacher."
    again = [read_json(p) for p in sorted((results / "teachers").rglob("metrics.json"))]
    if again and all(m.get("recorded_sha256") == m.get("weights_sha256") for m in again):
        text += (" The teacher's checkpoint is not committed: `kdbench reproduce` trains it "
                 "again where it is missing, and here that gave the weights recorded before "
                 "(the same sha256; `recorded_sha256` in its `metrics.json`).")
    return text


def _threads(runs: pd.DataFrame) -> str:
    """The torch thread counts the runs record (`versions.torch_threads`)."""
    counts: dict[int, int] = {}
    for path in runs["path"]:
        m = read_json(Path(path) / "metrics.json")
        n = int(m.get("versions", {}).get("torch_threads", 0))
        counts[n] = counts.get(n, 0) + 1
    return ", ".join(f"{_plural(c, 'run')} on {_plural(n, 'thread')}"
                     for n, c in sorted(counts.items()))


def _predates_note(runs: pd.DataFrame) -> str:
    """Why a store made before kdbench 0.3.0 still stands for it: said only when every run was
    made by an earlier kdbench, every student run records one thread and every distillation
    run read the teacher cache's fp16 targets (0.3.0 rounds the live teacher's targets the
    same way)."""
    versions, threads, outputs = set(), set(), set()
    for r in runs.itertuples():
        m = read_json(Path(r.path) / "metrics.json")
        versions.add(str(m.get("versions", {}).get("kdbench", "")))
        if r.method == "teacher":
            continue
        threads.add(m.get("versions", {}).get("torch_threads"))
        if r.mode != "none":
            outputs.add(m.get("teacher_outputs"))

    def release(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split(".")[:3] if x.isdigit())

    if (versions and all(v and release(v) < (0, 3, 0) for v in versions)
            and threads == {1} and outputs == {"cache"}):
        return ("The store predates kdbench 0.3.0; its numbers remain valid for it: runs record "
                "their thread count (one each) and used the teacher cache's fp16 targets, which "
                "0.3.0 gives every run.")
    return ""


def _gradsim_lines(results: Path, registry: dict) -> list[str]:
    """The mean gradient cosine of each curve of `kdbench plot gradsim` (the engine's
    ``cos`` of any method first, where the store has it)."""
    df = trace_summary(results, "gradsim", registry)
    panels = [c for c in df.columns if c.startswith("mean ")]
    return [f"`{r['curve']}`: mean cosine "
            + ", ".join(f"{c[5:]} {r[c]:+.3f}" for c in panels if r[c] == r[c])
            + f" ({r['seeds']} seed{'s' * (r['seeds'] != 1)}, {r['records']} records)"
            for _, r in df.iterrows()]


def _plan_state(results: Path) -> str:
    """How much of :data:`MAIN_PLAN` the store has finished, and which cells lack which seeds."""
    from kdbench.plan import plan
    from kdbench.request import RunRequest

    listing = collect_runs(results)
    finished = {str(Path(r.path).resolve()) for r in listing.itertuples()
                if r.status == "finished" and r.method != "teacher"  # and as its folder says:
                and (r.variant or "") == Path(r.path).parts[-3].partition("@")[2]}
    planned, missing = set(), {}
    for command, options in MAIN_PLAN:
        request = RunRequest.make(command, results=results, device="cpu", **options)
        for r in plan(request).runs:
            key = str(r.run_dir.resolve())
            if key in planned:
                continue
            planned.add(key)
            if key not in finished:
                cell, _, seed = r.name.rpartition("/seed")
                missing.setdefault(cell.split("/", 1)[1], []).append(seed)
    done = len(planned) - sum(len(v) for v in missing.values())
    if not missing:
        return f"All {len(planned)} runs of the plan are finished."
    cells = "; ".join(f"{c} (seed{'s' * (len(v) > 1)} {','.join(v)})"
                      for c, v in sorted(missing.items()))
    return (f"**{done} of the plan's {len(planned)} runs are finished**; the command above trains "
            f"the rest, continuing where it stopped: {cells}.")


def _mean_term(results: Path, label: str, key: str = "train_loss_kd_freq") -> float | None:
    """The mean of a loss term over all epochs and seeds of the runs in folder ``label``
    (e.g. ``tokd@d=128``) in both mode."""
    vals = [r[key] for path in sorted((results / "runs").glob(f"*/*/{label}/both/seed*/"
                                                                "history.jsonl"))
            for r in read_jsonl(path) if key in r]
    return sum(vals) / len(vals) if vals else None


def _tokd_note(results: Path, acc: tables.Report, rotation: tables.Report,
              ablation: tables.Report) -> str:
    """TOKD both against rgb and the other cells, and what its rotation-size and ablation runs
    give, in the store's own numbers (test acc)."""
    cols = dict(zip(acc.columns, acc.rows[0])) if acc.rows else {}
    both, rgb = cols.get("tokd both"), cols.get("tokd rgb")
    norot_row = next((r for r in ablation.rows if str(r[0]).startswith("RGB + Fre + projector "
                                                                       "(")), None)
    parts = [(str(r[1]), r[2]) for r in rotation.rows
             if isinstance(r[2], tables.Cell) and r[2].n and "used)" not in str(r[1])
             and r[2].mean != (both.mean if both else None)]
    if not (both and rgb and both.n and rgb.n and norot_row and parts):
        return ""
    cells = sorted((c.mean for c in cols.values() if isinstance(c, tables.Cell) and c.n),
                   reverse=True)
    rank = cells.index(both.mean) + 1
    norot = norot_row[1]
    terms = [(label, _mean_term(results, folder)) for label, folder in (
        ("the default", "tokd"), ("no rotation", "tokd@rotation=false"),
        ("d = 128", "tokd@d=128"))]
    term_text = ", ".join(f"{v:.1f} ({label})" for label, v in terms if v is not None)
    term_text = (f" The weighted frequency term L_KD_Fre, averaged over epochs and seeds: "
                 f"{term_text}." if term_text else "")
    higher = [d for d, c in parts if c.mean > both.mean]
    return (
        f"**TOKD both** ({both.text()}) ranks {rank} of the {len(cells)} cells of the acc "
        f"table; TOKD rgb has {rgb.text()}. Its default rotates all of S_B(x) (d = 1024 is every "
        "value at 64 px, and d = 2048 is clamped to it); rotating a part gives "
        + ", ".join(f"{c.text()} (d = {d})" for d, c in parts)
        + f" ({len(higher)} of {len(parts)} above the default), and no rotation "
        f"{norot.text()}.{term_text}\n")


def _cross_lines(runs: pd.DataFrame) -> str:
    """How many student runs Table 7 holds, and which have no cross-dataset test (by label
    and mode, with their seeds)."""
    students = runs[runs["method"] != "teacher"]
    missing: dict[str, list[int]] = {}
    for r in students.itertuples():
        if not list((Path(r.path) / "cross").glob("*.json")):
            label = r.method + (f"@{r.variant}" if r.variant else "")
            missing.setdefault(f"{label} {r.mode}", []).append(int(r.seed))
    n = sum(map(len, missing.values()))
    if not n:
        return f"Every one of the {_plural(len(students), 'student run')} was tested there."
    return (f"{len(students) - n} of the {_plural(len(students), 'student run')} were tested "
            f"there; {n} have no test there yet: "
            + "; ".join(f"{k} (seed {', '.join(map(str, sorted(v)))})"
                        for k, v in sorted(missing.items())) + ".")


def build_section(results: Path) -> str:
    """The reference results (results/README.md below its title), every figure read from
    ``results``."""
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
    acc_ci = tables.build("comparison", runs, registry, "acc", ci=True)
    auc_ci = tables.build("comparison", runs, registry, "auc", ci=True)
    acc, auc = _without_intervals(acc_ci), _without_intervals(auc_ci)
    others = "\n".join(tables.build(kind, runs, registry).markdown() for kind in TABLES)
    tokd = _tokd_note(results, acc, tables.build("rotation", runs, registry),
                      tables.build("ablation", runs, registry))
    cross = tables.build("cross", runs, registry).markdown()
    cost = (results / "tables" / "cost.md").read_text()
    sessions = "\n".join(_sessions(results)) or "- (no `kdbench reproduce` logged yet)"
    spans = "\n".join(_training_spans(runs)) or "- (no run records `finished_at`)"
    gradsim = "\n".join(f"- {line}" for line in _gradsim_lines(results, registry))
    gaps_acc = ";\n".join(_both_vs_rgb(acc_ci))
    gaps_auc = ";\n".join(_both_vs_rgb(auc_ci))
    predates = _predates_note(runs)
    predates = f"\n{predates}\n" if predates else ""
    weighting = tables.build("weighting", runs, registry, "acc,auc").markdown()
    claims = tables.build("claims", runs, registry).markdown()
    return f"""`results/` holds the metrics, histories, traces and per-frame test predictions (no
checkpoints) of every run the paper's tables need on the embedded synthetic dataset, made on
this project's CPU machine (see the wall times below): {_setting(results)}; seeds
{", ".join(map(str, seeds))}. One command makes them, skipping the runs already finished:
Table 3 at five seeds (every method in each mode), the `both_weighting=mean` runs of every
baseline, then the ablation and sweep runs at three seeds; it tests every run on the second
embedded domain `synthetic_c23` (Table 7) and writes every table to `results/tables/*.md` and
the plots `results/{{gradsim,gradcos,alpha,rotation,curves}}.png`:

```bash
{COMMAND}
```

{_plan_state(results)}
{predates}
`kdbench table --kind claims --results results`:

{claims}
**Wall time.** The {len(students)} student runs and the teacher recorded {hours:.1f} h of
training in all (`wall_time_s` in their `metrics.json`), shared out between the processes that
ran side by side (the command's two workers, each run claimed by a lock; {_threads(runs)}).
The runs record when they finished (`finished_at`), which gives
the wall time of each stretch of work (the command was stopped and started again between
stretches, and continued where it stopped):

{spans}

and `kdbench reproduce` logs each invocation that got to its tables in
`results/reproduce.jsonl`:

{sessions}

Table 7 needs each run's `best.pt`, and checkpoints are not committed: the runs that finished
before kdbench tested each run on the cross dataset as it finished were trained again for it,
with the same settings and thread count (`kdbench run <the plan> --only <run> --restart
--threads 1 --cross-dataset synthetic_c23`). Each gave byte-identical test predictions
(commit 4a67c7b, which added their cross results, changes no `predictions.npz` and no test
metric); their `metrics.json` records the
second training, which is the one the stretches above count.

Every table below is printed by `kdbench table --kind KIND --results results` (`--metric auc`
for the second); the cost table is `results/tables/cost.md` as `reproduce` measured it.

{acc.markdown()}
{auc.markdown()}
**Both-branch minus RGB-only, in points** (`kdbench table --kind comparison --ci`): the
difference, its two-level bootstrap interval (the seeds resampled, then identity pairs of test
videos within each) at its Holm level across the table's comparisons, ↑/↓ where it excludes 0,
and the paired t-test's p over the seeds; the paper reports both below rgb for every baseline,
and above it for TOKD. Test acc:
{gaps_acc}.

Test AUC:
{gaps_auc}.

**Both modes' weighting** (`kdbench table --kind weighting --metric acc,auc --results
results`): both mode adds the frequency term at the method's weight (`sum`, the paper's), so
both - rgb mixes frequency knowledge with twice the distillation weight; `both_weighting=mean`
halves each branch's term, so that the total weight equals rgb mode's.

{weighting}

{tokd}
{others}
**Cross-dataset (Table 7)**: every run trained on `synthetic` tested on `synthetic_c23`
(other identities, lighter compression, a Deepfakes up-sampler unseen in training; see
[the embedded synthetic dataset](../docs/datasets.md#the-embedded-synthetic-dataset)),
`kdbench table --kind cross --results results`. {_cross_lines(runs)}

{cross}
{cost}{mobile_section(results)}
**Gradient cosine (Fig. 4)**, `kdbench plot gradsim --results results` (the default plan's
runs; `--all-runs` adds the sweep variants). Its first panel, where the store has it, is the
engine's cosine between the gradients of any method's RGB and frequency terms at the student's
last shared stage, per epoch (`cos`, `gradcos.jsonl`; `kdbench plot gradcos` alone); the
others are TOKD's own records against the step:

![gradient cosine between the RGB and frequency distillation gradients](gradsim.png)

{gradsim}

**Teacher.** {_teacher_lines(runs, results)} CPU float results depend on the thread count
(`versions.torch_threads` in each run).
"""


def build_readme(results: Path) -> str:
    """The whole of results/README.md: a title, where it comes from, the reference results."""
    return ("# Reference results\n\n"
            "Generated by `python tools/readme_results.py` from the store that the command below "
            f"wrote (`{COMMAND}`); change the tool, not this file.\n\n"
            + build_section(results) + _compression(results) + _generators(results))


def _compression(results: Path) -> str:
    from tools.readme_compression import compression_section

    section = compression_section(results)
    return "\n" + section if section else ""


def _generators(results: Path) -> str:
    from tools.readme_generators import generators_section

    section = generators_section(results)
    return "\n" + section if section else ""


def main() -> int:
    os.chdir(ROOT)  # run folders are named relative to the repository, as `kdbench table` does
    OUT.write_text(build_readme(Path("results")))
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
