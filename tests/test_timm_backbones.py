"""Any timm CNN as a backbone: stage cuts equal timm's features_only maps, the traced
pre-activation maps are what the final activation sees, unknown names are one line."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from kdbench.errors import KdbenchError
from kdbench.models.backbones import HookedBackbone, StagedBackbone, build_backbone
from kdbench.models.rfam import RFAM
from kdbench.models.students import create_student
from kdbench.models.teacher import DualBranchTeacher

SEQUENTIAL = ["mobilenetv3_small_050", "efficientnet_b0", "resnet18", "regnety_002",
              "convnext_atto"]


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_the_stage_cut_gives_timms_last_four_feature_maps(name):
    torch.manual_seed(0)
    ours = build_backbone(name).eval()
    torch.manual_seed(0)  # the same initial weights: the cut is the same model, regrouped
    reference = timm.create_model(name, features_only=True).eval()
    assert isinstance(ours, StagedBackbone) and ours.sequential
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, want = ours(x), reference(x)[-4:]
    assert ours.stage_channels == list(reference.feature_info.channels())[-4:]
    assert [tuple(g.shape) for g in got] == [tuple(w.shape) for w in want]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize(("name", "finals"), [
    ("resnet18", ["ReLU"] * 4),                       # act2 after bn2 + shortcut
    # linear bottlenecks, then a ConvBnAct
    ("mobilenetv3_small_050", [None, None, None, "Hardswish"]),
    ("efficientnet_b0", [None] * 4),                 # every stage ends in bn3 (+ shortcut)
    ("regnety_002", ["ReLU"] * 4),
])
def test_pre_activation_maps_are_what_each_stages_final_activation_sees(name, finals):
    torch.manual_seed(0)
    backbone = build_backbone(name).eval()
    for m in backbone.modules():  # timm zero-inits the last BN of a residual block
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight)
    assert backbone.preact_problem() is None
    found, bns, _ = backbone._stage_ends()
    assert [type(f).__name__ if f is not None else None for f in found] == finals
    assert all(isinstance(bn, nn.BatchNorm2d) for bn in bns)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad(), backbone.capture_preact() as pre:
        post = backbone(x)
    assert len(pre) == 4
    for p, q, final in zip(pre, post, found, strict=True):
        assert p.shape == q.shape
        if final is None:  # the stage output is pre-activation already
            torch.testing.assert_close(p, q)
        else:  # the activation applied to the captured map gives the stage output
            torch.testing.assert_close(final(p.clone()), q)
            assert (p < 0).any()  # really before the activation


def test_a_stage_that_ends_in_a_convolution_has_no_pre_activation_maps():
    backbone = build_backbone("convnext_atto")
    assert "ends in Conv2d" in backbone.preact_problem()
    with pytest.raises(KdbenchError, match="no pre-activation stage maps"):
        with backbone.capture_preact():
            pass


def test_a_hook_based_model_is_a_student_but_not_a_dual_teacher_branch():
    backbone = build_backbone("legacy_xception")
    assert isinstance(backbone, HookedBackbone) and not backbone.sequential
    assert len(backbone(torch.randn(1, 3, 64, 64))) == 4
    with pytest.raises(KdbenchError, match="teacher.kind=dual.*legacy_xception|legacy_xception"
                                           ".*teacher.kind=single"):
        DualBranchTeacher("legacy_xception", 8)


def test_built_in_backbones_keep_their_construction():
    torch.manual_seed(0)
    assert build_backbone("resnet18_thin").stage_channels == [32, 64, 128, 256]
    student = create_student("resnet18_thin")
    assert sum(p.numel() for p in student.parameters()) == 2_815_490  # the store's params


def test_a_student_of_any_timm_cnn_gives_logits_maps_and_pooled_vector():
    student = create_student("mobilenetv3_small_050")
    out = student(torch.randn(3, 3, 32, 32))
    assert out.logits.shape == (3, 2)
    assert [f.shape[1] for f in out.feats] == [8, 16, 24, 288]
    assert out.pooled.shape == (3, 288)


def test_unknown_name_is_one_line_with_the_closest_timm_names():
    with pytest.raises(KdbenchError) as err:
        build_backbone("efficientnet_b9x")
    msg = str(err.value)
    assert "\n" not in msg and "unknown model 'efficientnet_b9x'" in msg
    assert "closest: efficientnet_b" in msg


def test_a_timm_model_without_features_only_is_one_line(monkeypatch):
    """timm 1.0 gives features_only for every registered model; a user's own registered model
    may not (timm then passes features_only to its constructor)."""
    from kdbench.models import timm_backbones

    monkeypatch.setattr(timm_backbones, "timm_names", lambda: ("plain_net",))

    def create(name, **kwargs):
        raise TypeError("PlainNet.__init__() got an unexpected keyword argument 'features_only'")

    monkeypatch.setattr(timm_backbones.timm, "create_model", create)
    with pytest.raises(KdbenchError) as err:
        build_backbone("plain_net")
    assert "does not give its stage maps through features_only" in str(err.value)
    assert "\n" not in str(err.value)


def test_rfam_couples_branches_of_unequal_widths_and_sizes():
    torch.manual_seed(0)
    rfam = RFAM(16, 24)
    r, f = torch.randn(2, 16, 8, 8), torch.randn(2, 24, 4, 4)
    r2, f2 = rfam(r, f)
    assert r2.shape == r.shape and f2.shape == f.shape
    same = RFAM(16)  # equal branches: the paper's module, concat(2C) -> C
    assert same.fuse[0].in_channels == 32 and same.fuse[0].out_channels == 16


def test_a_dual_teacher_with_another_frequency_backbone():
    teacher = DualBranchTeacher("resnet18_thin", 16, freq_backbone="mobilenetv3_small_050")
    assert teacher.branch_channels("rgb") == [32, 64, 128, 256]
    assert teacher.branch_channels("freq") == [8, 16, 24, 288]
    out = teacher(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 2) and out.freq[-1].shape[1] == 288
    assert out.rgb_proj.shape[1] == 16 and out.freq_proj.shape[1] == 16


def test_the_margin_batchnorm_is_the_main_paths_not_the_shortcuts():
    """resnet10t has one block per stage, whose shortcut (downsample) BatchNorm runs after the
    main path's bn2: OFD's margin must come from bn2."""
    backbone = build_backbone("resnet10t")
    names = [{id(m): n for n, m in stage.named_modules()}[id(bn)]
             for stage, bn in zip(backbone.stages, backbone.preact_bns, strict=True)]
    assert all(n.endswith(".bn2") for n in names), names
    assert any("downsample" in n for stage in backbone.stages for n, _ in stage.named_modules())


def test_imagenet_weights_of_any_timm_name_go_through_timm_and_fail_in_one_line(monkeypatch):
    from kdbench.models import timm_backbones

    asked = {}

    def offline(name, **kwargs):
        asked.update(kwargs, name=name)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(timm_backbones.timm, "create_model", offline)
    with pytest.raises(KdbenchError) as err:
        build_backbone("mobilenetv3_small_050", "imagenet", "student.pretrained")
    assert asked == {"name": "mobilenetv3_small_050", "pretrained": True, "features_only": True}
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("student.pretrained=imagenet: timm could not load")
    assert "offline they must already be in timm's cache" in msg
    with pytest.raises(KdbenchError, match="timm has no pretrained weights for efficientnet_b0_gn"):
        build_backbone("efficientnet_b0_gn", "imagenet", "student.pretrained")
