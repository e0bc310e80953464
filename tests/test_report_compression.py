"""The compression table (rows, means over seeds, ΔAUC against the parent by the two-level
bootstrap), the Pareto figure and the deploy figure (labels inside the axes, readable log ticks),
on a fabricated store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from kdbench.compress.settings import Compression
from kdbench.errors import KdbenchError
from kdbench.report import figures
from kdbench.report.compression import compression_models, compression_report
from kdbench.report.deploy import plot_deploy
from kdbench.report.pareto import pareto_front, pareto_points, plot_pareto
from kdbench.train.predictions import save_predictions

SEEDS = (0, 1, 2)
VIDEOS, LABELS = [], []
for _i in range(10):  # FF++-style identity pairs: reals a, b; fakes M/a_b, M/b_a; one frame each
    _a, _b = f"{2 * _i:03d}", f"{2 * _i + 1:03d}"
    VIDEOS += [_a, _b, f"Deepfakes/{_a}_{_b}", f"Deepfakes/{_b}_{_a}"]
    LABELS += [0, 0, 1, 1]
VIDEOS, LABELS = np.array(VIDEOS), np.array(LABELS)
PARENT = "runs/synthetic/resnet18_thin/vanilla/none"
CHILD = "compressed/synthetic/resnet18_thin/vanilla/none"


def _probs(seed: int, skill: float = 0.4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(skill * LABELS + rng.uniform(0, 1 - skill, len(LABELS)), 0, 1)


def _test(auc: float) -> dict:
    return {"acc": auc - 0.05, "auc": auc, "ap": auc + 0.05, "eer": 0.2, "video_auc": auc}


def _deploy(label: str, params: int, mb: float, ms: float, auc: float, int8: bool) -> dict:
    formats = {"onnx_fp32": {"params": params, "file_mb": mb, "latency_ms_b1": 2 * ms,
                             "latency_ms_b32": ms, "test": _test(auc)}}
    if int8:
        formats["onnx_int8"] = {"params": params, "file_mb": mb / 4, "latency_ms_b1": ms,
                                "latency_ms_b32": ms / 2, "test": _test(auc - 0.01)}
    return {"label": label, "dataset": "synthetic", "size": 64, "cpu": "Test CPU", "threads": 1,
            "formats": formats}


def _write(folder: Path, metrics: dict, prob: np.ndarray, deploy: dict | None = None,
           int8: np.ndarray | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    save_predictions(folder / "predictions.npz", prob, LABELS, VIDEOS)
    if deploy is not None:
        (folder / "deploy").mkdir()
        (folder / "deploy" / "deploy.json").write_text(json.dumps(deploy))
    if int8 is not None:
        save_predictions(folder / "deploy" / "predictions_onnx_int8.npz", int8, LABELS, VIDEOS)


def _child(seed: int, technique: str, scope, target: float, finetune_with, tag: str,
           params: int) -> dict:
    return {"status": "finished", "role": "compressed", "dataset": "synthetic",
            "student": "resnet18_thin", "seed": seed,
            "parent": {"path": f"{PARENT}/seed{seed}",
                       "label": f"resnet18_thin/vanilla/none/seed{seed}", "method": "vanilla",
                       "variant": "", "mode": "none", "params": 2815490, "gflops": 0.0297},
            "compression": {**Compression(technique, target, scope or "layer", 1, 1,
                                          finetune_with).record(),  # as compress writes it
                            "achieved": target - 0.001 * (seed + 1)},
            "params": params, "nonzero_params": params, "gflops": 0.0297 * params / 2815490,
            "gzip_mb": 1.0 + seed, "test": _test(0.8), "tag": tag}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A store: a vanilla parent (3 seeds, deployed with int8), its structured child (deployed
    with int8), an unstructured child identical to the parent (no deploy.json), a structured +
    kd child much worse (inverted), a deployed tokd parent, an undeployed kd parent without
    children (not a model), and the teacher."""
    root = tmp_path_factory.mktemp("store")
    preds: dict[str, dict[int, np.ndarray]] = {k: {} for k in
                                               ("parent", "struct", "int8", "worse", "pint8")}
    for s in SEEDS:
        parent, struct = _probs(s), _probs(100 + s, 0.3)
        preds["parent"][s], preds["struct"][s] = parent, struct
        preds["pint8"][s] = np.clip(parent + 0.05 * np.sin(np.arange(40) + s), 0, 1)
        preds["int8"][s] = np.clip(struct + 0.1 * np.cos(np.arange(40) * (s + 1)), 0, 1)
        preds["worse"][s] = 1 - parent
        run = {"status": "finished", "role": "student", "student": "resnet18_thin",
               "method": "vanilla", "variant": "", "mode": "none", "seed": s,
               "dataset": "synthetic", "params": 2815490, "gflops": 0.0297,
               "test": _test(0.80 + 0.05 * s)}
        _write(root / PARENT / f"seed{s}", run, parent,
               _deploy(f"resnet18_thin/vanilla/none/seed{s}", 2815490, 11.0, 1.0 + s,
                       0.8, int8=True), preds["pint8"][s])
        _write(root / CHILD / f"seed{s}/structured-0.9",
               _child(s, "structured", None, 0.9, None, "structured-0.9", 283000), struct,
               _deploy("c", 283000, 1.1, 0.1, 0.7, int8=True), preds["int8"][s])
        _write(root / CHILD / f"seed{s}/unstructured-layer-0.5",
               _child(s, "unstructured", "layer", 0.5, None, "u", 2815490), parent)
        _write(root / CHILD / f"seed{s}/structured-0.95-kd",
               _child(s, "structured", None, 0.95, "kd", "k", 140000), preds["worse"][s])
        tokd = {**run, "method": "tokd", "mode": "both", "test": _test(0.9)}
        _write(root / f"runs/synthetic/resnet18_thin/tokd/both/seed{s}", tokd, _probs(200 + s),
               _deploy("t", 2815490, 11.0, 1.0, 0.9, int8=False))
        _write(root / f"runs/synthetic/resnet18_thin/kd/rgb/seed{s}", {**run, "method": "kd"},
               _probs(300 + s))
    teacher = root / "teachers/synthetic/resnet18_thin-abc123"
    teacher.mkdir(parents=True)
    (teacher / "metrics.json").write_text(json.dumps({
        "role": "teacher", "kind": "dual", "backbone": "resnet18_thin", "params": 7023884,
        "gflops": 0.0988, "test": _test(0.93)}))
    report = compression_report(root, n_boot=300)
    rows = {(r[0], r[1]): dict(zip(report.columns, r)) for r in report.text_rows()}
    return {"root": root, "preds": preds, "report": report, "rows": rows}


