"""OFD: the BN margin against its closed form, the partial L2 against the reference formula
written out, the stage weighting and normalisation, the buffers and the distiller's wiring with
a real dual-branch teacher (modelled on test_baselines)."""

import math
from statistics import NormalDist

import pytest
import torch
from torch import nn

from kdbench.methods.ofd import NORM, OFD, bn_margin, connector, ofd_loss, stage_weighted
from kdbench.models.outputs import StudentOut
from kdbench.models.students import create_student
from kdbench.models.teacher import DualBranchTeacher
from kdbench.registry import load_registry

HP = {"beta": 1.0}


def closed_form_margin(gamma: float, beta: float) -> float:
    s, m = abs(gamma), beta
    cdf = NormalDist().cdf(-m / s)
    if cdf > 0.001:
        return m - s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / cdf
    return -3 * s


def test_bn_margin_matches_the_closed_form():
    cases = [(1.0, 0.0), (0.5, 0.3), (2.0, -1.0), (-1.5, 0.7), (0.2, 1.0), (1.0, 5.0)]
    bn = nn.BatchNorm2d(len(cases))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([g for g, _ in cases]))
        bn.bias.copy_(torch.tensor([b for _, b in cases]))
    got = bn_margin(bn)
    assert got.shape == (len(cases),) and got.dtype == torch.float32
    for value, (gamma, beta) in zip(got.tolist(), cases):
        assert value == pytest.approx(closed_form_margin(gamma, beta), rel=1e-5, abs=1e-6)
    # beta / |gamma| = 5: Phi(-5) < 0.001, the -3 s branch; a negative gamma uses |gamma|
    assert got[-1].item() == pytest.approx(-3.0)
    assert got[3].item() == pytest.approx(closed_form_margin(1.5, 0.7), rel=1e-5)
    assert (got < 0).all()  # E[x | x < 0] is negative


def test_bn_margin_of_a_zero_gamma_is_its_limit():
    # timm zero-initialises the BN that feeds a ResNet stage's pre-activation (untrained teacher)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.copy_(torch.tensor([-0.5, 0.0, 0.5]))
    got = bn_margin(bn)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.tensor([-0.5, 0.0, 0.0]), atol=1e-6, rtol=0)


def reference_loss(source, target, margin):
    """The reference's distillation_loss, element by element in plain Python."""
    total = 0.0
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in source.shape]).tolist():
        s, t = source[tuple(idx)].item(), target[tuple(idx)].item()
        t = max(t, margin[0, idx[1], 0, 0].item())
        if s > t or t > 0:
            total += (s - t) ** 2
    return total


def reference_loss_vectorised(source, target, margin):
    """The reference's distillation_loss as it is written (mse_loss without reduction)."""
    target = torch.max(target, margin)
    loss = nn.functional.mse_loss(source, target, reduction="none")
    return (loss * ((source > target) | (target > 0)).float()).sum()


def test_ofd_loss_matches_the_reference_formula():
    g = torch.Generator().manual_seed(0)
    source, target = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    margin = torch.tensor([-0.5, -1.0, -0.2]).view(1, 3, 1, 1)
    got = ofd_loss(source, target, margin).item()
    assert got == pytest.approx(reference_loss(source, target, margin), abs=1e-4)
    big_s, big_t = torch.randn(4, 3, 9, 7, generator=g), torch.randn(4, 3, 9, 7, generator=g)
    assert ofd_loss(big_s, big_t, margin).item() == pytest.approx(
        reference_loss_vectorised(big_s, big_t, margin).item(), abs=1e-4)


def test_ofd_loss_by_hand():
    margin = torch.tensor([-1.0]).view(1, 1, 1, 1)
    one = lambda v: torch.tensor([v]).view(1, 1, 1, 1)  # noqa: E731
    # a target below its margin is lifted to it: (0.5 - (-1))^2
    assert ofd_loss(one(0.5), one(-3.0), margin).item() == pytest.approx(2.25)
    # a source below a non-positive target costs nothing
    assert ofd_loss(one(-2.0), one(-0.5), margin).item() == 0.0
    assert ofd_loss(one(-4.0), one(-3.0), margin).item() == 0.0  # below the lifted target
    # a source above it costs (s - t)^2
    assert ofd_loss(one(0.5), one(-0.5), margin).item() == pytest.approx(1.0)
    # a positive target costs (s - t)^2 on both sides
    assert ofd_loss(one(-1.0), one(2.0), margin).item() == pytest.approx(9.0)
    assert ofd_loss(one(3.0), one(2.0), margin).item() == pytest.approx(1.0)


def test_stage_weighting_and_normalisation():
    loss = torch.tensor(7.0)
    got = stage_weighted([loss] * 4, batch_size=8).item()
    assert got == pytest.approx((1 / 8 + 1 / 4 + 1 / 2 + 1) * 7.0 / 8 / NORM)
    assert stage_weighted([loss] * 3, batch_size=2, norm=1000).item() == pytest.approx(
        (1 / 4 + 1 / 2 + 1) * 7.0 / 2 / 1000)
    assert NORM == 10000


def test_connector_init():
    torch.manual_seed(0)
    conv, bn = connector(64, 256)
    assert conv.bias is None and conv.kernel_size == (1, 1)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    assert (bn.weight == 1).all() and (bn.bias == 0).all()


