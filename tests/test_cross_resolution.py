"""Cross-resolution distillation: a student that reads a smaller image than its teacher (the
degradation model), distilled, tested, predicting on videos with the same scores as its
evaluation, exported to ONNX with the small input; bad sizes are one line."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from kdbench import api
from kdbench.cli import main
from kdbench.data.prepare import ffpp_items, prepare_items
from kdbench.data.synthetic.manipulations import MANIPULATIONS
from kdbench.data.synthetic.tree import SynthConfig, generate
from kdbench.train.predictions import load_predictions

SMALL = 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic videos prepared at 32 px and a KD student at 16 px distilled (both mode) from
    the 32-px teacher, one epoch each: (items, prepared folder, run folder)."""
    root = tmp_path_factory.mktemp("xres")
    videos = generate(root / "videos", SynthConfig(seed=0, pairs=(2, 1, 1), size=32, frames=4),
                      workers=1, progress=False)
    items = ffpp_items(videos, "c40", MANIPULATIONS)
    prepared = root / "prepared"
    prepare_items(items, prepared, "ff_c40", frames=4, size=32, detector="center",
                  progress=False)
    api.run("kd", "ff_c40", data_root=prepared, preset="quick", modes=["both"],
            results=root / "R", progress=False,
            settings={"data.size": 32, "data.frames": 4, "train.epochs": 1,
                      "student.size": SMALL})
    return items, prepared, root / f"R/runs/ff_c40/resnet18_thin@{SMALL}px/kd/both/seed0"


@pytest.mark.slow
def test_a_small_student_predicts_as_it_was_tested_and_exports_with_the_small_input(trained):
    pytest.importorskip("onnxruntime", reason='the deploy extra is not installed (pip install '
                        '"kdbench[deploy]")')
    items, prepared, run = trained
    assert (run / "metrics.json").is_file()
    test = [it for it in items if it.split == "test"]
    scores, student = api.predict([it.path for it in test], run=run, progress=False)
    assert student.size == SMALL
    saved = load_predictions(run / "predictions.npz")
    means = pd.Series(saved.prob).groupby(saved.video).mean()
    for item, score in zip(test, scores):
        assert score.score == pytest.approx(means[item.video], abs=1e-5)
    record = api.export(run, data_root=prepared, threads=1, repeats=(2, 2), teacher=False)
    onnx = record["formats"]["onnx_fp32"]
    assert onnx["max_abs_diff"] <= 1e-4 and record["size"] == SMALL
    import onnxruntime as ort

    sess = ort.InferenceSession(str(run / "deploy/student.onnx"))
    assert sess.get_inputs()[0].shape[-2:] == [SMALL, SMALL]


@pytest.mark.slow
def test_a_blurred_jpeg_noisy_student_deploys_with_its_degradation_before_the_model(trained):
    pytest.importorskip("onnxruntime", reason='the deploy extra is not installed (pip install '
                        '"kdbench[deploy]")')
    items, prepared, run = trained
    results = run.parents[4]
    api.run("kd", "ff_c40", data_root=prepared, preset="quick", modes=["both"],
            results=results, progress=False,
            settings={"data.size": 32, "data.frames": 4, "train.epochs": 1,
                      "student.size": SMALL, "student.blur": 0.8, "student.jpeg": 75,
                      "student.noise": 1.0})
    degraded = results / f"runs/ff_c40/resnet18_thin@{SMALL}px-blur0.8-jpeg75-noise1/kd/both/seed0"
    test = [it for it in items if it.split == "test"]
    scores, student = api.predict([it.path for it in test], run=degraded, progress=False)
    assert student.size == SMALL and student.pre is not None
    saved = load_predictions(degraded / "predictions.npz")
    means = pd.Series(saved.prob).groupby(saved.video).mean()
    for item, score in zip(test, scores):  # the same blur, JPEG and (fixed) noise as the test
        assert score.score == pytest.approx(means[item.video], abs=1e-5)
    record = api.export(degraded, data_root=prepared, threads=1, repeats=(2, 2), teacher=False)
    assert record["formats"]["onnx_fp32"]["max_abs_diff"] <= 1e-4
    assert record["formats"]["onnx_fp32"]["test"]["auc"] == pytest.approx(
        json.loads((degraded / "metrics.json").read_text())["test"]["auc"], abs=1e-6)


def test_a_degraded_students_runs_have_folders_of_their_own():
    from kdbench.config import resolve_config, student_input_tag

    def tag(**st):
        return student_input_tag(resolve_config("cpu", "synthetic", {"student": st}))

    assert tag() == "" and tag(size=64) == "" and tag(size=32) == "32px"
    assert resolve_config("cpu", "synthetic", {"student": {"size": 64}})["student"]["size"] \
        is None  # the data's size: the plain run, not another one
    assert tag(size=32, blur=1.0, jpeg=75, noise=2.5) == "32px-blur1-jpeg75-noise2.5"


@pytest.mark.parametrize("settings, message", [
    (["student.size=96"], "student.size=96 is larger than data.size=64"),
    (["student.size=16", "student.blur=6"], "student.blur=6: the blur's reach"),
])
def test_a_student_input_that_cannot_be_made_is_one_line(tmp_path, capsys, settings, message):
    sets = [a for s in settings for a in ("--set", s)]
    code = main(["run", "--methods", "kd", "--preset", "quick", "--results", str(tmp_path),
                 "--launcher", "print", *sets])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
