"""results/README.md's section on the edge students (results/mobile), read from that store;
tools/readme_results.py puts it in."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdbench.files import read_json, read_jsonl
from kdbench.registry import load_registry
from kdbench.report.listing import collect_runs

MOBILE = Path("mobile")  # the edge students' store, inside results/
# its plan, as tools/reference_store.sh runs it (tests/test_readme_results.py checks they agree)
MOBILE_PLAN = {"preset": "mobile", "methods": ["vanilla", "reviewkd", "ofd", "pkt"],
               "modes": ["both"], "seeds": [0, 1, 2], "cross_dataset": "synthetic_c23"}

def mobile_section(results: Path) -> str:
    """The edge students (results/mobile): the students table and where its teacher comes
    from, every figure read from that store."""
    from kdbench.plan import plan
    from kdbench.report.students import students_report
    from kdbench.request import RunRequest

    store = results / MOBILE
    if not (store / "runs").is_dir():
        return ""
    runs = collect_runs(store)
    students = runs[runs["method"] != "teacher"]
    done = students[students["status"] == "finished"]
    planned = plan(RunRequest.make("run", results=store, device="cpu", **MOBILE_PLAN)).runs
    finished = set(done["path"])
    left = [r.name for r in planned if str(r.run_dir) not in finished
            and str(r.run_dir.relative_to(Path.cwd())) not in finished]
    report = students_report(runs, store, list(load_registry()), "auc")
    teacher = runs[(runs["method"] == "teacher") & (runs["status"] == "finished")]
    main = collect_runs(results)
    main_teacher = main[(main["method"] == "teacher") & (main["status"] == "finished")]
    seeds = ", ".join(str(int(s)) for s in sorted(done["seed"].dropna().unique()))
    hours = float(done["wall_s"].fillna(0).sum()) / 3600

    def acc(t: pd.DataFrame) -> str:
        return f"{100 * t['acc'].iloc[0]:.2f} %" if len(t) else "(none)"

    def first(t: pd.DataFrame) -> tuple[str, str]:
        """(kdbench version, first epoch's training loss) of a teacher row's run."""
        if not len(t):
            return "?", "?"
        folder = Path(t["path"].iloc[0])
        version = read_json(folder / "metrics.json").get("versions", {}).get("kdbench", "?")
        rows = read_jsonl(folder / "history.jsonl")
        return version, f"{rows[0]['train_loss']:.4f}" if rows else "?"

    (old_version, old_loss), (new_version, new_loss) = first(main_teacher), first(teacher)

    state = (f" {len(left)} of the plan's {len(planned)} runs are not finished yet (the command "
             f"above trains them, continuing where it stopped): {', '.join(left)}." if left
             else "")
    return f"""
**Edge students** (`results/mobile/`, `kdbench table --kind students --results
results/mobile`): `--preset mobile` trains `mobilenetv3_large_100`, `efficientnet_b0` and
`resnet18_thin` from one teacher, for vanilla and the three distillers with the highest AUC in
Table 3 (reviewkd, ofd, pkt; both mode), seeds {seeds or "(none yet)"}: {len(done)} finished
runs, {hours:.1f} h of training in all.{state} They have a store of their own because the
cpu teacher's checkpoint is not committed, and training it again with the same settings and
thread count on this machine does not give its weights bit for bit (kdbench {old_version}
trained it on another machine's CPU; its first epoch's training loss was {old_loss}, kdbench
{new_version}'s here is {new_loss}): the edge
students' teacher is that retraining, test acc {acc(teacher)} against the stored
teacher's {acc(main_teacher)}, so the three students here share one teacher, and Table 3's
resnet18_thin runs are not mixed in.
The int8 latency is of each student's vanilla seed-0 run (`kdbench quantize RUN --int8`).

{report.markdown()}"""
