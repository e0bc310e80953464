import pytest
import torch

from kdbench.errors import KdbenchError
from kdbench.models.backbones import build_backbone
from kdbench.models.rfam import RFAM
from kdbench.models.students import create_student
from kdbench.models.teacher import DualBranchTeacher


def test_rfam_keeps_shapes_and_gates_with_sigmoid():
    rfam = RFAM(8).eval()
    r, f = torch.randn(2, 8, 5, 7), torch.randn(2, 8, 5, 7)
    r2, f2 = rfam(r, f)
    assert r2.shape == r.shape and f2.shape == f.shape
    # outputs are the inputs scaled per position by an attention map in (0, 1)
    ratio = r2 / r
    assert torch.all((ratio > 0) & (ratio < 1))
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)


@pytest.mark.parametrize(
    ("name", "channels"),
    [("resnet18_thin", [32, 64, 128, 256]), ("resnet34_thin", [32, 64, 128, 256])],
)
def test_student_outputs(name, channels):
    s = create_student(name)
    out = s(torch.randn(3, 3, 64, 64))
    assert out.logits.shape == (3, 2)
    assert [f.shape[1] for f in out.feats] == channels
    assert [f.shape[-1] for f in out.feats] == [16, 8, 4, 2]
    assert out.pooled.shape == (3, 256)
    torch.testing.assert_close(out.pooled, out.feats[-1].mean(dim=(2, 3)))


def test_thin_resnet_sizes_match_the_paper():
    assert sum(p.numel() for p in create_student("resnet18_thin").parameters()) == pytest.approx(
        2.8e6, rel=0.02)
    assert sum(p.numel() for p in create_student("resnet34_thin").parameters()) == pytest.approx(
        5.3e6, rel=0.02)


def test_xception_stages():
    bb = build_backbone("xception")
    feats = bb(torch.randn(1, 3, 71, 71))
    assert [f.shape[1] for f in feats] == [728, 728, 728, 2048]


def test_teacher_outputs_and_needs():
    t = DualBranchTeacher("resnet18_thin", proj_dim=16).eval()
    x = torch.randn(2, 3, 32, 32)
    full = t(x)
    assert full.logits.shape == (2, 2)
    assert len(full.rgb) == len(full.freq) == 4
    assert full.rgb_pooled.shape == full.freq_pooled.shape == (2, 256)
    assert full.rgb_proj.shape == (2, 16, 1, 1) and full.freq_proj.shape == (2, 16, 1, 1)
    assert set(full.aux_logits) == {"rgb", "freq"}
    only = t(x, needs={"rgb"})
    assert only.freq == [] and only.freq_proj is None and only.rgb_proj is None
    torch.testing.assert_close(only.logits, full.logits)
    torch.testing.assert_close(only.rgb[-1], full.rgb[-1])


def test_teacher_branches_see_rgb_and_frequency_views():
    t = DualBranchTeacher("resnet18_thin", proj_dim=8).eval()
    seen = {}

    def keep(name):
        def hook(module, inputs, output):
            seen[name] = inputs[0]

        return hook

    t.rgb_branch.stem.register_forward_hook(keep("rgb"))
    t.freq_branch.stem.register_forward_hook(keep("freq"))
    x = torch.randn(1, 3, 32, 32)
    t(x)
    torch.testing.assert_close(seen["rgb"], x)
    torch.testing.assert_close(seen["freq"], t.freq_view(x))


def test_local_pretrained_weights_load_and_missing_file_errors(tmp_path):
    src = create_student("resnet18_thin")
    path = tmp_path / "w.pth"
    timm_like = {}
    for k, v in src.backbone.state_dict().items():  # rebuild timm names (stem.0 -> conv1, ...)
        k = k.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.")
        for i in range(4):
            k = k.replace(f"stages.{i}.", f"layer{i + 1}.")
        timm_like[k] = v
    torch.save({"state_dict": timm_like}, path)
    dst = create_student("resnet18_thin", pretrained=str(path))
    for (k, a), b in zip(src.backbone.state_dict().items(), dst.backbone.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(KdbenchError, match="not found"):
        create_student("resnet18_thin", pretrained=str(tmp_path / "nope.pth"))


def test_the_light_backbone_list_names_what_is_built():
    from kdbench.config import BACKBONES as checked_before_torch
    from kdbench.models.backbones import BACKBONES

    assert checked_before_torch == BACKBONES
