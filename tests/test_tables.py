"""Paper tables from a fabricated result store with known values."""

import json
import math

import pytest

from kdbench.cli import main
from kdbench.report.listing import collect_runs
from kdbench.report.tables import comparison

ACC = {  # (method, mode) -> test acc per seed
    ("vanilla", "none"): [0.80, 0.82, 0.84],
    ("at", "rgb"): [0.85, 0.85, 0.85],
    ("at", "both"): [0.80, 0.81, 0.79],   # clearly below rgb -> down mark
    ("vid", "rgb"): [0.84, 0.86, 0.82],
    ("vid", "both"): [0.85, 0.83, 0.87],  # equal means -> no mark
}


def _store(root):
    for (method, mode), accs in ACC.items():
        for seed, acc in enumerate(accs):
            run = root / f"runs/synthetic/resnet18_thin/{method}/{mode}/seed{seed}"
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps(
                {"status": "finished", "test": {"acc": acc, "auc": 0.9, "eer": 0.1,
                                                "video_auc": 0.95}}))
    variant = root / "runs/synthetic/resnet18_thin/at@beta=5/rgb/seed0"
    variant.mkdir(parents=True)
    (variant / "metrics.json").write_text(json.dumps({"status": "finished",
                                                      "test": {"acc": 0.1}}))
    broken = root / "runs/synthetic/resnet18_thin/at/rgb/seed3"
    broken.mkdir(parents=True)
    (broken / "history.jsonl").write_text("{}\n")
    return root


def test_comparison_cells_marks_and_unfinished_runs(tmp_path):
    report = comparison(collect_runs(_store(tmp_path)), ["vanilla", "at", "pkt", "vid"])
    assert report.columns == ["dataset", "student", "vanilla", "at rgb", "at both", "vid rgb",
                              "vid both"]
    (row,) = report.rows
    vanilla, at_rgb, at_both, vid_rgb, vid_both = row[2:]
    assert vanilla.mean == pytest.approx(0.82) and vanilla.std == pytest.approx(0.02)
    assert vanilla.n == 3
    assert at_rgb.mean == pytest.approx(0.85) and at_rgb.std == pytest.approx(0.0)  # variant out
    # no predictions.npz in this store: no paired interval, so no mark (test_significance)
    assert at_both.mark == "" and vid_both.mark == "" and at_rgb.mark == "≡"  # seeds tie
    assert vanilla.text() == "82.00 ± 2.00 (3)"
    assert at_both.text() == "80.00 ± 1.00 (3)"
    assert "runs without stored predictions are not marked" in report.notes[0]
    assert any("at/rgb/seed3" in n and "unfinished" in n for n in report.notes)
    md = report.markdown()
    assert "| synthetic | resnet18_thin | 82.00 ± 2.00 (3) |" in md
    latex = report.latex()
    assert r"$\pm$" in latex and r"\begin{tabular}{llrrrrr}" in latex
    csv = report.csv().splitlines()
    assert csv[0] == "dataset,student,column,mean,std,n,mark" and len(csv) == 1 + 5


def test_one_seed_has_no_std_and_no_mark(tmp_path):
    runs = collect_runs(_store(tmp_path))
    runs = runs[runs["seed"] == 0]
    (row,) = comparison(runs, ["vanilla", "at"]).rows
    assert math.isnan(row[3].std) and row[4].mark == ""
    assert row[2].text() == "80.00 (1)"


def test_table_command_writes_each_format(tmp_path, capsys):
    _store(tmp_path / "R")
    for fmt in ("md", "latex", "csv"):
        out = tmp_path / f"t.{fmt}"
        assert main(["table", "--kind", "comparison", "--results", str(tmp_path / "R"),
                     "--format", fmt, "--out", str(out)]) == 0
        assert out.stat().st_size > 100
    assert main(["table", "--kind", "comparison", "--results", str(tmp_path / "R"),
                 "--metric", "auc"]) == 0
    assert "90.00 ± 0.00≡ (3)" in capsys.readouterr().out
    assert main(["table", "--results", str(tmp_path / "R"), "--student", "vgg"]) == 2


def _write(root, rel, acc, status="finished", run_info=None):
    run = root / rel
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.json").write_text(json.dumps({"status": status, "test": {"acc": acc},
                                                  "run_info": run_info or {}}))