class FakeStudent(nn.Module):
    """Narrower than the teacher (8, 16, 24, 40) and at twice its map sizes."""

    stage_channels = [8, 16, 24, 40]

    def __init__(self):
        super().__init__()
        chans = [3, *self.stage_channels]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, 2, 1)
                                   for i in range(4))
        self.fc = nn.Linear(40, 2)

    def forward(self, x, preact=False):
        pre, feats = [], []
        for conv in self.convs:
            x = conv(x)
            pre.append(x)
            x = torch.relu(x)
            feats.append(x)
        pooled = x.mean((2, 3))
        return StudentOut(logits=self.fc(pooled), feats=feats, pooled=pooled,
                          preact=pre if preact else [])


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    t = DualBranchTeacher("resnet18_thin", proj_dim=8)
    with torch.no_grad():  # BN affine values away from 1 / 0, so that margins differ
        for bn in t.rgb_branch.preact_bns + t.freq_branch.preact_bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return t


def _batch():
    return {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 0, 1])}


def test_margins_are_buffers_and_connectors_are_trained(teacher):
    d = OFD(create_student("resnet18_thin"), teacher, "both", **HP)
    state = d.state_dict()
    names = {n for n, _ in d.named_parameters()}
    for branch in ("rgb", "freq"):
        bns = getattr(teacher, f"{branch}_branch").preact_bns
        for i, margin in enumerate(d.margins(branch)):
            key = f"margin_{branch}_{i}"
            assert key in state and key not in names
            assert margin.shape == (1, teacher.stage_channels[i], 1, 1)
            torch.testing.assert_close(margin.flatten(), bn_margin(bns[i]))
    owned = {id(p) for p in d.trainable_modules().parameters()}
    assert {id(p) for p in d.adaptors.parameters()} <= owned
    assert {id(p) for p in d.student.parameters()} <= owned
    assert not any(id(b) in owned for b in d.buffers())
    rgb = {id(p) for p in d.adaptors["rgb"].parameters()}
    assert rgb.isdisjoint(id(p) for p in d.adaptors["freq"].parameters())
    assert not torch.equal(d.margin_rgb_0, d.margin_freq_0)


def test_rgb_mode_never_asks_for_frequency_fields(teacher):
    d = OFD(create_student("resnet18_thin"), teacher, "rgb", **HP)
    assert d.teacher_needs() == {"rgb_preact"}
    t = d.teacher_forward(_batch())
    assert t.rgb_preact and not t.freq_preact and not t.freq and t.freq_pooled is None
    # a cached TeacherOut with no frequency field (the engine's batch keys) works too
    batch = {**_batch(), **{f"teacher.rgb_preact.{i}": f for i, f in enumerate(t.rgb_preact)},
             "teacher.logits": t.logits}
    _, losses = d.forward_train(batch)
    assert set(losses) == {"loss_ce", "loss_kd_rgb"}
    assert losses["loss_kd_rgb"].item() > 0


@pytest.mark.parametrize("student", ["resnet18_thin", "fake"])
def test_both_mode_trains_the_student_and_every_connector(teacher, student):
    s = create_student("resnet18_thin") if student != "fake" else FakeStudent()
    d = OFD(s, teacher, "both", **HP)
    assert d.teacher_needs() == {"rgb_preact", "freq_preact"}
    _, losses = d.forward_train(_batch())
    assert set(losses) == {"loss_ce", "loss_kd_rgb", "loss_kd_freq"}
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values())
    (losses["loss_kd_rgb"] + losses["loss_kd_freq"]).backward()
    for name, p in d.named_parameters():
        if name.startswith("student.fc"):
            continue  # the pre-ReLU maps do not reach the classifier
        assert p.grad is not None, f"{name} received no gradient"
        # timm zero-initialises each block's last BN, so only the convs behind it get zeros
        if name.startswith("adaptors") or "stem" in name or "bn2" in name or student == "fake":
            assert p.grad.abs().sum() > 0, f"{name} received a zero gradient"
    assert all(p.grad is None for p in teacher.parameters())


def test_branch_loss_is_the_reference_sum(teacher):
    d = OFD(FakeStudent(), teacher, "rgb", beta=2.0)
    batch = _batch()
    s, t = d.student(batch["image"], preact=True), d.teacher_forward(batch)
    stage = []
    for conn, fs, ft, margin in zip(d.adaptors["rgb"], s.preact, t.rgb_preact, d.margins("rgb")):
        src = nn.functional.adaptive_avg_pool2d(conn(fs), ft.shape[-2:])  # student is larger
        stage.append(reference_loss_vectorised(src, ft, margin).item())
    expected = sum(v / 2 ** (3 - i) for i, v in enumerate(stage)) / 4 / NORM
    _, losses = d.forward_train(batch)
    assert losses["loss_kd_rgb"].item() == pytest.approx(2.0 * expected, rel=1e-4)


def test_registry_resolves_ofd_in_both_modes(teacher):
    entry = load_registry()["ofd"]
    assert entry.resolve() is OFD
    assert entry.modes == ["rgb", "both"]
    assert entry.hparams("synthetic") == {"beta": 1.0, "both_weighting": "sum"}
    for mode in entry.modes:
        d = entry.resolve()(create_student("resnet18_thin"), teacher, mode,
                            **entry.hparams("synthetic"))
        assert d.weight == 1.0 and len(d.adaptors) == len(d.branches)
