"""Using a trained student on its own: `kdbench predict` on videos and images (scores equal to
the evaluation's per-video means), ONNX export checked against PyTorch with a dynamic batch,
int8 quantization, the deploy table and figure, and the errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kdbench import api
from kdbench.cli import main
from kdbench.data.prepare import ffpp_items, prepare_items
from kdbench.data.synthetic.manipulations import MANIPULATIONS
from kdbench.data.synthetic.tree import SynthConfig, generate
from kdbench.data.video import read_frames
from kdbench.deploy.student_file import NO_THRESHOLD_NOTE, from_run
from kdbench.errors import KdbenchError
from kdbench.train.predictions import load_predictions

onnxruntime = pytest.importorskip("onnxruntime", reason="the deploy extra is not installed "
                                  '(pip install "kdbench[deploy]")')
pytest.importorskip("onnxscript", reason="the deploy extra is not installed")

FAST = (2, 2)  # timed calls at batch 1 and 32: the tests check files and numbers, not speed


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic videos, prepared at 16 px with the centre detector, and a 1-epoch vanilla
    student trained on them: (videos, prepared folder, items, run folder)."""
    root = tmp_path_factory.mktemp("deploy")
    videos = generate(root / "videos", SynthConfig(seed=0, pairs=(2, 1, 1), size=32, frames=4),
                      workers=1, progress=False)
    items = ffpp_items(videos, "c40", MANIPULATIONS)
    prepared = root / "prepared"
    prepare_items(items, prepared, "ff_c40", frames=4, size=16, detector="center",
                  progress=False)
    api.run("vanilla", "ff_c40", data_root=prepared, preset="quick", results=root / "R",
            settings={"data.size": 16, "data.frames": 4, "train.epochs": 1}, progress=False)
    run = root / "R/runs/ff_c40/resnet18_thin/vanilla/none/seed0"
    return videos, prepared, items, run


@pytest.mark.slow
def test_predict_scores_equal_the_evaluations_per_video_means(trained):
    _, _, items, run = trained
    test = [it for it in items if it.split == "test"]
    scores, student = api.predict([it.path for it in test], run=run, progress=False)
    assert student.detector == "center" and student.crop_size == 16 and student.frames == 4
    saved = load_predictions(run / "predictions.npz")
    means = pd.Series(saved.prob).groupby(saved.video).mean()
    assert len(scores) == len(test) == len(means)
    for item, score in zip(test, scores):
        assert score.error is None and score.frames == 4 and score.faces == 4
        assert score.score == pytest.approx(means[item.video], abs=1e-5)
        assert score.label == ("fake" if score.score > student.threshold else "real")


