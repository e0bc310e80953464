"""`kdbench compress`: child runs of a trained student (structured and unstructured pruning,
fine-tuned with cross-entropy or a distiller), exported and quantized; the compression table
and plan; the one-line errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench import api
from kdbench.cli import main
from kdbench.compress.plan import compressions, make_plan
from kdbench.compress.settings import COMPRESSED, Compression
from kdbench.compress.unstructured import layer_sparsity
from kdbench.data.prepare import ffpp_items, prepare_items
from kdbench.data.synthetic.manipulations import MANIPULATIONS
from kdbench.data.synthetic.tree import SynthConfig, generate
from kdbench.models.cost import count_params
from kdbench.registry import load_registry
from kdbench.report.listing import collect_runs
from kdbench.train.evaluate import load_student
from kdbench.train.predictions import load_predictions

pytest.importorskip("torch_pruning", reason='the compress extra is not installed (pip install '
                    '"kdbench[compress]")')
RUN = "runs/ff_c40/resnet18_thin/vanilla/none/seed0"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with a 1-epoch vanilla student and a KD student (and their teacher) on tiny
    synthetic videos prepared at 16 px: (store, prepared folder)."""
    root = tmp_path_factory.mktemp("compress")
    videos = generate(root / "videos", SynthConfig(seed=0, pairs=(2, 1, 1), size=32, frames=4),
                      workers=1, progress=False)
    prepared = root / "prepared"
    prepare_items(ffpp_items(videos, "c40", MANIPULATIONS), prepared, "ff_c40", frames=4,
                  size=16, detector="center", progress=False)
    api.run(["vanilla", "kd"], "ff_c40", data_root=prepared, preset="quick", modes=["both"],
            results=root / "R", settings={"data.size": 16, "data.frames": 4,
                                          "train.epochs": 1}, progress=False)
    return root / "R", prepared


def _compress(store, **kw):
    results, prepared = store
    return api.compress(results / RUN, data_root=prepared, progress=False, **kw)


@pytest.mark.slow
def test_structured_child_is_a_smaller_model_that_loads_and_exports(store):
    results, prepared = store
    out, m = _compress(store, prune="structured", target=0.9, finetune=1)
    assert out == results / COMPRESSED / "ff_c40/resnet18_thin/vanilla/none/seed0" \
        / "structured-90-ft1"
    assert m["role"] == "compressed" and m["parent"]["path"] == RUN
    assert abs(m["compression"]["achieved"] - 0.9) <= 0.01
    assert m["params"] <= 0.11 * m["parent"]["params"] and m["gflops"] < m["parent"]["gflops"]
    train = json.loads((results / RUN / "metrics.json").read_text())["config"]["train"]
    assert m["compression"]["finetune_lr"] == pytest.approx(train["lr"] * train["gamma"])
    student, loaded = load_student(out)  # reshaped to structure.json, then its weights
    assert count_params(student) == m["params"] and loaded["label"].endswith("+structured-90-ft1")
    preds = load_predictions(out / "predictions.npz")
    with torch.no_grad():
        assert student(torch.zeros(2, 3, 16, 16)).logits.shape == (2, 2)
    assert len(preds) == len(load_predictions(results / RUN / "predictions.npz"))
    record = api.export(out, data_root=prepared, threads=1, repeats=(2, 2), teacher=False)
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(out / "deploy/student.onnx"))
    in_file = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    parent = api.export(results / RUN, data_root=prepared, threads=1, repeats=(2, 2),
                        teacher=False)
    parent_file = sum(int(np.prod(t.dims)) for t in onnx.load(
        str(results / RUN / "deploy/student.onnx")).graph.initializer)
    assert in_file <= 0.11 * parent_file
    assert record["formats"]["onnx_fp32"]["max_abs_diff"] <= 1e-4
    assert parent["formats"]["onnx_fp32"]["params"] == m["parent"]["params"]
    again, _ = _compress(store, prune="structured", target=0.9, finetune=1)  # found finished
    assert again == out and json.loads((out / "metrics.json").read_text())["finished_at"] \
        == m["finished_at"]


