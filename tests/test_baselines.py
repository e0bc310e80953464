"""The five baseline losses against values computed by hand from their formulas, and the
distillers' wiring (adaptors in the optimizer, RGB mode never reading frequency features)."""

import math

import pytest
import torch
from torch import nn

from kdbench.methods.at import AT, at_loss
from kdbench.methods.fitnet import FitNet, fitnet_loss
from kdbench.methods.pkt import PKT, pkt_loss
from kdbench.methods.sp import SP, sp_loss
from kdbench.methods.vid import VID, vid_loss
from kdbench.models.outputs import TeacherOut
from kdbench.models.students import create_student


def test_at_loss_by_hand():
    fs = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    ft = torch.ones(1, 1, 2, 2)
    # a_s = [1, 4, 9, 16] / sqrt(354), a_t = [1, 1, 1, 1] / 2
    a_s = [v / math.sqrt(354) for v in (1, 4, 9, 16)]
    expected = sum((a - 0.5) ** 2 for a in a_s) / 4
    assert at_loss([fs], [ft]).item() == pytest.approx(expected, rel=1e-6)
    # two channels average: f**2 channel mean of [[1, 3], [1, 3]] rows -> same as above
    assert at_loss([fs, fs], [ft, ft]).item() == pytest.approx(2 * expected, rel=1e-6)


def test_at_loss_pools_the_larger_map():
    # a 4x4 student map whose 2x2 average pool is [[1, 2], [3, 4]]
    big = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2).repeat_interleave(2, 2)
    big = big.repeat_interleave(2, 3)
    ft = torch.ones(1, 1, 2, 2)
    small = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    assert at_loss([big], [ft]).item() == pytest.approx(at_loss([small], [ft]).item(), rel=1e-6)
    # channel counts may differ: only the attention maps are compared
    assert at_loss([small.repeat(1, 3, 1, 1)], [ft]).item() == pytest.approx(
        at_loss([small], [ft]).item(), rel=1e-6)


def test_pkt_loss_by_hand_with_unequal_widths():
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # cos = I -> P_s rows [2/3, 1/3], [1/3, 2/3]
    ft = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])  # cos = 1 -> P_t = 1/2 everywhere
    expected = (2 * 0.5 * math.log(0.5 / (2 / 3)) + 2 * 0.5 * math.log(0.5 / (1 / 3))) / 4
    assert pkt_loss(fs, ft).item() == pytest.approx(expected, rel=1e-5)
    assert pkt_loss(ft, ft).item() == pytest.approx(0.0, abs=1e-7)


def test_sp_loss_by_hand_with_unequal_widths():
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1)  # G_s = I (rows unit)
    ft = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]).view(2, 3, 1, 1)  # G_t = 2 -> 1/sqrt2
    r = 1 / math.sqrt(2)
    expected = 2 * ((r - 1) ** 2 + r**2) / 4
    assert sp_loss(fs, ft).item() == pytest.approx(expected, rel=1e-6)


def test_vid_loss_by_hand():
    mean = torch.zeros(1, 2, 1, 1)
    var = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    target = torch.ones(1, 2, 1, 1)
    expected = (0.5 * (1 / 1 + math.log(1)) + 0.5 * (1 / 2 + math.log(2))) / 2
    assert vid_loss(mean, var, target).item() == pytest.approx(expected, rel=1e-6)


def test_fitnet_loss_is_mse():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    assert fitnet_loss(a, b).item() == pytest.approx((1 + 4) / 2)


class StubTeacher(nn.Module):
    """Thin-ResNet-shaped teacher features; asking for the frequency branch raises."""

    stage_channels = [32, 64, 128, 256]

    def __init__(self):
        super().__init__()
        self.calls: list[set] = []

    def forward(self, x, needs=None):
        needs = set(needs or ())
        self.calls.append(needs)
        b = x.shape[0]
        if {"freq", "freq_proj"} & needs:
            raise AssertionError("frequency branch touched")
        g = torch.Generator().manual_seed(0)
        feats = [torch.rand(b, c, 16 // 2**i, 16 // 2**i, generator=g) for i, c in
                 enumerate(self.stage_channels)]
        return TeacherOut(logits=torch.zeros(b, 2), rgb=feats, rgb_pooled=feats[-1].mean((2, 3)))


class BothTeacher(StubTeacher):
    def forward(self, x, needs=None):
        needs = set(needs or ())
        out = super().forward(x, needs - {"freq"})
        if "freq" in needs:
            out.freq = [f.flip(1) for f in out.rgb]
            out.freq_pooled = out.freq[-1].mean((2, 3))
        return out


METHODS = [(AT, {"beta": 1000.0}), (PKT, {"beta": 30000.0}), (SP, {"beta": 3000.0}),
           (VID, {"beta": 1.0}), (FitNet, {"beta": 100.0})]


def _batch():
    return {"image": torch.randn(4, 3, 64, 64), "label": torch.tensor([0, 1, 0, 1])}


@pytest.mark.parametrize(("cls", "hp"), METHODS)
def test_rgb_mode_never_touches_frequency_features(cls, hp):
    teacher = StubTeacher()
    d = cls(create_student("resnet18_thin"), teacher, "rgb", **hp)
    assert d.teacher_needs() == {"rgb"}
    _, losses = d.forward_train(_batch())
    assert set(losses) == {"loss_ce", "loss_kd_rgb"}
    assert teacher.calls == [{"rgb"}]


@pytest.mark.parametrize(("cls", "hp"), METHODS)
def test_both_mode_uses_both_branches_and_trains_every_adaptor(cls, hp):
    d = cls(create_student("resnet18_thin"), BothTeacher(), "both", **hp)
    assert d.teacher_needs() == {"rgb", "freq"}
    _, losses = d.forward_train(_batch())
    assert set(losses) == {"loss_ce", "loss_kd_rgb", "loss_kd_freq"}
    sum(losses.values()).backward()
    owned = {id(p) for p in d.trainable_modules().parameters()}
    for name, p in d.named_parameters():
        assert id(p) in owned, f"{name} is not in the optimizer"
        assert p.grad is not None, f"{name} received no gradient"
    if cls is VID:
        for branch in ("rgb", "freq"):
            for reg in d.adaptors[branch]:
                assert reg.log_scale.grad is not None and reg.log_scale.grad.abs().sum() > 0
    if cls in (VID, FitNet):  # separate adaptors per branch
        rgb = {id(p) for p in d.adaptors["rgb"].parameters()}
        assert rgb.isdisjoint(id(p) for p in d.adaptors["freq"].parameters())


def test_vid_variance_starts_at_five():
    d = VID(create_student("resnet18_thin"), StubTeacher(), "rgb", beta=1.0)
    for reg in d.adaptors["rgb"]:
        torch.testing.assert_close(reg.variance().flatten(), torch.full((reg.log_scale.numel(),),
                                                                        5.0))