def test_ablation_rotation_alpha_and_teacher_tables_find_their_runs(tmp_path):
    from kdbench.registry import load_registry
    from kdbench.report.tables import build

    base = "runs/synthetic/resnet18_thin"
    for seed, acc in enumerate([0.80, 0.82]):
        _write(tmp_path, f"{base}/vanilla/none/seed{seed}", acc)
        _write(tmp_path, f"{base}/tokd/both/seed{seed}", acc + 0.05)
        _write(tmp_path, f"{base}/tokd/rgb/seed{seed}", acc + 0.04)
        _write(tmp_path, f"{base}/tokd@use_rgb=false/both/seed{seed}", acc + 0.01)
        _write(tmp_path, f"{base}/tokd@d=256/both/seed{seed}", acc + 0.02, run_info={
            "d_effective": 256})
        _write(tmp_path, f"{base}/tokd@d=2048/both/seed{seed}", acc, run_info={
            "d_effective": 1024})  # d clamped to the size of S_B(x)
        _write(tmp_path, f"{base}/tokd@alpha1=100,alpha2=100/both/seed{seed}", acc + 0.03)
    _write(tmp_path, "teachers/synthetic/resnet18_thin-abc", 0.9)
    runs = collect_runs(tmp_path)
    reg = load_registry()

    abl = build("ablation", runs, reg)
    cells = {row[0]: row[1] for row in abl.rows}
    assert cells["none (vanilla)"].mean == pytest.approx(0.81)
    assert cells["RGB + projector (tokd rgb)"].mean == pytest.approx(0.85)
    assert cells["Fre + projector (tokd both)"].mean == pytest.approx(0.82)
    assert cells["RGB + Fre + projector (tokd both)"].n == 0  # rotation=false not run
    assert cells["RGB + Fre + projector + rotation (tokd both)"].mean == pytest.approx(0.86)

    rot = build("rotation", runs, reg)
    by_d = {row[1]: row[2] for row in rot.rows}
    assert by_d["256"].mean == pytest.approx(0.83) and by_d["1024"].mean == pytest.approx(0.86)
    assert by_d["128"].n == 0 and by_d["1024"].n == 2  # d=1024 is the registry default
    assert by_d["2048 (1024 used)"].mean == pytest.approx(0.81)
    assert any("(u used)" in note for note in rot.notes)

    alpha = build("alpha", runs, reg)
    by_a = {row[1]: row[2] for row in alpha.rows}
    assert by_a["100"].mean == pytest.approx(0.84) and by_a["10"].mean == pytest.approx(0.86)

    teacher = build("teacher", runs, reg)
    assert [r[0] for r in teacher.rows] == ["vanilla student", "teacher (2 x resnet18_thin)",
                                            "tokd both student"]
    assert teacher.rows[1][1].mean == pytest.approx(0.9) and teacher.rows[1][1].n == 1


def test_sweep_and_curve_plots_are_written(tmp_path, capsys):
    base = tmp_path / "runs/synthetic/resnet18_thin"
    for seed, acc in enumerate([0.80, 0.82]):
        for variant, extra in (("tokd", 0.05), ("tokd@d=256", 0.02)):
            run = base / variant / "both" / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps({"status": "finished",
                                                          "test": {"acc": acc + extra}}))
            (run / "history.jsonl").write_text("\n".join(json.dumps(
                {"epoch": e, "train_loss": 1.0 / e, "val_acc": 0.7 + e / 100})
                for e in (1, 2, 3)) + "\n")
    for fig in ("rotation", "curves"):
        out = tmp_path / f"{fig}.svg"
        assert main(["plot", fig, "--results", str(tmp_path), "--out", str(out)]) == 0
        assert out.stat().st_size > 1000 and b"<svg" in out.read_bytes()[:500]
    # curves: one line per variant and mode (mean over seeds); the sweep variant on request
    assert "(1 line, 2 runs)" in capsys.readouterr().err
    assert main(["plot", "curves", "--results", str(tmp_path), "--out", str(out),
                 "--all-runs"]) == 0
    assert "(2 lines, 4 runs)" in capsys.readouterr().err
    assert main(["plot", "alpha", "--results", str(tmp_path), "--out", str(tmp_path / "a.png")]) \
        == 0
    assert "(1 point)" in capsys.readouterr().err  # only alpha=10, the registry default
    other = tmp_path / "other"
    _write(other, "runs/synthetic/resnet18_thin/vanilla/none/seed0", 0.8)
    assert main(["plot", "alpha", "--results", str(other), "--out", str(tmp_path / "b.png")]) == 2
    assert "--sweep alpha=1,10,100,1000" in capsys.readouterr().err


