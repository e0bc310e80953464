"""Deploying a student that is not built in: timm CNNs with Hardswish or SiLU activations,
depthwise convolutions and squeeze-excite (mobilenetv3_small_050, efficientnet_b0). ONNX export
matches PyTorch, `kdbench predict` scores videos, int8 quantization stays close to fp32, the
deploy and cost tables list them, `kdbench bench --student NAME` measures them, and an unknown
name is one line."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from kdbench import api
from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.models.students import create_student
from tests.conftest import write_prepared

onnxruntime = pytest.importorskip("onnxruntime", reason="the deploy extra is not installed "
                                  '(pip install "kdbench[deploy]")')
onnx = pytest.importorskip("onnx", reason="the deploy extra is not installed")
pytest.importorskip("onnxscript", reason="the deploy extra is not installed")

STUDENTS = ("mobilenetv3_small_050", "efficientnet_b0")
# what each exports to: MobileNetV3's Hardswish (an ONNX op since opset 14) and the hard-sigmoid
# gate of its squeeze-excite; EfficientNet's SiLU (x * Sigmoid(x)) and its sigmoid SE gate; both
# squeeze by a global mean (ReduceMean)
OPS = {"mobilenetv3_small_050": {"Conv", "HardSwish", "HardSigmoid", "ReduceMean", "Mul"},
       "efficientnet_b0": {"Conv", "Sigmoid", "Mul", "ReduceMean"}}
SIZE = 32
FAST = (2, 2)  # timed calls at batch 1 and 32: the tests check files and numbers, not speed
PARITY = 1e-4  # kdbench export's own limit on |ONNX - PyTorch| of a probability
INT8_MAX_DIFF = 0.02  # measured: 0.0014 (mobilenetv3_small_050), 0.0021 (efficientnet_b0)
UNKNOWN = "mobilenetv3_smal_050"


def _images(n: int, seed: int) -> torch.Tensor:
    """Random images in the model's normalisation ([-1, 1], NCHW)."""
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _spread_student(name: str) -> nn.Module:
    """A fresh student whose BatchNorm statistics come from one pass over random images: at
    timm's initial statistics its fake probability is nearly the same for every image, which
    would make a parity check weak."""
    torch.manual_seed(0)
    student = create_student(name)
    for m in student.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # the plain average of the pass
    with torch.no_grad():
        student.train()(_images(64, 100))
    return student.eval()