@pytest.mark.slow
def test_unstructured_child_zeroes_every_layer_and_keeps_them_through_finetuning(store):
    out, m = _compress(store, prune="unstructured", target=0.9, finetune=1)
    student, _ = load_student(out)
    sparsity = layer_sparsity(student)
    assert sparsity and min(sparsity.values()) >= 0.895
    assert m["gflops"] == pytest.approx(m["parent"]["gflops"])  # dense: no cost change
    assert m["params"] == m["parent"]["params"] and m["nonzero_params"] < 0.15 * m["params"]
    global_out, g = _compress(store, prune="unstructured", target=0.9, scope="global")
    assert global_out.name == "unstructured-global-90" and g["best_epoch"] == 0
    assert abs(g["weights_zeroed"] / g["prunable_weights"] - 0.9) < 1e-3


@pytest.mark.slow
def test_finetuning_with_a_distiller_and_dynamic_int8(store):
    results, prepared = store
    out, m = _compress(store, prune="structured", target=0.6, finetune=1, finetune_with="kd",
                       finetune_mode="both")
    assert out.name == "structured-60-ft1-kd-both"
    assert m["compression"]["finetune_with"] == "kd" and m["teacher_sha256"]
    teacher = next((results / "teachers/ff_c40").iterdir())
    assert m["teacher_sha256"] == json.loads((teacher / "metrics.json").read_text())[
        "weights_sha256"]
    record = api.quantize(out, int8="dynamic", data_root=prepared, threads=1, repeats=(2, 2))
    assert "onnx_int8_dynamic" in record["formats"]
    assert (out / "deploy/predictions_onnx_int8_dynamic.npz").is_file()
    table = api.report("compression", results=results)
    techniques = [row[1] for row in table.rows]
    assert "structured + kd" in techniques and any("int8 dynamic" in t for t in techniques)
    assert api.plot("pareto", results=results).is_file()


@pytest.mark.slow
def test_the_plan_declares_its_distiller_in_the_registry(store):
    results, _ = store
    reg = load_registry()
    plan = make_plan(results, "ff_c40", "resnet18_thin", [0], reg)
    assert len(plan.compressions) == 9 and plan.parents == [results / RUN]
    assert [c.finetune_with for c in compressions(reg) if c.finetune_with] == [
        n for n, e in reg.items() if "compression" in e.reports]
    kd = collect_runs(results).query("method == 'kd'").iloc[0]  # a collapsed run is left out
    assert plan.distilled == ([] if kd["collapsed"] else [Path(kd["path"])])
    with pytest.raises(Exception, match="needs the finished"):
        make_plan(results, "ff_c40", "resnet18_thin", [0, 1], reg)