def test_cost_table_counts_parameters_flops_and_measures_speed(tmp_path):
    out = tmp_path / "cost.csv"
    assert main(["table", "--kind", "cost", "--preset", "quick", "--size", "32", "--format",
                 "md", "--out", str(out)]) == 0
    text = out.read_text()
    row = next(line for line in text.splitlines() if "student resnet18_thin" in line)
    _, name, params, flops, rate, _ = row.split("|")
    assert float(params) == pytest.approx(2.82, abs=0.01)  # the paper's Table 1: 2.8 M
    assert 0 < float(flops) < 0.05 and float(rate) > 0
    assert "teacher (2 x resnet18_thin)" in text and "32 x 32 input" in text


MY_REGISTRY = """
mine:
  entry: mine.py:Mine
  modes: [rgb]
  defaults: {k: 1}
  reports:
    sweeps:
      ksweep: {title: "Sensitivity to k", mode: rgb, sweep: {k: [1, 2]}}
    traces:
      margin: {title: "logit margin", mode: rgb, ylabel: nats,
               panels: {m: "margin", m2: "margin again", q: "other"}}
"""


def test_any_method_declares_its_own_sweep_table_and_trace_plot(tmp_path, capsys):
    from kdbench.report.traces import collect_trace, identical_panels

    (tmp_path / "my.yaml").write_text(MY_REGISTRY)
    base = tmp_path / "runs/synthetic/resnet18_thin"
    for label, value, acc in (("mine", 0.5, 0.8), ("mine@k=2", -0.25, 0.9)):
        run = base / label / "rgb/seed0"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"status": "finished",
                                                      "test": {"acc": acc}}))
        (run / "margin.jsonl").write_text("".join(json.dumps(
            {"step": s, "m": value, "m2": value, "q": s / 10}) + "\n" for s in (0, 1)))
    reg = ["--registry", str(tmp_path / "my.yaml"), "--results", str(tmp_path)]
    assert main(["table", "--kind", "ksweep", *reg]) == 0
    out = capsys.readouterr().out
    assert "**Sensitivity to k: test acc**" in out
    assert "| mine rgb | 1 | 80.00 (1) |" in out and "| mine rgb | 2 | 90.00 (1) |" in out
    png = tmp_path / "m.png"
    assert main(["plot", "margin", *reg, "--out", str(png), "--all-runs"]) == 0
    printed = capsys.readouterr().out
    assert "synthetic/resnet18_thin/mine/rgb: mean m +0.5000, mean m2 +0.5000, mean q +0.0500" \
        in printed and "mine@k=2/rgb: mean m -0.2500" in printed
    assert png.read_bytes()[:4] == b"\x89PNG"
    from kdbench.registry import load_registry

    df = collect_trace(tmp_path, "margin", load_registry([tmp_path / "my.yaml"]), all_runs=True)
    assert identical_panels(df, ["m", "m2", "q"]) == ["m2"]  # drawn once, with a note
    assert main(["plot", "margin", "--results", str(tmp_path)]) == 2  # without its registry
    assert "unknown figure 'margin'" in capsys.readouterr().err