@pytest.mark.parametrize("name", STUDENTS)
def test_onnx_export_matches_pytorch(name, tmp_path):
    from kdbench.deploy.onnx_files import export_onnx
    from kdbench.deploy.student_file import FakeProbability

    model = FakeProbability(_spread_student(name)).eval()
    x = _images(16, 1)
    path = tmp_path / "student.onnx"
    assert export_onnx(model, x[:2], path, f"the {name} student") in ("dynamo", "torchscript")
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 14  # HardSwish
    ops = {n.op_type for n in graph.graph.node}
    assert OPS[name] <= ops, sorted(ops)
    depthwise = [n for n in graph.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert depthwise  # kept as grouped convolutions
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # any batch
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    assert expected.max() - expected.min() > 0.1  # the outputs differ from image to image
    whole = sess.run(None, {"image": x.numpy()})[0]
    single = np.concatenate([sess.run(None, {"image": x[i:i + 1].numpy()})[0]
                             for i in range(4)])
    assert whole.shape == (16,) and single.shape == (4,)
    assert np.abs(whole - expected).max() <= PARITY
    assert np.abs(single - expected[:4]).max() <= PARITY


def test_cost_table_of_timm_students():
    report = api.report("cost", student=",".join(STUDENTS), preset="quick", size=SIZE,
                        measure=False)
    rows = {r[0]: r for r in report.text_rows()}
    for name in STUDENTS:
        assert f"student {name}" in rows and float(rows[f"student {name}"][1]) > 0


USER_METHOD = '''
from kdbench.errors import KdbenchError
from kdbench.methods import Distiller


class BuiltInOnly(Distiller):
    """Refuses students that kdbench does not build itself."""

    def __init__(self, student, teacher, mode, **hparams):
        if student.name != "resnet18_thin":
            raise KdbenchError(f"builtin_only cannot distil into {student.name}")
        super().__init__(student, teacher, mode, **hparams)
'''


def test_bench_measures_a_timm_student_and_skips_what_cannot_distil_into_it(tmp_path):
    from kdbench.bench import bench_table

    (tmp_path / "mine.py").write_text(USER_METHOD)
    (tmp_path / "my.yaml").write_text(textwrap.dedent("""
        builtin_only:
          entry: mine.py:BuiltInOnly
          modes: [rgb]
        """))
    data = write_prepared(tmp_path / "p", dataset="ff_c40", videos_per_split=(16, 2, 2),
                          frames=4, size=SIZE)
    result = api.bench("quick", student="mobilenetv3_small_050", methods="vanilla,kd,builtin_only",
                       dataset="ff_c40", data_root=data, registry=tmp_path / "my.yaml",
                       steps=1, rounds=1, threads=1, processes=False, progress=False,
                       json_path=tmp_path / "bench.json")
    assert result["student"] == "mobilenetv3_small_050" and result["steps"] == 1
    assert set(result["kd_over_vanilla"]) == {"kd/rgb", "kd/both"}
    assert all(r["live"] > 0 and r["cached"] > 0 for r in result["kd_over_vanilla"].values())
    assert result["skipped"] == {
        "builtin_only/rgb": "builtin_only cannot distil into mobilenetv3_small_050"}
    assert result["bare_images_per_s"] > 0 and result["loop_over_bare"] > 0
    assert json.loads((tmp_path / "bench.json").read_text())["student"] == result["student"]
    labels = list(bench_table(result).columns[0].cells)
    assert "kd/both over the baseline (live / cached)" in labels
    assert "builtin_only/rgb over the baseline" in labels


@pytest.mark.parametrize("argv", [
    ["bench", "--student", UNKNOWN],
    ["table", "--kind", "cost", "--student", f"resnet18_thin,{UNKNOWN}"],
    ["predict", "{tmp}/a.png", "--checkpoint", "{tmp}/student.pt", "--student", UNKNOWN],
], ids=["bench", "cost", "predict"])
def test_an_unknown_student_is_one_line(argv, tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "student.pt").write_bytes(b"x")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"kdbench: error: --student: unknown model {UNKNOWN!r} (closest: "
                             "mobilenetv3_small_050")


