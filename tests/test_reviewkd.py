"""ReviewKD: the HCL loss against the reference formula written out, the ABF shapes, the
warm-up schedule and the distiller's wiring (modelled on test_baselines)."""

import pytest
import torch

from kdbench.methods.reviewkd import ABF, ReviewKD, build_abfs, hcl_loss, review
from kdbench.models.students import create_student
from kdbench.registry import load_registry
from tests.test_baselines import BothTeacher, StubTeacher


class WideTeacher(BothTeacher):
    """Wider than resnet18_thin (32, 64, 128, 256) and at other sizes (12, 6, 3, 2 px)."""

    stage_channels = [48, 96, 160, 320]

    def forward(self, x, needs=None):
        out = super().forward(x, needs)
        for name in ("rgb", "freq"):
            feats = [torch.nn.functional.adaptive_avg_pool2d(f, s)
                     for f, s in zip(getattr(out, name), (12, 6, 3, 2))]
            setattr(out, name, feats)
            if feats:
                setattr(out, f"{name}_pooled", feats[-1].mean((2, 3)))
        return out


HP = {"beta": 1.0, "warmup_frac": 20 / 240, "max_mid_channel": 512}


def reference_hcl(fs_list, ft_list):
    """The reference formula, one level pair at a time, with plain means."""
    total = 0.0
    for fs, ft in zip(fs_list, ft_list):
        h = fs.shape[2]
        terms = [((fs - ft) ** 2).mean()]
        weights = [1.0]
        w = 1.0
        for size in (4, 2, 1):
            if size < h:
                w = w / 2
                k = h // size  # the sizes here divide h: pooling is a block mean
                ps = fs.unflatten(2, (size, k)).unflatten(4, (size, k)).mean((3, 5))
                pt = ft.unflatten(2, (size, k)).unflatten(4, (size, k)).mean((3, 5))
                terms.append(w * ((ps - pt) ** 2).mean())
                weights.append(w)
        total = total + sum(terms) / sum(weights)
    return total


def test_hcl_matches_the_reference_formula():
    g = torch.Generator().manual_seed(0)
    sizes = [8, 4, 2, 1]
    fs = [torch.randn(3, 5, s, s, generator=g) for s in sizes]
    ft = [torch.randn(3, 5, s, s, generator=g) for s in sizes]
    expected = reference_hcl(fs, ft)
    assert hcl_loss(fs, ft).item() == pytest.approx(expected.item(), abs=1e-4)
    # the 1x1 level is the plain mse
    assert hcl_loss(fs[3:], ft[3:]).item() == pytest.approx(
        ((fs[3] - ft[3]) ** 2).mean().item(), abs=1e-6)
    # per level: 8x8 weights 1, 1/2, 1/4, 1/8; 2x2 weights 1, 1/2 (only l = 1)
    assert hcl_loss(fs[2:3], ft[2:3]).item() == pytest.approx(
        reference_hcl(fs[2:3], ft[2:3]).item(), abs=1e-6)


def test_hcl_by_hand():
    x = torch.randn(2, 3, 8, 8)
    assert hcl_loss([x, x[:, :, :1, :1]], [x, x[:, :, :1, :1]]).item() == pytest.approx(0.0)
    c = 0.7  # a constant offset: every term is c**2, and so is the normalised sum
    assert hcl_loss([x + c], [x]).item() == pytest.approx(c**2, rel=1e-5)
    assert hcl_loss([x + c, x[:, :, :1, :1] + c], [x, x[:, :, :1, :1]]).item() == pytest.approx(
        2 * c**2, rel=1e-5)


def test_abf_outputs_have_the_teacher_shapes_and_attention_in_0_1():
    s_chans, t_chans = [16, 24, 40, 64], [32, 48, 96, 128]
    abfs = build_abfs([*s_chans, 64], [*t_chans, 128], max_mid_channel=512)
    assert all(abf.conv1[0].out_channels == 64 for abf in abfs)  # min(512, pooled width)
    assert abfs[0].att_conv is None and all(abf.att_conv is not None for abf in abfs[1:])
    student = [torch.randn(2, c, s, s) for c, s in zip(s_chans, (16, 8, 4, 2))] + [
        torch.randn(2, 64, 1, 1)]
    t_sizes = [(12, 12), (6, 6), (3, 3), (2, 2), (1, 1)]  # not the student's sizes
    fused = review(abfs, student, t_sizes)
    for out, c, size in zip(fused, [*t_chans, 128], t_sizes):
        assert out.shape == (2, c, *size)
    narrow = build_abfs([*s_chans, 64], [*t_chans, 128], max_mid_channel=8)
    assert all(abf.conv1[0].out_channels == 8 for abf in narrow)
    abf = ABF(16, 8, 32, fuse=True)
    x, up = abf.conv1(torch.randn(2, 16, 8, 8)), torch.randn(2, 8, 8, 8)
    z = abf.attention(x, up)
    assert z.shape == (2, 2, 8, 8) and bool(((z > 0) & (z < 1)).all())


