"""Generator protocols: --train-generators / --test-generators as data settings that name the
run folder (and the teacher's, only when set), test predictions that carry each frame's
generator, the train x test generator table, and `reproduce --protocol logo|one-to-all`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from kdbench import api
from kdbench.cli import main
from kdbench.config import RunSpec, protocol_tag, resolve_config
from kdbench.data.synthetic import generated
from kdbench.data.synthetic.generated import GENERATORS
from kdbench.errors import KdbenchError
from kdbench.report.generators import gap_changes, generators_report, slice_scores
from kdbench.request import RunRequest
from kdbench.train.predictions import Predictions, load_predictions, save_predictions


def test_generator_settings_are_sorted_and_name_the_run_folder_only_when_set():
    cfg = resolve_config("quick", "synthetic_gen", {"data": {"train_generators": "b, a,b"}})
    assert cfg["data"]["train_generators"] == "a,b" and cfg["data"]["test_generators"] == ""
    assert protocol_tag(cfg["data"]) == "train=a+b"
    assert protocol_tag({"train_generators": "", "test_generators": "c"}) == "test=c"
    spec = RunSpec("synthetic_gen", "resnet18_thin", "vanilla", "none", 0, {}, "", "train=a+b")
    assert spec.relpath == "runs/synthetic_gen@train=a+b/resnet18_thin/vanilla/none/seed0"
    assert RunSpec("synthetic", "s", "m", "rgb", 1).relpath == "runs/synthetic/s/m/rgb/seed1"


def test_a_generator_name_that_cannot_name_a_folder_is_one_line():
    with pytest.raises(KdbenchError, match="'progan/cat' cannot name a run folder"):
        resolve_config("quick", "folder", {"data": {"test_generators": "progan/cat"}})


def test_the_teacher_folder_of_the_default_protocol_is_unchanged():
    from kdbench.config import for_device
    from kdbench.train.teachers import teacher_folder

    base = for_device(resolve_config("cpu", "synthetic", {}), "cpu")
    held = for_device(resolve_config("cpu", "synthetic",
                                     {"data": {"train_generators": "Deepfakes"}}), "cpu")
    assert teacher_folder(Path("R"), "synthetic", base).name == "resnet18_thin-db0623b7"
    assert teacher_folder(Path("R"), "synthetic", held).name != "resnet18_thin-db0623b7"


def test_the_option_and_the_setting_are_one_setting(tmp_path):
    p = api.plan(RunRequest.make("run", methods="vanilla", dataset="synthetic_gen",
                                 train_generators="periodic,nearest-up", results=tmp_path,
                                 device="cpu"))
    assert p.config["data"]["train_generators"] == "nearest-up,periodic"
    assert "synthetic_gen@train=nearest-up+periodic" in str(p.runs[0].run_dir)
    with pytest.raises(KdbenchError, match="name the same setting"):
        api.plan(RunRequest.make("run", methods="vanilla", dataset="synthetic_gen",
                                 train_generators="periodic", results=tmp_path, device="cpu",
                                 settings=["data.train_generators=periodic"]))


def _preds(gen, label, prob) -> Predictions:
    return Predictions(np.asarray(prob, float), np.asarray(label), np.array(
        [f"v{i}" for i in range(len(label))]), np.asarray(gen))


def test_a_slice_scores_a_generators_fakes_against_its_reals_and_the_shared_ones():
    gen = ["a", "a", "a", "b", "b", "b", "real", "real"]
    label = [1, 1, 0, 1, 1, 0, 0, 0]
    prob = [0.9, 0.4, 0.5, 0.2, 0.3, 0.1, 0.6, 0.35]
    scores = slice_scores(_preds(gen, label, prob), ["auc", "ap"])
    keep_a = [0, 1, 2, 6, 7]
    y = np.array(label)[keep_a]
    p = np.array(prob)[keep_a]
    assert scores["a"]["auc"] == pytest.approx(roc_auc_score(y, p))
    assert scores["a"]["ap"] == pytest.approx(average_precision_score(y, p))
    keep_b = [3, 4, 5, 6, 7]
    assert scores["b"]["auc"] == pytest.approx(roc_auc_score(np.array(label)[keep_b],
                                                             np.array(prob)[keep_b]))
    assert slice_scores(Predictions(np.zeros(2), np.array([0, 1]), np.array(["x", "y"])),
                        ["auc"]) == {}


def _write_run(folder: Path, scores: dict[str, float], seed: int, trained=None) -> None:
    """A finished run whose predictions give generator g the AUC scores[g] exactly: per
    generator 10 reals at 0..9 and 10 fakes placed to give that AUC."""
    gen, label, prob = [], [], []
    for g, target in scores.items():
        wins = round(target * 100)  # of the 10 x 10 (fake, real) pairs
        reals = np.arange(10) / 10
        fakes = [w / 10 - 0.05 for w in _spread(wins)]  # above exactly w of the reals
        gen += [g] * 20
        label += [0] * 10 + [1] * 10
        prob += list(reals) + fakes
    folder.mkdir(parents=True)
    save_predictions(folder / "predictions.npz", np.array(prob), np.array(label),
                     np.array([f"{g}{i}" for i, g in enumerate(gen)]), np.array(gen))
    (folder / "metrics.json").write_text(json.dumps({"status": "finished", "seed": seed,
                                                     "generators": {"train": trained or []}}))


def _spread(wins: int) -> list[int]:
    """Ten fakes, each beating w_i of the ten reals (sum w_i = wins)."""
    base, extra = divmod(wins, 10)
    return [base + (i < extra) for i in range(10)]


def test_the_generator_table_marks_held_out_columns_and_means_them(tmp_path):
    runs = tmp_path / "runs" / "ds@train=a+b" / "s" / "vanilla" / "none"
    table = {0: {"a": 0.9, "b": 0.8, "c": 0.6}, 1: {"a": 0.8, "b": 0.8, "c": 0.5}}
    for seed, scores in table.items():
        _write_run(runs / f"seed{seed}", scores, seed)
        child = {"a": scores["a"] - 0.1, "b": scores["b"], "c": scores["c"] - 0.2}
        _write_run(tmp_path / "compressed" / "ds@train=a+b" / "s" / "vanilla" / "none"
                   / f"seed{seed}" / "structured-90-ft2", child, seed)
    for seed in table:  # the AUCs came out as meant
        pred = load_predictions(runs / f"seed{seed}" / "predictions.npz")
        got = slice_scores(pred, ["auc"])
        assert {g: round(v["auc"], 6) for g, v in got.items()} == table[seed]
    report = generators_report(tmp_path, metrics=["auc"])
    cols = report.columns
    assert cols[3:6] == ["a", "b", "c"] and cols[-4:] == ["ID mean", "OOD mean", "ΔID", "ΔOOD"]
    rows = {r[2]: r for r in report.rows}
    parent = rows["s vanilla none"]
    assert parent[1] == "all but c"
    assert parent[5].mark == "°" and parent[3].mark == ""
    assert parent[5].mean == pytest.approx(0.55) and parent[5].n == 2
    assert parent[6].mean == pytest.approx(np.mean([0.85, 0.8]))  # ID: mean of a, b per seed
    assert parent[7].mean == pytest.approx(0.55)
    child = rows["s vanilla none + structured-90-ft2"]
    assert child[8] == "-5.00 (2)" and child[9] == "-20.00 (2)"
    assert not math.isnan(parent[5].std)
    gaps = gap_changes(tmp_path)  # (ΔOOD - ΔID) per seed: (-0.2) - (-0.05)
    assert list(gaps) == ["vanilla + structured-90-ft2"]
    assert gaps["vanilla + structured-90-ft2"] == pytest.approx([-0.15, -0.15])


def test_a_run_of_every_generator_counts_those_its_training_split_held_as_seen(tmp_path):
    _write_run(tmp_path / "runs/ds/s/vanilla/none/seed0", {"a": 0.9, "b": 0.6}, 0,
               trained=["a"])
    row = generators_report(tmp_path, metrics=["auc"]).rows[0]
    assert row[1] == "a" and row[4].mark == "°" and row[3].mark == ""
    assert row[5].mean == pytest.approx(0.9) and row[6].mean == pytest.approx(0.6)


def test_the_results_readme_section_reads_the_claim_from_the_store(tmp_path):
    from tools.readme_generators import generators_section

    assert generators_section(tmp_path) == ""
    for seed, shift in ((0, 0.2), (1, 0.3)):  # the child loses more on c, the held-out one
        base = {"a": 0.9, "b": 0.8, "c": 0.7}
        _write_run(tmp_path / f"runs/synthetic_gen@train=a+b/s/vanilla/none/seed{seed}", base,
                   seed)
        _write_run(tmp_path / f"compressed/synthetic_gen@train=a+b/s/vanilla/none/seed{seed}"
                   / "structured-90-ft2", {**base, "c": 0.7 - shift}, seed)
    text = generators_section(tmp_path)
    assert "| synthetic_gen | all but c |" in text
    assert "(ΔOOD - ΔID) = -25.00 ± 10.00 AUC points" in text and "the claim holds here" in text


def test_runs_of_a_wavelet_view_teacher_are_rows_of_their_own(tmp_path):
    _write_run(tmp_path / "runs/ds@train=a/s/vanilla/none/seed0", {"a": 0.9, "b": 0.6}, 0)
    _write_run(tmp_path / "runs/ds@train=a,view=dwt/s/vanilla/none/seed0", {"a": 0.8, "b": 0.7},
               0)
    rows = generators_report(tmp_path, "ds", metrics=["auc"]).rows
    assert sorted(r[0] for r in rows) == ["ds", "ds@view=dwt"]
    assert all(r[3].n == 1 for r in rows)


def test_the_generator_table_says_how_to_make_its_runs(tmp_path):
    with pytest.raises(KdbenchError, match="--train-generators"):
        generators_report(tmp_path)


@pytest.fixture()
def tiny_gen(tmp_path, monkeypatch):
    monkeypatch.setattr(generated, "PER_SPLIT", {"train": 6, "val": 2, "test": 2})
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def test_protocols_leave_each_generator_out_or_train_on_the_source(tiny_gen, tmp_path):
    from kdbench.protocols import SOURCE, training_sets

    cfg = resolve_config("quick", "synthetic_gen", {"data": {"size": 16}})
    logo = RunRequest.make("reproduce", dataset="synthetic_gen", protocol="logo",
                           data_root=tiny_gen, progress=False)
    sets = training_sets(logo, tiny_gen, cfg)
    names = sorted(GENERATORS)
    assert sets == [tuple(g for g in names if g != out) for out in names]
    one = RunRequest.make("reproduce", dataset="synthetic_gen", protocol="one-to-all",
                          data_root=tiny_gen, progress=False)
    assert training_sets(one, tiny_gen, cfg) == [(SOURCE["synthetic_gen"],)]
    with pytest.raises(KdbenchError, match="drop --train-generators"):
        training_sets(RunRequest.make("reproduce", dataset="synthetic_gen", protocol="logo",
                                      train_generators="periodic"), tiny_gen, cfg)


def test_an_unknown_generator_is_one_line_with_the_list(tiny_gen, tmp_path, capsys):
    code = main(["run", "--methods", "vanilla", "--dataset", "synthetic_gen", "--data-root",
                 str(tiny_gen), "--preset", "quick", "--set", "data.size=16",
                 "--train-generators", "periodc", "--results", str(tmp_path / "R"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "unknown generator 'periodc' (did you mean 'periodic'?)" in err[0]
    assert all(g in err[0] for g in GENERATORS)


@pytest.mark.slow
def test_reproduce_logo_fills_the_matrix(tiny_gen, tmp_path):
    results = tmp_path / "R"
    summary = api.reproduce("quick", dataset="synthetic_gen", data_root=tiny_gen,
                            protocol="logo", seeds=[0], results=results, progress=False,
                            settings=["data.size=16", "train.epochs=1"], registry=[])
    n = len(GENERATORS)
    assert summary.trained == 2 * n and not summary.failed  # vanilla and the declared method
    table = (results / "tables" / "generators.md").read_text()
    for g in GENERATORS:
        assert f"| all but {g} |" in table
    pred = load_predictions(next(results.glob("runs/*/*/vanilla/none/seed0/predictions.npz")))
    assert set(pred.generator) == set(GENERATORS)
    log = json.loads((results / "reproduce.jsonl").read_text().splitlines()[-1])
    assert "--protocol logo" in log["command"]