def test_a_checkpoint_needs_its_student(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(KdbenchError, match="--checkpoint needs --student") as info:
        api.predict([tmp_path / "a.png"], checkpoint=tmp_path / "student.pt")
    assert "timm CNN" in str(info.value) and "\n" not in str(info.value)


def test_teacher_labels_of_the_deploy_table():
    from kdbench.report.deploy import teacher_branches

    assert teacher_branches({"backbone": "resnet18_thin"}) == "2 x resnet18_thin"  # before kinds
    assert teacher_branches({"backbone": "resnet18_thin", "kind": "dual",
                             "freq_backbone": None}) == "2 x resnet18_thin"
    assert teacher_branches({"backbone": "xception", "kind": "dual",
                             "freq_backbone": "efficientnet_b0"}) == "xception + efficientnet_b0"
    single = teacher_branches({"backbone": "convnext_atto", "kind": "single"})
    assert single == "single convnext_atto"


# ------------------------------------------------------- end to end: trained runs of both


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic videos prepared at 32 px with the centre detector, and a 1-epoch vanilla run of
    each student on them: (videos, prepared folder, items, {student: run folder})."""
    from kdbench.data.prepare import ffpp_items, prepare_items
    from kdbench.data.synthetic.manipulations import MANIPULATIONS
    from kdbench.data.synthetic.tree import SynthConfig, generate

    root = tmp_path_factory.mktemp("deploy_any")
    videos = generate(root / "videos", SynthConfig(seed=0, pairs=(2, 1, 1), size=32, frames=4),
                      workers=1, progress=False)
    items = ffpp_items(videos, "c40", MANIPULATIONS)
    prepared = root / "prepared"
    prepare_items(items, prepared, "ff_c40", frames=4, size=SIZE, detector="center",
                  progress=False)
    api.run("vanilla", "ff_c40", data_root=prepared, preset="quick", results=root / "R",
            students=list(STUDENTS), progress=False,
            settings={"data.size": SIZE, "data.frames": 4, "train.epochs": 1})
    runs = {s: root / f"R/runs/ff_c40/{s}/vanilla/none/seed0" for s in STUDENTS}
    return videos, prepared, items, runs


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDENTS)
def test_export_and_predict_a_trained_timm_student(trained, name):
    from kdbench.deploy.student_file import from_run

    _, prepared, items, runs = trained
    run = runs[name]
    record = api.export(run, data_root=prepared, threads=1, repeats=FAST)
    onnx_fp32 = record["formats"]["onnx_fp32"]
    assert onnx_fp32["max_abs_diff"] <= PARITY and record["size"] == SIZE
    assert record["label"] == f"{name}/vanilla/none/seed0"
    assert record["formats"]["pytorch_fp32"]["test"]["auc"] == pytest.approx(
        json.loads((run / "metrics.json").read_text())["test"]["auc"], abs=1e-6)
    sess = onnxruntime.InferenceSession(str(run / "deploy/student.onnx"),
                                        providers=["CPUExecutionProvider"])
    x = _images(8, 2)
    with torch.no_grad():
        expected = from_run(run).probability()(x).numpy()
    assert np.abs(sess.run(None, {"image": x.numpy()})[0] - expected).max() <= PARITY
    # predict: a real and a fake video, by the run and by the exported student file alone
    videos = [next(it.path for it in items if it.label == label) for label in (0, 1)]
    scores, student = api.predict(videos, run=run, progress=False)
    assert student.backbone == name and student.size == SIZE
    for s in scores:
        assert s.error is None and s.frames == s.faces == 4 and 0 <= s.score <= 1
        assert s.label == ("fake" if s.score > student.threshold else "real")
    alone, _ = api.predict(videos, checkpoint=run / "deploy/student.pt", student=name,
                           size=SIZE, detector="center", frames=4, progress=False)
    assert [s.score for s in alone] == pytest.approx([s.score for s in scores], abs=1e-6)


def _test_probabilities(run, prepared, file: str) -> np.ndarray:
    from kdbench.deploy.api import _open_run_data
    from kdbench.deploy.measure import split_probabilities
    from kdbench.deploy.onnx_files import onnx_probabilities, session
    from kdbench.deploy.student_file import from_run

    deployed = from_run(run)
    test = _open_run_data(deployed, prepared, ("test",))["test"]
    sess = session(run / "deploy" / file, 1)
    return split_probabilities(lambda x: onnx_probabilities(sess, x.numpy()), test, SIZE)


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDENTS)
def test_int8_quantization_of_a_timm_student_stays_close_to_fp32(trained, name):
    _, prepared, _, runs = trained
    run = runs[name]
    record = api.quantize(run, calib=32, data_root=prepared, threads=1, repeats=FAST)
    int8, fp32 = record["formats"]["onnx_int8"], record["formats"]["onnx_fp32"]
    assert (run / "deploy/student.int8.onnx").is_file() and int8["calibration_frames"] == 32
    assert fp32["file_mb"] / int8["file_mb"] >= 2.5  # measured 2.9x and 3.1x
    assert 0 <= int8["test"]["auc"] <= 1
    ops = {n.op_type for n in onnx.load(str(run / "deploy/student.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    diff = np.abs(_test_probabilities(run, prepared, "student.int8.onnx")
                  - _test_probabilities(run, prepared, "student.onnx"))
    assert diff.max() <= INT8_MAX_DIFF, diff.max()


@pytest.mark.slow
def test_deploy_table_and_plot_list_every_student(trained, capsys):
    _, prepared, _, runs = trained
    for run in runs.values():
        if not (run / "deploy/student.int8.onnx").is_file():
            api.quantize(run, calib=32, data_root=prepared, threads=1, repeats=FAST)
    results = next(iter(runs.values())).parents[5]
    capsys.readouterr()
    assert main(["table", "--kind", "deploy", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    for name in STUDENTS:
        for fmt in ("PyTorch fp32", "ONNX fp32", "ONNX int8"):
            assert f"| {name}/vanilla/none/seed0 | {fmt} |" in out
    assert main(["plot", "deploy", "--results", str(results)]) == 0
    assert (results / "deploy.png").stat().st_size > 1000
