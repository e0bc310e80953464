"""results/README.md (the reference results) and results/tables/*.md are what the committed
result store gives: no number in them is typed by hand. results/README.md is checked by its
numbers, not its prose: rewording passes, a changed number fails."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.registry import load_registry
from kdbench.report import tables
from kdbench.report.listing import collect_runs
from tools.readme_results import (
    COMMAND,
    ROOT,
    _both_vs_rgb,
    _cross_lines,
    _predates_note,
    _sessions,
    _teacher_lines,
    _training_spans,
    build_readme,
)

NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def numbers(text: str) -> Counter:
    """The multiset of the numbers written in ``text`` (signed, as written)."""
    return Counter(NUMBER.findall(text))


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # run folders named as `kdbench table --results results` names them
    return Path("results")


@pytest.mark.slow
def test_results_readme_numbers_are_the_stores(at_root):
    written = numbers((at_root / "README.md").read_text())
    store = numbers(build_readme(at_root))
    assert written == store, (
        "results/README.md is out of date with results/ (numbers only in the file: "
        f"{sorted((written - store).elements())[:20]}; only in the store: "
        f"{sorted((store - written).elements())[:20]}): run `python tools/readme_results.py`")


def test_numbers_see_a_changed_figure_and_not_a_reworded_sentence():
    text = "TOKD both has 84.27 ± 1.11 (3), +0.47 [-2.84, +3.80]."
    assert numbers(text) == numbers("The cell holds 84.27 ± 1.11 (3); +0.47 [-2.84, +3.80]")
    assert numbers(text) != numbers(text.replace("84.27", "84.72"))
    assert numbers(text) != numbers(text.replace("-2.84", "+2.84"))
    assert numbers(text) != numbers(text.replace("(3)", "(3) (3)"))


def test_the_readme_says_where_the_reference_results_are():
    assert "](results/README.md)" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("kind", ["comparison", "ablation", "rotation", "alpha", "teacher",
                                  "cross"])
def test_committed_tables_are_what_the_store_gives(at_root, kind):
    expected = tables.build(kind, collect_runs(at_root), load_registry()).markdown()
    assert (at_root / "tables" / f"{kind}.md").read_text() == expected, \
        f"results/tables/{kind}.md is stale: run `{COMMAND}`"


def test_table_command_prints_the_results_readme_comparison(at_root, capsys):
    assert main(["table", "--kind", "comparison", "--results", str(at_root)]) == 0
    printed = capsys.readouterr().out
    assert "| tokd rgb | tokd both |" in printed
    assert printed in (at_root / "README.md").read_text()


def test_sessions_group_overlapping_invocations(tmp_path):
    def rec(start, end, trained, before):
        return {"command": "kdbench reproduce --seeds 0", "started_at": start, "finished_at": end,
                "trained": trained, "finished_before": before, "cpu_count": 2,
                "torch_threads": 1, "wall_s": 1.0}
    rows = [rec("2026-01-01T10:00:00+00:00", "2026-01-01T11:00:00+00:00", 5, 10),
            rec("2026-01-01T10:01:00+00:00", "2026-01-01T11:30:00+00:00", 4, 9),
            rec("2026-01-02T09:00:00+00:00", "2026-01-02T09:03:00+00:00", 0, 19)]
    (tmp_path / "reproduce.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = _sessions(tmp_path)
    assert first.startswith("- 2 processes of") and "10:00-11:30 UTC" in first
    assert "**90 min** wall; trained 9 runs, found 9 finished" in first
    assert second.startswith("- 1 process of") and "**3 min** wall; trained 0 runs" in second
    assert _sessions(tmp_path / "none") == []


def test_both_vs_rgb_gives_each_paired_interval_and_its_mark(tmp_path):
    from kdbench.report.tables import comparison
    from tests.test_significance import _runs, _store

    better, base = _runs(0.25)
    same, _ = _runs(0.0)
    runs = _store(tmp_path, {("x", "both"): better, ("x", "rgb"): base,
                             ("y", "both"): same, ("y", "rgb"): base, ("z", "both"): same})
    lines = _both_vs_rgb(comparison(runs, ["x", "y", "z"], "acc", ci=True))
    assert len(lines) == 2 and lines[1] == "y +0.00 [+0.00, +0.00] (t p=1.00)"  # z: no rgb cell
    first, t_p = lines[0].split(" (t p=")
    name, diff, lo, hi = first.replace("[", "").replace(",", "").rstrip("]↑").split()
    assert name == "x" and first.endswith("]↑") and 0 < float(lo) < float(diff) < float(hi)
    assert float(t_p.rstrip(")")) < 0.05
    assert _both_vs_rgb(comparison(runs, ["x"], "acc")) == []  # built without ci: nothing


def _listing(tmp_path, rows):
    import pandas as pd

    out = []
    for i, r in enumerate(rows):
        folder = tmp_path / f"run{i}"
        (folder / "cross").mkdir(parents=True)
        if r.pop("tested", False):
            (folder / "cross" / "other.json").write_text("{}")
        out.append({"variant": "", "mode": "both", "seed": 0, "other_teacher": False,
                    "teacher_sha256": "a" * 64, "path": str(folder), **r})
    return pd.DataFrame(out)


def test_teacher_lines_count_the_weights_each_run_used(tmp_path):
    runs = _listing(tmp_path, [{"method": "teacher", "mode": "none"},
                               {"method": "at"}, {"method": "at", "seed": 1},
                               {"method": "vanilla", "mode": "none", "teacher_sha256": None}])
    (tmp_path / "teachers/t").mkdir(parents=True)
    (tmp_path / "teachers/t/metrics.json").write_text(json.dumps(
        {"weights_sha256": "a" * 64, "recorded_sha256": "a" * 64}))
    text = _teacher_lines(runs, tmp_path)
    assert text.startswith("The 2 distillation runs") and "2 `aaaaaaaaaaaa`" in text
    assert "Every one distilled from the stored teacher." in text
    assert text.endswith("(the same sha256; `recorded_sha256` in its `metrics.json`).")
    runs.loc[2, ["teacher_sha256", "other_teacher"]] = ["b" * 64, True]
    (tmp_path / "teachers/t/metrics.json").write_text(json.dumps({"weights_sha256": "a" * 64}))
    text = _teacher_lines(runs, tmp_path)
    assert "1 `bbbbbbbbbbbb`" in text and "1 run distilled from other weights" in text
    assert runs.loc[2, "path"] in text and "Every one" not in text and "recorded_sha" not in text


def test_cross_lines_name_the_runs_without_a_cross_test(tmp_path):
    runs = _listing(tmp_path, [{"method": "teacher", "mode": "none", "tested": True},
                               {"method": "at", "tested": True},
                               {"method": "at", "seed": 2}, {"method": "at", "seed": 1},
                               {"method": "tokd", "variant": "d=128"}])
    assert _cross_lines(runs) == ("1 of the 4 student runs were tested there; 3 have no test "
                                  "there yet: at both (seed 1, 2); tokd@d=128 both (seed 0).")
    assert _cross_lines(runs.iloc[:2]) == "Every one of the 1 student run was tested there."


def test_training_spans_join_runs_with_short_pauses_and_count_the_peak():
    import pandas as pd

    runs = pd.DataFrame({  # finished_at, wall_s: 10:00-10:10 and 10:02-10:12, then 10:14-10:20
        "finished_at": ["2026-01-01T10:10:00+00:00", "2026-01-01T10:12:00+00:00",
                        "2026-01-01T10:20:00+00:00", "2026-01-01T12:00:00+00:00", None],
        "wall_s": [600.0, 600.0, 360.0, 30.0, 100.0]})
    first, second = _training_spans(runs)
    assert first == ("- 2026-01-01 10:00-10:20 UTC: 3 runs, at most 2 at a time: **20 min** "
                     "wall (26 min of run time).")
    assert "1 run, at most 1 at a time: **30 s** wall" in second


def test_predates_note_only_when_the_store_bears_it_out(tmp_path):
    runs = _listing(tmp_path, [{"method": "teacher", "mode": "none"}, {"method": "at"},
                               {"method": "vanilla", "mode": "none"}])

    def write(kdbench="0.2.0", threads=(2, 1, 1), outputs=(None, "cache", None)):
        for path, n, out in zip(runs["path"], threads, outputs):
            (Path(path) / "metrics.json").write_text(json.dumps(
                {"versions": {"kdbench": kdbench, "torch_threads": n}, "teacher_outputs": out}))

    write()
    assert _predates_note(runs).startswith("The store predates kdbench 0.3.0;")
    for bad in ({"kdbench": "0.3.0"}, {"threads": (2, 2, 1)}, {"outputs": (None, "live", None)}):
        write(**bad)
        assert _predates_note(runs) == "", bad


def test_the_edge_students_plan_is_the_one_the_store_command_runs():
    from tools.readme_results import MOBILE_PLAN

    script = (ROOT / "tools" / "reference_store.sh").read_text()
    assert (f"--preset {MOBILE_PLAN['preset']} --methods {','.join(MOBILE_PLAN['methods'])} "
            f"--modes {','.join(MOBILE_PLAN['modes'])} "
            f"--seeds {','.join(map(str, MOBILE_PLAN['seeds']))}") in script
    assert f"--cross-dataset {MOBILE_PLAN['cross_dataset']}" in script


def test_the_main_plan_is_the_one_the_store_command_runs():
    from tools.readme_results import MAIN_PLAN

    script = (ROOT / "tools" / "reference_store.sh").read_text().replace("\\\n    ", "")
    commands = [line.strip() for line in script.splitlines()
                if line.startswith("kdbench run --preset cpu") or line.startswith(
                    "kdbench reproduce --preset cpu")]
    assert len(commands) == len(MAIN_PLAN)
    for line, (command, options) in zip(commands, MAIN_PLAN):
        flags = {"methods": "--methods", "modes": "--modes", "seeds": "--seeds",
                 "cross_dataset": "--cross-dataset", "preset": "--preset"}
        assert line.startswith(f"kdbench {command} ")
        for key, flag in flags.items():
            if key in options:
                value = options[key]
                text = value if isinstance(value, str) else ",".join(map(str, value))
                assert f"{flag} {text} " in line + " ", (key, line)
        for sweep in options.get("sweeps", []):
            assert f"--sweep {sweep} " in line