def test_tags_name_every_setting():
    assert Compression("unstructured", 0.6).tag() == "unstructured-layer-60"
    assert Compression("structured", 0.925, steps=3, finetune=2, finetune_with="x",
                       finetune_mode="rgb").tag() == "structured-92.5-x3-ft2-x-rgb"


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), [
    (["--prune", "structured", "--target", "1.5"], "--target must be a fraction in (0, 1)"),
    (["--prune", "structured", "--target", "0"], "--target must be a fraction in (0, 1)"),
    (["--prune", "unstructured", "--target", "0.5", "--steps", "2"], "--steps applies"),
    (["--prune", "structured", "--target", "0.5", "--finetune", "1", "--finetune-with", "kdd"],
     "unknown --finetune-with 'kdd' (did you mean 'kd'?)"),
    (["--prune", "structured", "--target", "0.5", "--scope", "global"], "--scope applies"),
    (["--prune", "structured", "--target", "0.5", "--finetune-with", "kd"],
     "--finetune-with kd needs --finetune EPOCHS"),
    (["--prune", "structured", "--target", "0.5", "--finetune", "1", "--finetune-with",
      "vanilla"], "trains without a teacher"),
])
def test_bad_settings_are_one_line(store, capsys, args, message):
    results, _ = store
    assert main(["compress", str(results / RUN), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


@pytest.mark.slow
def test_a_run_without_checkpoint_a_teacher_a_missing_extra_and_an_untraceable_model(
        store, tmp_path, capsys, monkeypatch):
    results, _ = store
    bare = tmp_path / "S" / RUN
    shutil.copytree(results / RUN, bare)
    (bare / "best.pt").unlink()
    assert main(["compress", str(bare), "--prune", "structured", "--target", "0.5"]) == 2
    assert "has no best.pt" in capsys.readouterr().err
    teacher = next((results / "teachers/ff_c40").iterdir())
    assert main(["compress", str(teacher), "--prune", "structured", "--target", "0.5"]) == 2
    assert "is a dual-branch teacher" in capsys.readouterr().err
    child, _ = _compress(store, prune="structured", target=0.9, finetune=1)
    assert main(["compress", str(child), "--prune", "structured", "--target", "0.5"]) == 2
    assert "is a compressed child run; compress its parent" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    assert main(["compress", str(results / RUN), "--prune", "structured", "--target",
                 "0.5"]) == 2
    assert 'pip install "kdbench[compress]"' in capsys.readouterr().err
    monkeypatch.undo()
    import torch_pruning

    def untraceable(*args, **kwargs):
        raise RuntimeError("unsupported operation in the graph")

    monkeypatch.setattr(torch_pruning.pruner.MetaPruner, "__init__", untraceable)
    assert main(["compress", str(results / RUN), "--prune", "structured", "--target", "0.7",
                 "--data-root", str(store[1])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kdbench: error: Torch-Pruning cannot trace")


@pytest.mark.slow
def test_a_single_branch_teacher_is_pruned_as_a_detector(store, tmp_path):
    """The review prunes the detector itself: a single-branch teacher's classifier, pruned,
    fine-tuned with cross-entropy, tested, loaded and exported like a student."""
    results, prepared = store
    api.run("kd", "ff_c40", data_root=prepared, preset="quick", modes=["rgb"],
            results=tmp_path / "S", settings={"data.size": 16, "data.frames": 4,
                                              "train.epochs": 1, "teacher.kind": "single"},
            progress=False)
    teacher = next((tmp_path / "S/teachers/ff_c40").iterdir())
    out, m = api.compress(teacher, prune="structured", target=0.7, finetune=1,
                          data_root=prepared, progress=False)
    assert out.parts[-5:] == (teacher.name, "teacher", "none", "seed0", "structured-70-ft1")
    assert m["detector"] == "single_teacher" and m["parent"]["label"] == f"teacher/{teacher.name}"
    assert abs(m["compression"]["achieved"] - 0.7) <= 0.01
    assert m["parent"]["params"] < 1.2 * count_params(load_student(out)[0]) / 0.3
    record = api.export(out, data_root=prepared, threads=1, repeats=(2, 2), teacher=False)
    assert record["formats"]["onnx_fp32"]["max_abs_diff"] <= 1e-4
    with pytest.raises(Exception, match="cross-entropy alone"):
        api.compress(teacher, prune="structured", target=0.7, finetune=1, finetune_with="kd",
                     data_root=prepared, progress=False)


@pytest.mark.slow
def test_iterative_structured_pruning_fine_tunes_between_its_steps(store):
    out, m = _compress(store, prune="structured", target=0.8, steps=2, finetune=1)
    assert out.name == "structured-80-x2-ft1" and (out / "step1" / "best.pt").is_file()
    assert abs(m["compression"]["achieved"] - 0.8) <= 0.01  # of the parent's parameters
    assert m["compression"]["reference_params"] == m["parent"]["params"]
    assert count_params(load_student(out)[0]) == m["params"]
