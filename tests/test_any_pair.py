"""Any timm CNN as student or teacher: every registry method trains a step on every pair of
{mobilenetv3_small_050, efficientnet_b0} students and {dual resnet18_thin, single timm resnet18}
teachers, and in both mode against a wavelet-view teacher; backbones a method cannot read are
refused in one line; a detector's checkpoint loads as a single-branch teacher without being
written."""

from __future__ import annotations

import hashlib
import re

import pytest
import timm
import torch

from kdbench.config import resolve_config
from kdbench.errors import KdbenchError
from kdbench.models.students import create_student
from kdbench.models.teacher_build import build_teacher
from kdbench.registry import load_registry

SIZE = 32
STUDENTS = ("mobilenetv3_small_050", "efficientnet_b0")
TEACHERS = {  # id -> teacher settings
    "dual_resnet18_thin": {"kind": "dual", "backbone": "resnet18_thin"},
    "single_resnet18": {"kind": "single", "backbone": "resnet18"},
    # the wavelet view (teacher.freq_view=dwt): both mode of every method, one student
    "dual_resnet18_thin_dwt": {"kind": "dual", "backbone": "resnet18_thin", "freq_view": "dwt",
                               "levels": 2},
}
DWT = "dual_resnet18_thin_dwt"
REGISTRY = load_registry([])
TRAIN_LABELS = torch.tensor([0, 1] * 5)  # a tiny training set: CRD's banks and negatives
POS = torch.tensor([0, 3, 5, 8])  # the batch's frames in it: labels 0, 1, 1, 0


def teacher_cfg(**teacher) -> dict:
    return resolve_config("quick", "synthetic", {"teacher": teacher})


def _cases():
    for name, entry in REGISTRY.items():
        for student in STUDENTS:
            if entry.modes == ["none"]:
                yield pytest.param(name, "none", student, None,
                                   id=f"{name}-{student}-no_teacher")
                continue
            for teacher in TEACHERS:
                # the single-branch teacher has no frequency branch: rgb mode only
                modes = ["rgb"] if teacher.startswith("single") else entry.modes
                if teacher == DWT:
                    modes = ["both"] if "both" in modes and student == STUDENTS[0] else []
                for mode in modes:
                    yield pytest.param(name, mode, student, teacher,
                                       id=f"{name}-{mode}-{student}-{teacher}")


@pytest.fixture(scope="module")
def teachers():
    """Each teacher built once (seeded); frozen, so the cases can share it."""
    built = {}
    for i, (key, settings) in enumerate(TEACHERS.items()):
        torch.manual_seed(i)
        built[key] = build_teacher(teacher_cfg(**settings)).eval()
    return built


def _batch():
    torch.manual_seed(0)
    return {"image": torch.randn(4, 3, SIZE, SIZE), "label": TRAIN_LABELS[POS], "pos": POS}


def _has_nonzero_grad(params) -> bool:
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)


@pytest.mark.parametrize(("method", "mode", "student_name", "teacher_key"), list(_cases()))
def test_every_method_trains_a_step_on_every_pair(method, mode, student_name, teacher_key,
                                                  teachers):
    entry = REGISTRY[method]
    teacher = teachers[teacher_key] if teacher_key else None
    torch.manual_seed(1)
    student = create_student(student_name)
    learner = entry.resolve()(student, teacher, mode, **entry.hparams("synthetic"))
    # the trainer's order: on_train_data, the optimizer over trainable_modules, on_fit_start
    learner.on_train_data(TRAIN_LABELS)
    params = [p for p in learner.trainable_modules().parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    train_cfg = teacher_cfg()["train"]
    learner.on_fit_start(train_cfg, 1)
    learner.train()

    # step 0, as Trainer.train_step: sum of the terms, one backward, after_backward, step
    logits, losses = learner.forward_train(_batch())
    assert logits.shape == (4, 2)
    assert "loss_ce" in losses
    bad = {k: float(v) for k, v in losses.items() if not torch.isfinite(v).all()}
    assert not bad, f"non-finite loss terms {bad}"
    opt.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert _has_nonzero_grad(student.parameters()), "no student parameter got a gradient"
    learner.after_backward(0)
    opt.step()
    if mode == "none":
        assert set(losses) == {"loss_ce"}
        return

    # The distillation terms must reach the student. Checked on a second forward pass (step 1)
    # with autograd.grad of each kd term alone w.r.t. the student's parameters: robust where a
    # comparison of CE-only and CE+kd gradients is not (Adam, BN statistics), and at step 1
    # because ReviewKD's warm-up weight is exactly 0 at step 0 (with one step per epoch it is
    # 1 here). A separate pass, not the training step's graph: autograd.grad fills the .grad of
    # retained tensors, which TOKD's after_backward reads.
    branches = ("rgb", "freq") if mode == "both" else ("rgb",)
    _, losses = learner.forward_train(_batch())
    kd = {k: v for k, v in losses.items() if k.startswith("loss_kd")}
    assert set(kd) == {f"loss_kd_{b}" for b in branches}
    student_params = [p for p in student.parameters() if p.requires_grad]
    for name, term in kd.items():
        assert torch.isfinite(term).all(), f"{name} = {float(term)}"
        grads = torch.autograd.grad(term, student_params, retain_graph=True, allow_unused=True)
        assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), (
            f"{name} does not reach the student's parameters")