def _auc_delta(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> float:
    return float(np.mean([roc_auc_score(LABELS, a[s]) - roc_auc_score(LABELS, b[s])
                          for s in SEEDS]))


def _interval(text: str) -> tuple[float, float, float]:
    d, rest = text.split(" [")
    lo, hi = rest.split("]")[0].split(", ")
    return float(d), float(lo), float(hi)


P = "resnet18_thin/vanilla/none"


def test_the_rows_are_parents_children_int8_files_distillers_and_the_teacher(store):
    models = compression_models(store["root"])
    assert [(m["label"], m["technique"], m["format"]) for m in models] == [
        ("teacher (2 x resnet18_thin)", "teacher", "fp32"),
        (P, "none", "fp32"), (P, "int8 static", "int8 static"),
        (P, "structured", "fp32"), (P, "structured + int8 static", "int8 static"),
        (P, "structured + kd", "fp32"), (P, "unstructured (layer)", "fp32"),
        ("resnet18_thin/tokd/both", "distilled (tokd)", "fp32")]
    assert [r[0:2] for r in store["report"].rows] == [[m["label"], m["technique"]]
                                                        for m in models]
    assert {m["family"] for m in models} == {"teacher", "uncompressed", "int8", "structured",
                                             "structured + distiller", "unstructured"}
    assert all(m["seeds"] == list(SEEDS) for m in models if m["technique"] != "teacher")


def test_numbers_are_means_over_seeds(store):
    models = {(m["label"], m["technique"]): m for m in compression_models(store["root"])}
    parent, child = models[(P, "none")], models[(P, "structured")]
    assert parent["auc"] == pytest.approx(0.85) and parent["ms_b32"] == pytest.approx(2.0)
    assert parent["ms_b1"] == pytest.approx(4.0) and parent["mb_int8"] == pytest.approx(2.75)
    assert child["achieved"] == pytest.approx(0.898) and child["mb_gzip"] == pytest.approx(2.0)
    assert child["params"] == 283000 and child["mb_fp32"] == pytest.approx(1.1)
    row = store["rows"][(P, "none")]
    assert (row["AUC"], row["acc"], row["AP"], row["ms b32"]) == ("85.00", "80.00", "90.00",
                                                                  "2.000")
    assert row["params (M)"] == "2.82" and row["ΔAUC vs parent"] == "-"
    assert store["rows"][(P, "structured")]["target"] == "90 (89.80)"
    assert store["rows"][(P, "structured")]["seeds"] == "3"


def test_delta_auc_is_the_mean_per_seed_difference_against_the_parent(store):
    d, lo, hi = _interval(store["rows"][(P, "structured")]["ΔAUC vs parent"])
    expected = 100 * _auc_delta(store["preds"]["struct"], store["preds"]["parent"])
    assert d == pytest.approx(expected, abs=0.005 + 1e-9) and lo <= d <= hi


def test_an_identical_child_has_zero_delta_and_no_mark(store):
    text = store["rows"][(P, "unstructured (layer)")]["ΔAUC vs parent"]
    d, lo, hi = _interval(text)
    assert d == 0 and lo <= 0 <= hi and not text.endswith(("↑", "↓"))


def test_a_much_worse_child_is_marked_down(store):
    text = store["rows"][(P, "structured + kd")]["ΔAUC vs parent"]
    d, _, hi = _interval(text.rstrip(" ↓"))
    assert text.endswith("↓") and hi < 0
    assert d == pytest.approx(100 * _auc_delta(store["preds"]["worse"], store["preds"]["parent"]),
                              abs=0.005 + 1e-9)


def test_an_int8_rows_delta_is_against_its_fp32_model(store):
    child = _interval(store["rows"][(P, "structured + int8 static")]["ΔAUC vs parent"])[0]
    parent = _interval(store["rows"][(P, "int8 static")]["ΔAUC vs parent"])[0]
    assert child == pytest.approx(100 * _auc_delta(store["preds"]["int8"],
                                                   store["preds"]["struct"]), abs=0.0051)
    assert parent == pytest.approx(100 * _auc_delta(store["preds"]["pint8"],
                                                    store["preds"]["parent"]), abs=0.0051)
    row = store["rows"][(P, "structured + int8 static")]
    assert (row["MB fp32"], row["MB int8"], row["ms b32"]) == ("1.10", "0.28", "0.050")


def test_a_model_without_deploy_json_has_no_latency_and_the_teacher_no_delta(store):
    row = store["rows"][(P, "unstructured (layer)")]
    assert row["ms b1"] == row["ms b32"] == row["MB fp32"] == row["MB int8"] == "-"
    assert row["GFLOPs"] == "0.0297" and row["MB gzip"] == "2.00"
    teacher = store["rows"][("teacher (2 x resnet18_thin)", "teacher")]
    assert teacher["ΔAUC vs parent"] == "-" and teacher["AUC"] == "93.00"
    notes = " ".join(store["report"].notes)
    assert "Holm" in notes and "ΔAUC against the uncompressed parent" in notes
    assert "Test CPU, 1 thread" in notes and "kdbench table --kind compression" in notes
    assert "gzip" in notes and "fraction of weights zeroed" in notes


def test_models_that_would_read_the_same_name_their_steps(tmp_path):
    run = {"status": "finished", "role": "student", "params": 2815490, "gflops": 0.0297,
           "test": _test(0.8)}
    _write(tmp_path / PARENT / "seed0", run, _probs(0))
    for steps, tag in ((1, "a"), (3, "b")):
        child = _child(0, "structured", None, 0.9, None, tag, 283000)
        child["compression"]["steps"] = steps
        _write(tmp_path / CHILD / f"seed0/{tag}", child, _probs(1))
    assert [m["technique"] for m in compression_models(tmp_path)] == [
        "none", "structured (1 steps, ft 1 ep)", "structured (3 steps, ft 1 ep)"]


def test_the_recorded_fine_tuning_mode_tells_a_distiller(tmp_path):
    run = {"status": "finished", "role": "student", "params": 2815490, "gflops": 0.0297,
           "test": _test(0.8)}
    _write(tmp_path / PARENT / "seed0", run, _probs(0))
    for target, with_, mode in ((0.5, "vanilla", None), (0.6, "kd", "both"), (0.7, None, None)):
        child = _child(0, "structured", None, target, with_, str(target), 283000)
        child["compression"]["finetune_mode"] = mode
        _write(tmp_path / CHILD / f"seed0/{target}", child, _probs(1))
    models = compression_models(tmp_path)
    assert [(m["technique"], m["family"]) for m in models] == [
        ("none", "uncompressed"), ("structured", "structured"),
        ("structured + kd", "structured + distiller"), ("structured", "structured")]


def test_an_empty_store_says_how_to_make_compressed_runs(tmp_path):
    report = compression_report(tmp_path)
    assert report.rows == []
    assert any("kdbench compress RUN --prune structured --target 0.9" in n
               for n in report.notes)


def test_the_pareto_front_is_the_non_dominated_points():
    points = [(1.0, 80.0), (2.0, 85.0), (2.0, 84.0), (3.0, 85.0), (0.5, 70.0), (4.0, 90.0),
              (5.0, 89.0), (0.5, 60.0)]
    assert pareto_front(points) == [4, 0, 1, 5]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # equal points: both kept
    assert pareto_front([]) == []


def _captured(monkeypatch) -> list:
    figs = []
    save = figures.save_figure

    def keep(fig, out):
        figs.append(fig)
        save(fig, out)

    monkeypatch.setattr(figures, "save_figure", keep)
    return figs


def _check_axes(fig) -> None:
    """Every annotation inside the axes once drawn (at the screen's and the file's dpi); the
    log x axis without minor labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # a closed figure's canvas no longer draws
    ax = fig.axes[0]
    assert ax.texts
    for dpi in (100, 120):
        fig.set_dpi(dpi)
        fig.canvas.draw()
        box = ax.get_window_extent()
        for text in ax.texts:
            e = text.get_window_extent()
            assert (e.x0 >= box.x0 - 0.5 and e.x1 <= box.x1 + 0.5 and e.y0 >= box.y0 - 0.5
                    and e.y1 <= box.y1 + 0.5), (dpi, text.get_text())
    minor = ax.xaxis.get_minor_formatter().format_ticks(ax.xaxis.get_minorticklocs())
    assert all(t == "" for t in minor)
    assert all(t.get_text() == "" for t in ax.xaxis.get_minorticklabels())
    shown = [t.get_text() for t in ax.xaxis.get_majorticklabels() if t.get_text()]
    lo, hi = ax.get_xlim()
    assert all(float(t) >= lo and float(t) <= hi and t.lstrip("0.")[0] in "125" for t in shown
               if lo <= float(t) <= hi)


@pytest.mark.parametrize("x", ["gflops", "latency", "size"])
def test_plot_pareto_writes_the_figure_with_every_label_inside(store, tmp_path, monkeypatch, x):
    figs = _captured(monkeypatch)
    out = tmp_path / f"pareto_{x}.png"
    n = plot_pareto(store["root"], out, x)
    expected = len(pareto_points(store["root"], x))
    assert n == expected == {"gflops": 6, "latency": 5, "size": 7}[x]  # gflops: no int8 files
    families = {p["family"] for p in pareto_points(store["root"], x)}
    assert ("int8" in families) == (x != "gflops")
    assert out.stat().st_size > 1000
    _check_axes(figs[0])


def test_plot_pareto_bad_x_and_no_points_are_one_line_errors(tmp_path):
    with pytest.raises(KdbenchError, match="gflops, latency, size"):
        plot_pareto(tmp_path, tmp_path / "p.png", "watts")
    with pytest.raises(KdbenchError, match="kdbench compress RUN --prune structured"):
        plot_pareto(tmp_path, tmp_path / "p.png")


def test_plot_deploy_keeps_a_far_right_teacher_label_inside(tmp_path, monkeypatch):
    figs = _captured(monkeypatch)
    teacher = {"params": 7023884, "file_mb": 28.2, "latency_ms_b1": 6.6, "latency_ms_b32": 1.7,
               "kind": "dual", "backbone": "resnet18_thin", "teacher": "/x/resnet18_thin-abc",
               "test": _test(0.93)}
    records = []
    for i, (ms, auc) in enumerate([(0.15, 0.9), (0.36, 0.88), (0.6, 0.6), (0.95, 0.57)]):
        rec = _deploy(f"resnet18_thin/m{i}/none/seed0", 2815490, 11.0, ms, auc, int8=True)
        rec["formats"]["teacher_pytorch_fp32"] = teacher
        records.append(rec)
    assert plot_deploy(records, tmp_path / "deploy.png") == 9
    fig = figs[0]
    _check_axes(fig)
    far = max(fig.axes[0].texts, key=lambda t: t.xy[0])
    assert far.get_text().startswith("teacher") and far.get_ha() == "right"
    assert (tmp_path / "deploy.png").stat().st_size > 1000


def test_log_ticks_are_1_2_5_with_plain_labels():
    plt = figures._pyplot()
    fig, ax = plt.subplots()
    ax.set_xscale("log")
    ax.set_xlim(0.13, 12)
    figures.log_ticks(ax.xaxis)
    fig.canvas.draw()
    shown = [t.get_text() for t in ax.xaxis.get_majorticklabels()
             if 0.13 <= t.get_position()[0] <= 12]
    assert shown == ["0.2", "0.5", "1", "2", "5", "10"]
    assert not any(t.get_text() for t in ax.xaxis.get_minorticklabels())
    plt.close(fig)


def test_the_readme_section_tests_the_reviews_claim_on_each_90_percent_model(store, tmp_path):
    from tools.readme_compression import compression_section

    section = compression_section(store["root"])
    assert section.startswith("## Compression") and "| ΔAUC vs parent |" in section
    claims = [line for line in section.splitlines() if line.startswith("- structured")]
    assert len(claims) == 1 and "at 89.8 % (3 seeds)" in claims[0]  # the 0.9 model only
    assert ("does not hold here" in claims[0]) != ("holds here" in claims[0].replace(
        "does not hold here", ""))
    assert compression_section(tmp_path) == ""  # no compressed runs: no section