@pytest.mark.slow
def test_predict_cli_videos_and_a_folder_of_images(trained, tmp_path, capsys):
    videos, _, items, run = trained
    real = next(it.path for it in items if it.label == 0)
    fake = next(it.path for it in items if it.label == 1)
    folder = tmp_path / "images" / "nested"
    folder.mkdir(parents=True)
    for k, frame in enumerate(read_frames(Path(fake), 2)):
        Image.fromarray(frame).save(folder / f"frame{k}.png")
    out_json, out_csv = tmp_path / "scores.json", tmp_path / "scores.csv"
    assert main(["predict", real, fake, str(tmp_path / "images"), "--run", str(run),
                 "--json", str(out_json), "--csv", str(out_csv), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "frame0.png" in captured.out and "frame1.png" in captured.out
    assert "scored 4 of 4 file(s)" in captured.err
    rows = json.loads(out_json.read_text())["files"]
    assert [r["kind"] for r in rows] == ["video", "video", "image", "image"]
    assert all(0 <= r["score"] <= 1 and r["frames"] == r["faces"] for r in rows)
    assert rows[0]["frames"] == 4 and rows[2]["frames"] == 1
    assert len(pd.read_csv(out_csv)) == 4


@pytest.mark.slow
def test_corrupt_and_faceless_files_are_reported_not_fatal(trained, tmp_path, capsys):
    from skimage.data import astronaut

    _, _, _, run = trained
    face, grey, corrupt = tmp_path / "face.png", tmp_path / "grey.png", tmp_path / "bad.mp4"
    Image.fromarray(astronaut()).save(face)
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(grey)
    corrupt.write_bytes(b"not a video at all" * 100)
    argv = ["--run", str(run), "--detector", "dlib", "--no-progress"]
    assert main(["predict", str(face), str(grey), str(corrupt), *argv]) == 0
    err = capsys.readouterr().err
    assert "scored 1 of 3 file(s)" in err
    assert f"skipped {grey}: no face found" in err and f"skipped {corrupt}: cannot decode" in err
    assert main(["predict", str(grey), str(corrupt), *argv]) == 2  # nothing scored
    assert "no file could be scored" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_without_a_threshold_uses_half_with_a_note(trained, tmp_path):
    _, _, _, run = trained
    old = tmp_path / "old"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("deploy"))
    metrics = json.loads((old / "metrics.json").read_text())
    assert 0 <= metrics["threshold"] <= 1  # chosen on the validation split
    del metrics["threshold"], metrics["prepared"]
    (old / "metrics.json").write_text(json.dumps(metrics))
    student = from_run(old)
    assert student.threshold == 0.5 and student.notes == [NO_THRESHOLD_NOTE]
    assert student.detector == "dlib" and student.crop_size == 16  # the defaults


@pytest.mark.slow
def test_export_matches_pytorch_with_a_dynamic_batch(trained):
    import onnx
    import torch

    videos, prepared, _, run = trained
    record = api.export(run, data_root=prepared, threads=1, repeats=FAST)
    path = run / "deploy/student.onnx"
    model = onnx.load(str(path))
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic: any batch
    assert [i.name for i in model.graph.input] == ["image"]
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    student = from_run(run).probability()
    for b in (1, 5):
        x = torch.rand(b, 3, 16, 16) * 2 - 1
        got = sess.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            assert np.abs(got - student(x).numpy()).max() <= 1e-4 and got.shape == (b,)
    onnx_fp32 = record["formats"]["onnx_fp32"]
    assert onnx_fp32["max_abs_diff"] <= 1e-4 and onnx_fp32["exporter"] in ("dynamo",
                                                                           "torchscript")
    assert record["formats"]["pytorch_fp32"]["test"]["auc"] == pytest.approx(
        json.loads((run / "metrics.json").read_text())["test"]["auc"], abs=1e-6)
    assert set(record["formats"]) == {"pytorch_fp32", "onnx_fp32"}  # vanilla: no teacher
    # the student file alone predicts like the run
    scores, _ = api.predict(videos, checkpoint=run / "deploy/student.pt",
                            student="resnet18_thin", size=16, detector="center", frames=4,
                            progress=False)
    direct, _ = api.predict(videos, run=run, progress=False)
    assert len(scores) == 40  # every video of the tree, found recursively
    assert [s.score for s in scores] == pytest.approx([s.score for s in direct], abs=1e-6)


@pytest.mark.slow
def test_quantize_int8_table_and_plot(trained, capsys):
    _, prepared, _, run = trained
    record = api.quantize(run, calib=32, data_root=prepared, threads=1, repeats=FAST)
    int8, fp32 = record["formats"]["onnx_int8"], record["formats"]["onnx_fp32"]
    assert (run / "deploy/student.int8.onnx").is_file()
    assert fp32["file_mb"] / int8["file_mb"] >= 3
    assert 0 <= int8["test"]["auc"] <= 1 and int8["calibration_frames"] == 32
    results = run.parents[5]
    capsys.readouterr()
    assert main(["table", "--kind", "deploy", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    for fmt in ("PyTorch fp32", "ONNX fp32", "ONNX int8"):
        assert f"| resnet18_thin/vanilla/none/seed0 | {fmt} |" in out
    assert main(["plot", "deploy", "--results", str(results)]) == 0
    assert (results / "deploy.png").stat().st_size > 1000


@pytest.mark.slow
def test_export_without_the_deploy_extra_names_it(trained, monkeypatch, capsys):
    _, _, _, run = trained
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    for argv in (["export", str(run)], ["quantize", str(run), "--int8"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and 'pip install "kdbench[deploy]"' in err[0]


def test_inputs_are_recognised_by_extension(tmp_path):
    from kdbench.deploy.inputs import media_files, media_kind

    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.FLV", "a.wmv", "notes.txt", "sub/c.TIFF", "sub/d.jpeg", "README"):
        (folder / name).write_bytes(b"x")
    # a folder: its videos and images, others skipped silently
    assert [p.name for p in media_files([folder])] == ["a.wmv", "b.FLV", "c.TIFF", "d.jpeg"]
    assert [media_kind(p) for p in media_files([folder])] == ["video", "video", "image",
                                                              "image"]
    assert media_files([folder / "a.wmv"]) == [folder / "a.wmv"]
    for named in ("notes.txt", "README"):  # a file named explicitly: a one-line error
        with pytest.raises(KdbenchError) as info:
            media_files([folder / "a.wmv", folder / named])
        assert str(info.value).startswith(f"input {folder / named} is not a video or image "
                                          "file by its extension; give files ending in .mp4")
        assert ".tiff" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_bad_predict_inputs_are_one_line_errors(trained, tmp_path):
    _, _, items, run = trained
    video = items[0].path
    with pytest.raises(KdbenchError, match="does not exist"):
        api.predict([tmp_path / "missing.mp4"], run=run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdbenchError, match="no video or image file"):
        api.predict([tmp_path / "empty"], run=run)
    with pytest.raises(KdbenchError, match="one of the two"):
        api.predict([video], run=run, checkpoint=run / "best.pt")
    with pytest.raises(KdbenchError, match="does not fit the resnet34_thin student"):
        api.predict([video], checkpoint=run / "best.pt", student="resnet34_thin")
    with pytest.raises(KdbenchError, match="--checkpoint needs --student"):
        api.predict([video], checkpoint=run / "best.pt")