# ---------------------------------------------------------------- refusals, one line each


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def test_a_stage_maps_method_refuses_a_student_with_three_stages(teachers):
    student = create_student("efficientvit_m0")
    assert len(student.stage_channels) == 3
    entry = REGISTRY["at"]
    with pytest.raises(KdbenchError) as exc:
        entry.resolve()(student, teachers["dual_resnet18_thin"], "rgb",
                        **entry.hparams("synthetic"))
    message = _one_line(exc)
    assert re.search(r"\bat\b", message) and "efficientvit_m0" in message


def test_ofd_refuses_a_backbone_without_pre_activation_maps(teachers):
    student = create_student("convnext_atto")  # its stages end in a Conv2d, not BN [+ act]
    entry = REGISTRY["ofd"]
    with pytest.raises(KdbenchError) as exc:
        entry.resolve()(student, teachers["dual_resnet18_thin"], "rgb",
                        **entry.hparams("synthetic"))
    message = _one_line(exc)
    assert "ofd" in message and "convnext_atto" in message


def test_a_dual_teacher_refuses_a_backbone_with_three_stages():
    with pytest.raises(KdbenchError) as exc:
        build_teacher(teacher_cfg(kind="dual", backbone="efficientvit_m0"))
    assert "efficientvit_m0" in _one_line(exc)


# ---------------------------------------------------------------- checkpoint teachers


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save_detector(path, arch: str, num_classes: int) -> torch.nn.Module:
    """A detector's checkpoint as training frameworks write it: {"state_dict": ...} with
    every key under "backbone."."""
    torch.manual_seed(2)
    model = timm.create_model(arch, num_classes=num_classes).eval()
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, path)
    return model


@pytest.mark.parametrize("num_classes", [2, 1], ids=["two_class_head", "one_logit_head"])
def test_a_checkpoint_loads_fully_as_a_single_teacher_and_is_not_written(tmp_path,
                                                                          num_classes):
    path = tmp_path / "detector.pth"
    model = _save_detector(path, "resnet18", num_classes)
    before = _sha256(path)
    teacher = build_teacher(teacher_cfg(kind="single", backbone="resnet18",
                                        checkpoint=str(path), key_prefix="backbone.")).eval()
    total = sum(p.numel() for p in teacher.parameters())
    assert teacher.load_counts["matched"] == total  # 100 %
    assert teacher.load_counts["missing"] == 0
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        got, want = teacher(x).logits, model(x)
    if num_classes == 1:  # one logit z is the two-class pair (0, z): the same probability
        want = torch.cat([torch.zeros_like(want), want], dim=1)
    assert got.shape == (2, 2)
    torch.testing.assert_close(got, want)
    assert _sha256(path) == before


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    _save_detector(path, "efficientnet_b0", 2)
    with pytest.raises(KdbenchError) as exc:
        build_teacher(teacher_cfg(kind="single", backbone="resnet18", checkpoint=str(path),
                                  key_prefix="backbone."))
    assert "90%" in _one_line(exc)