def test_gradsim_plot_draws_the_default_plan_unless_asked_for_all_runs(tmp_path, capsys):
    base = tmp_path / "runs/synthetic/resnet18_thin"
    for label, cos in (("tokd", 0.5), ("tokd@rotation=false", 0.25), ("tokd@d=256", -0.5)):
        run = base / label / "both/seed0"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"status": "finished"}))
        (run / "gradsim.jsonl").write_text("".join(json.dumps(
            {"step": s, "cos_full": cos, "cos_sub": cos, "rotation": label != "tokd@rotation=false",
             "d": 256 if "d=" in label else 1024}) + "\n" for s in (0, 1)))
    out = tmp_path / "g.png"
    assert main(["plot", "gradsim", "--results", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tokd/both: mean cos_full +0.5000" in printed
    assert "tokd@rotation=false/both: mean cos_full +0.2500" in printed
    assert "tokd@d=256" not in printed and out.stat().st_size > 1000
    assert main(["plot", "gradsim", "--results", str(tmp_path), "--out", str(out),
                 "--all-runs"]) == 0
    assert "tokd@d=256/both: mean cos_full -0.5000" in capsys.readouterr().out


def test_curves_average_the_finished_seeds_of_the_default_plan(tmp_path):
    from kdbench.registry import load_registry
    from kdbench.report.figures import seed_mean_curves

    base = tmp_path / "runs/synthetic/resnet18_thin"
    for label, seed, status, acc in (("tokd", 0, "finished", 0.70), ("tokd", 1, "finished", 0.80),
                                     ("tokd", 2, "unfinished", 0.10),
                                     ("tokd@d=256", 0, "finished", 0.50)):
        run = base / label / "both" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"status": status}))
        (run / "history.jsonl").write_text("".join(json.dumps(
            {"epoch": e, "train_loss": 1.0, "val_acc": acc + e / 100}) + "\n" for e in (1, 2)))
    runs = collect_runs(tmp_path)
    curves = seed_mean_curves(runs, load_registry())
    assert list(curves) == ["synthetic/resnet18_thin/tokd/both"]
    mean, n = curves["synthetic/resnet18_thin/tokd/both"]
    assert n == 2 and mean["val_acc"].tolist() == pytest.approx([0.76, 0.77])  # seeds 0, 1
    assert len(seed_mean_curves(runs)) == 2  # every finished variant without the registry


def test_a_sweep_figure_places_points_by_value_and_names_the_sweep_of_single_points(
        tmp_path, monkeypatch):
    import matplotlib.figure

    from kdbench.registry import load_registry
    from kdbench.report.figures import plot_sweep

    drawn = {}
    real_save = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        ax = fig.axes[0]
        drawn["ticks"] = [t.get_text() for t in ax.get_xticklabels()]
        drawn["x"] = [list(c.lines[0].get_xdata()) for c in ax.containers]
        drawn["texts"] = [t.get_text() for t in ax.texts]
        return real_save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    base = "runs/synthetic/{}/tokd{}/both/seed0"
    _write(tmp_path, base.format("resnet18_thin", "@d=256"), 0.8)
    _write(tmp_path, base.format("resnet18_thin", "@d=512"), 0.8)
    _write(tmp_path, base.format("resnet34_thin", "@d=128"), 0.8)  # a student lacking 256/512
    reg = load_registry()
    plot_sweep(collect_runs(tmp_path), reg, "rotation", tmp_path / "r.png")
    assert drawn["ticks"] == ["128", "256", "512", "1024", "2048"]
    assert sorted(drawn["x"]) == [[0], [1, 2]]  # each point at its own value's position
    assert drawn["texts"] == []
    other = tmp_path / "one"
    _write(other, base.format("resnet18_thin", "@alpha1=100,alpha2=100"), 0.8)
    plot_sweep(collect_runs(other), reg, "alpha", tmp_path / "a.png")
    assert "--sweep alpha=1,10,100,1000" in drawn["texts"][0]


def test_runs_distilled_from_other_teacher_weights_are_marked(tmp_path):
    from kdbench.report.marks import OTHER_TEACHER_NOTE
    from kdbench.report.tables import build

    teacher = tmp_path / "teachers/synthetic/resnet18_thin-abc"
    teacher.mkdir(parents=True)
    (teacher / "metrics.json").write_text(json.dumps(
        {"status": "finished", "test": {"acc": 0.9}, "weights_sha256": "a" * 64}))
    used = {("at", "rgb"): "a" * 64, ("at", "both"): "b" * 64, ("vid", "rgb"): None}
    for (method, mode), sha in used.items():
        for seed in (0, 1):
            run = tmp_path / f"runs/synthetic/resnet18_thin/{method}/{mode}/seed{seed}"
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps({
                "status": "finished", "test": {"acc": 0.8 + seed / 100},
                "teacher": "/elsewhere/teachers/synthetic/resnet18_thin-abc",  # another machine
                "teacher_sha256": sha if seed == 1 else used[("at", "rgb")]}))
    runs = collect_runs(tmp_path)
    flagged = runs[runs["other_teacher"]]
    assert list(zip(flagged["method"], flagged["mode"], flagged["seed"])) == [("at", "both", 1)]
    report = build("comparison", runs, {})
    cells = dict(zip(report.columns, report.text_rows()[0]))
    assert "†" in cells["at both"] and "†" not in cells["at rgb"] + cells["vid rgb"]
    assert OTHER_TEACHER_NOTE in report.notes
    clean = build("comparison", runs[runs["mode"] == "rgb"], {})
    assert OTHER_TEACHER_NOTE not in clean.notes


