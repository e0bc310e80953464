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
    # a file that fills only part of the backbone (here: no layer4, 75 % of the parameters)
    partial = {k: v for k, v in timm_like.items() if not k.startswith("layer4.")}
    torch.save(partial, path)
    total = sum(p.numel() for p in src.backbone.parameters())
    layer4 = sum(p.numel() for p in src.backbone.stages[3].parameters())
    with pytest.raises(KdbenchError) as err:
        create_student("resnet18_thin", pretrained=str(path))
    msg = str(err.value)
    assert "\n" not in msg and "at least 90% must match" in msg
    assert (f"{(total - layer4) / 1e6:.2f} M of the backbone's {total / 1e6:.2f} M parameters "
            f"matched ({(total - layer4) / total:.1%}), {layer4 / 1e6:.2f} M missing") in msg
    # a DeepfakeBench-style checkpoint (keys under "backbone.") matches nothing
    torch.save({f"backbone.{k}": v for k, v in timm_like.items()}, path)
    with pytest.raises(KdbenchError, match="0.00 M of the backbone.*'backbone.conv1.weight'"):
        create_student("resnet18_thin", pretrained=str(path))


def test_load_report_counts_unexpected_tensors(tmp_path, capsys):
    import timm

    src = timm.create_model("resnet18", num_classes=0)  # a plain ResNet-18: the wrong widths
    model = timm.create_model("resnet18", num_classes=0)
    from kdbench.models.backbones import load_local_weights

    state = {**src.state_dict(), "fc.weight": torch.zeros(1000, 512)}
    torch.save(state, tmp_path / "w.pth")
    counts = load_local_weights(model, tmp_path / "w.pth")
    total = sum(p.numel() for p in model.parameters())
    assert counts == {"matched": total, "missing": 0, "unexpected": 512_000}
    assert "loaded" in capsys.readouterr().err


def _fake_imagenet_cache(tmp_path, monkeypatch):
    """timm's legacy_xception ImageNet file, fabricated in an empty torch hub cache."""
    import timm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = timm.create_model("legacy_xception", num_classes=0).pretrained_cfg["url"]
    ref = timm.create_model("legacy_xception", num_classes=1000)
    target = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    target.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), target)
    return ref


def test_imagenet_weights_come_through_timms_cache(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)  # no test downloads
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(KdbenchError) as err:
        build_backbone("xception", "imagenet", "teacher.pretrained")
    msg = str(err.value)
    assert "\n" not in msg and "--set teacher.pretrained=none" in msg and "hub cache" in msg
    with pytest.raises(KdbenchError, match="resnet18_thin has no ImageNet weights"):
        build_backbone("resnet18_thin", "imagenet", "student.pretrained")
    ref = _fake_imagenet_cache(tmp_path, monkeypatch)
    got = build_backbone("xception", "imagenet")
    torch.testing.assert_close(got.stem[0].weight, ref.conv1.weight)
    torch.testing.assert_close(got.stages[3][1].conv1.weight, ref.conv3.conv1.weight)


def test_paper_preset_starts_from_imagenet_and_none_turns_it_off():
    from kdbench.config import resolve_config

    assert resolve_config("paper", "ff_c40", {})["teacher"]["pretrained"] == "imagenet"
    off = resolve_config("paper", "ff_c40", {"teacher": {"pretrained": "none"}})
    assert off["teacher"]["pretrained"] is None
    assert resolve_config("cpu", "synthetic", {})["teacher"]["pretrained"] is None


def test_the_light_backbone_list_names_what_is_built():
    from kdbench.config import BACKBONES as checked_before_torch
    from kdbench.models.backbones import BACKBONES

    assert checked_before_torch == BACKBONES


def test_paper_preset_offline_fails_before_any_work(tmp_path, monkeypatch, capsys):
    from kdbench.cli import main

    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    argv = ["run", "--preset", "paper", "--methods", "tokd", "--results", str(tmp_path / "R"),
            "--data-root", str(tmp_path), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--set teacher.pretrained=none" in err[0]
    assert not (tmp_path / "videos").exists()  # failed before generating any data


@pytest.mark.parametrize("name", ["resnet18_thin", "xception"])
def test_pre_relu_stage_maps_are_what_the_final_relu_sees(name):
    student = create_student(name).eval()
    torch.manual_seed(0)
    for m in student.modules():  # timm zero-initialises some last BN scales: make maps signed
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(m.weight)
    x = torch.randn(2, 3, 64, 64)
    out = student(x, preact=True)
    assert len(out.preact) == 4 and student(x).preact == []
    for pre, post in zip(out.preact, out.feats):  # post: after the ReLU (in place or not)
        assert pre.shape == post.shape and (pre < 0).any()
        torch.testing.assert_close(torch.relu(pre), torch.relu(post))
    torch.testing.assert_close(student(x).logits, out.logits)  # capturing changes nothing
    bns = student.backbone.preact_bns
    assert [bn.num_features for bn in bns] == student.stage_channels


def test_teacher_gives_pre_relu_maps_only_when_asked():
    t = DualBranchTeacher("resnet18_thin", proj_dim=8).eval()
    torch.manual_seed(0)
    for m in t.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(m.weight)
    x = torch.randn(2, 3, 32, 32)
    assert t(x, needs={"rgb"}).rgb_preact == []
    out = t(x, needs={"rgb_preact", "freq_preact"})
    assert len(out.rgb_preact) == len(out.freq_preact) == 4 and out.rgb == []
    assert all((m < 0).any() for m in out.freq_preact)
    full = t(x, needs={"rgb", "rgb_preact"})
    # the last stage has no RFAM after it: its map is the ReLU of the pre-activation
    torch.testing.assert_close(torch.relu(full.rgb_preact[3]), full.rgb[3])