def test_warmup_factor_and_resume():
    d = ReviewKD(create_student("resnet18_thin"), StubTeacher(), "rgb", **HP)
    d.on_fit_start({"epochs": 24}, steps_per_epoch=10)  # warm-up 2 epochs = 20 steps
    assert d.run_info["warmup_epochs_effective"] == pytest.approx(2.0)
    assert float(d.warmup_factor()) == 0.0
    d.step.fill_(10)
    assert float(d.warmup_factor()) == pytest.approx(0.5)
    d.step.fill_(25)
    assert float(d.warmup_factor()) == 1.0
    # the loss is weighted by it and only training steps count
    d.step.fill_(0)
    d.train()
    batch = {"image": torch.randn(2, 3, 64, 64), "label": torch.tensor([0, 1])}
    _, losses = d.forward_train(batch)
    assert losses["loss_kd_rgb"].item() == 0.0 and int(d.step) == 1
    d.eval()
    d.forward_train(batch)
    assert int(d.step) == 1
    d.step.fill_(5)
    fresh = ReviewKD(create_student("resnet18_thin"), StubTeacher(), "rgb", **HP)
    fresh.on_fit_start({"epochs": 24}, steps_per_epoch=10)
    fresh.load_state_dict(d.state_dict())
    assert int(fresh.step) == 5 and float(fresh.warmup_factor()) == pytest.approx(0.25)


def _batch():
    return {"image": torch.randn(4, 3, 64, 64), "label": torch.tensor([0, 1, 0, 1])}


def test_rgb_mode_never_touches_frequency_features():
    teacher = StubTeacher()
    d = ReviewKD(create_student("resnet18_thin"), teacher, "rgb", **HP)
    assert d.teacher_needs() == {"rgb"}
    _, losses = d.forward_train(_batch())
    assert set(losses) == {"loss_ce", "loss_kd_rgb"}
    assert teacher.calls == [{"rgb"}]


def test_both_mode_trains_both_branches_with_unequal_widths():
    student = create_student("resnet18_thin")
    assert student.stage_channels != WideTeacher.stage_channels
    d = ReviewKD(student, WideTeacher(), "both", **HP)
    assert d.teacher_needs() == {"rgb", "freq"}
    _, losses = d.forward_train(_batch())
    assert set(losses) == {"loss_ce", "loss_kd_rgb", "loss_kd_freq"}
    sum(losses.values()).backward()
    owned = {id(p) for p in d.trainable_modules().parameters()}
    for name, p in d.named_parameters():
        assert id(p) in owned, f"{name} is not in the optimizer"
        assert p.grad is not None, f"{name} received no gradient"
    for branch in ("rgb", "freq"):
        for abf in d.adaptors[branch]:
            assert abf.conv2[0].weight.grad.abs().sum() > 0
    rgb = {id(p) for p in d.adaptors["rgb"].parameters()}
    assert rgb.isdisjoint(id(p) for p in d.adaptors["freq"].parameters())
    assert any(p.grad.abs().sum() > 0 for p in d.student.backbone.parameters())


def test_registry_resolves_reviewkd_in_both_modes():
    entry = load_registry()["reviewkd"]
    assert entry.modes == ["rgb", "both"]
    hp = entry.hparams("synthetic")
    assert hp == {"beta": 1.0, "warmup_frac": pytest.approx(20 / 240, abs=1e-5),
                  "max_mid_channel": 512, "both_weighting": "sum"}
    cls = entry.resolve()
    assert cls is ReviewKD
    for mode in entry.modes:
        teacher = BothTeacher()
        d = cls(create_student("resnet18_thin"), teacher, mode, **hp)
        _, losses = d.forward_train(_batch())
        assert set(losses) == {"loss_ce", *(f"loss_kd_{b}" for b in d.branches)}