def test_every_table_states_the_majority_rate_of_its_test_frames(tmp_path):
    from kdbench.registry import load_registry
    from kdbench.report.tables import build
    from kdbench.train.predictions import save_predictions

    base = "runs/{}/resnet18_thin/{}/{}/seed0"
    for dataset, fraction in (("synthetic", 0.8), ("celebdf", 0.35)):
        for method, mode in (("vanilla", "none"), ("tokd", "both")):
            run = tmp_path / base.format(dataset, method, mode)
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps({"status": "finished", "test": {
                "acc": 0.8, "auc": 0.9, "fake_fraction": fraction}}))
    # a run made before the fraction was recorded: its stored predictions' labels count
    old = tmp_path / base.format("ff_c40", "vanilla", "none")
    old.mkdir(parents=True)
    (old / "metrics.json").write_text(json.dumps({"status": "finished", "test": {"acc": 0.7}}))
    save_predictions(old / "predictions.npz", [0.5] * 4, [1, 1, 1, 0], ["v"] * 4)
    cross = tmp_path / base.format("synthetic", "vanilla", "none") / "cross"
    cross.mkdir()
    (cross / "synthetic_c23.json").write_text(json.dumps({
        "test_dataset": "synthetic_c23", "test": {"auc": 0.8, "eer": 0.2, "fake_fraction": 0.9}}))
    runs, reg = collect_runs(tmp_path), load_registry()
    mixed = ("Majority rate of the test frames (always answering the larger class): "
             "65.0 % real (celebdf), 75.0 % fake (ff_c40), 80.0 % fake (synthetic).")
    for kind in ("comparison", "ablation", "rotation", "teacher"):
        assert mixed in build(kind, runs, reg).notes, kind
    one = build("comparison", runs[runs["dataset"] == "synthetic"], reg)
    assert one.notes[1] == ("Majority rate of the test frames (always answering fake): "
                            "80.0 % (synthetic).")
    assert ("Majority rate of the test frames (always answering fake): 90.0 % "
            "(synthetic_c23).") in build("cross", runs, reg).notes
    assert "- Majority rate of the test frames" in one.markdown()
    assert "% Majority rate of the test frames" in one.latex()


def test_a_table_of_two_metrics_shows_both_in_each_cell(tmp_path, capsys):
    from kdbench.report.tables import build

    runs = collect_runs(_store(tmp_path / "R"))
    report = build("comparison", runs, {}, "acc,auc")
    assert report.title == "Comparison (Table 3): test acc / auc"
    assert report.notes[0].startswith("acc / auc in %")
    cells = dict(zip(report.columns, report.text_rows()[0]))
    assert cells["vanilla"] == "82.00 ± 2.00 / 90.00 ± 0.00≡ (3)"
    vanilla = report.rows[0][report.columns.index("vanilla")]
    assert vanilla.mean == pytest.approx(0.82) and vanilla.n == 3  # the first metric's
    csv = report.csv().splitlines()
    assert csv[0] == "dataset,student,column,metric,mean,std,n,mark" and len(csv) == 1 + 10
    assert "synthetic,resnet18_thin,vanilla,auc,0.9," in report.csv()
    assert main(["table", "--kind", "comparison", "--results", str(tmp_path / "R"),
                 "--metric", "acc,auc"]) == 0
    assert "| 82.00 ± 2.00 / 90.00 ± 0.00≡ (3) |" in capsys.readouterr().out
    assert main(["table", "--kind", "comparison", "--results", str(tmp_path / "R"),
                 "--metric", "acc,aucc"]) == 2
    assert "unknown metric 'aucc' (did you mean 'auc'?)" in capsys.readouterr().err
