"""KD, RKD and NST against independent implementations of their reference formulas (RepDistiller's
distiller_zoo, written out with loops) and values computed by hand, and the distillers' wiring
(RGB mode never reading frequency fields, both mode training the student from both branches)."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdbench.methods.kd import KD, kd_loss
from kdbench.methods.nst import NST, nst_loss
from kdbench.methods.rkd import RKD, rkd_loss
from kdbench.models.outputs import TeacherOut
from kdbench.models.students import create_student
from kdbench.registry import load_registry
from tests.test_baselines import StubTeacher


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- KD


def _kd_by_loops(s: torch.Tensor, t: torch.Tensor, temp: float) -> float:
    total = 0.0
    for n in range(s.shape[0]):
        zs = [math.exp(v / temp) for v in s[n].tolist()]
        zt = [math.exp(v / temp) for v in t[n].tolist()]
        ps = [v / sum(zs) for v in zs]
        pt = [v / sum(zt) for v in zt]
        total += sum(b * math.log(b / a) for a, b in zip(ps, pt))
    return total / s.shape[0] * temp**2


def test_kd_loss_matches_the_formula():
    s, t = torch.randn(5, 3, generator=_gen()), 3 * torch.randn(5, 3, generator=_gen(1))
    for temp in (1.0, 4.0):
        assert kd_loss(s, t, temp).item() == pytest.approx(_kd_by_loops(s, t, temp), abs=1e-4)


def test_kd_loss_by_hand():
    s = torch.tensor([[0.0, 0.0]])  # p_s = [1/2, 1/2]
    t = torch.tensor([[math.log(3.0), 0.0]])  # p_t = [3/4, 1/4] at T = 1
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_scales_by_t_squared_and_averages_the_batch():
    s, t = torch.randn(4, 2, generator=_gen()), torch.randn(4, 2, generator=_gen(1))
    per_sample = [F.kl_div(F.log_softmax(s[i:i + 1] / 2, 1), F.softmax(t[i:i + 1] / 2, 1),
                           reduction="sum").item() for i in range(4)]
    assert kd_loss(s, t, 2.0).item() == pytest.approx(4 * sum(per_sample) / 4, rel=1e-5)
    # the batch mean: a batch of one sample repeated gives that sample's value
    assert kd_loss(s[:1].repeat(3, 1), t[:1].repeat(3, 1), 2.0).item() == pytest.approx(
        4 * per_sample[0], rel=1e-5)


# ---------------------------------------------------------------- RKD


def _smooth_l1(a: list[float], b: list[float]) -> float:
    return sum(0.5 * (x - y) ** 2 if abs(x - y) < 1 else abs(x - y) - 0.5
               for x, y in zip(a, b)) / len(a)


def _rkd_by_loops(fs: torch.Tensor, ft: torch.Tensor, w_d: float, w_a: float) -> float:
    def dists(e):
        n = len(e)
        d = [[0.0 if i == j else (e[i] - e[j]).norm().item() for j in range(n)] for i in range(n)]
        positive = [v for row in d for v in row if v > 0]
        mean = sum(positive) / len(positive)
        return [v / mean for row in d for v in row]

    def angles(e):
        n = len(e)
        out = []
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = max(u.norm().item(), 1e-12), max(v.norm().item(), 1e-12)
                    out.append((u @ v).item() / (nu * nv))
        return out

    s, t = fs.flatten(1).double(), ft.flatten(1).double()
    return w_d * _smooth_l1(dists(s), dists(t)) + w_a * _smooth_l1(angles(s), angles(t))


def test_rkd_loss_matches_the_formula_with_unequal_widths():
    fs, ft = torch.randn(5, 7, generator=_gen()), 4 * torch.randn(5, 3, 2, generator=_gen(1))
    expected = _rkd_by_loops(fs, ft, 25.0, 50.0)
    assert rkd_loss(fs, ft).item() == pytest.approx(expected, abs=1e-4)
    expected = _rkd_by_loops(fs, ft, 2.0, 0.5)
    assert rkd_loss(fs, ft, w_dist=2.0, w_angle=0.5).item() == pytest.approx(expected, abs=1e-4)


def test_rkd_loss_by_hand():
    f = torch.randn(4, 6, generator=_gen())
    assert rkd_loss(f, f).item() == pytest.approx(0.0, abs=1e-6)
    # scale invariant: distances are normalised by their mean, angles do not see scale
    assert rkd_loss(3 * f, f).item() == pytest.approx(0.0, abs=1e-5)
    # three points on a line vs a right isosceles triangle (all in 2-D)
    line = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # d: 1, 2, 1 (x2) mean 4/3
    tri = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # d: 1, 1, sqrt2 (x2)
    r2 = math.sqrt(2)
    ds = [v * 3 / 4 for v in (1, 2, 1)]
    dt = [v * 3 / (2 + r2) for v in (1, 1, r2)]
    loss_d = 2 * sum(0.5 * (a - b) ** 2 for a, b in zip(ds, dt)) / 9
    # angle cosines: line: at a middle point -1, at an end +1; triangle: 0 at the right angle,
    # 1/sqrt2 at the others (off-diagonal pairs of each anchor, both orders)
    a_s, a_t = [1, -1, 1], [0, 1 / r2, 1 / r2]
    loss_a = 2 * sum(0.5 * (a - b) ** 2 if abs(a - b) < 1 else abs(a - b) - 0.5
                     for a, b in zip(a_s, a_t)) / 27
    assert rkd_loss(line, tri).item() == pytest.approx(25 * loss_d + 50 * loss_a, rel=1e-5)


def test_rkd_teacher_side_carries_no_gradient():
    fs = torch.randn(4, 5, generator=_gen(), requires_grad=True)
    ft = torch.randn(4, 3, generator=_gen(1), requires_grad=True)
    rkd_loss(fs, ft).backward()
    assert ft.grad is None and torch.isfinite(fs.grad).all() and fs.grad.abs().sum() > 0


# ---------------------------------------------------------------- NST


def _nst_by_loops(fs: list[torch.Tensor], ft: list[torch.Tensor]) -> float:
    total = 0.0
    for s, t in zip(fs, ft):
        h = min(s.shape[2], t.shape[2])
        s, t = F.adaptive_avg_pool2d(s, h).double(), F.adaptive_avg_pool2d(t, h).double()
        s, t = s.flatten(2), t.flatten(2)
        s = s / s.norm(dim=2, keepdim=True)
        t = t / t.norm(dim=2, keepdim=True)

        def mmd_term(a, b):
            n, ca, cb = a.shape[0], a.shape[1], b.shape[1]
            return sum((a[i, j] @ b[i, k]).item() ** 2 for i in range(n) for j in range(ca)
                       for k in range(cb)) / (n * ca * cb)

        total += mmd_term(t, t) + mmd_term(s, s) - 2 * mmd_term(s, t)
    return total


def test_nst_loss_matches_the_formula_with_unequal_sizes():
    g = _gen()
    fs = [torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 4, 2, 2, generator=g)]
    ft = [torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 6, 4, 4, generator=g)]
    assert nst_loss(fs, ft).item() == pytest.approx(_nst_by_loops(fs, ft), abs=1e-4)


def test_nst_loss_by_hand():
    f = [torch.rand(2, 3, 4, 4, generator=_gen())]
    assert nst_loss(f, f).item() == pytest.approx(0.0, abs=1e-6)
    # one channel each, 1x2 maps: s = [1, 0], t = [1, 1]/sqrt2 -> k(s,t) = 1/2, k(s,s) = k(t,t) = 1
    s, t = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2), torch.tensor([1.0, 1.0]).view(1, 1, 1, 2)
    assert nst_loss([s], [t]).item() == pytest.approx(1 + 1 - 2 * 0.5, rel=1e-6)
    # student with two orthogonal channels vs one teacher channel equal to the first
    s2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    expected = 1 + (1 + 0 + 0 + 1) / 4 - 2 * (1 + 0) / 2
    assert nst_loss([s2], [s]).item() == pytest.approx(expected, rel=1e-6)


def test_nst_loss_reaches_the_student():
    fs = [torch.randn(2, 3, 4, 4, generator=_gen(), requires_grad=True)]
    nst_loss(fs, [torch.randn(2, 5, 4, 4, generator=_gen(1))]).backward()
    assert torch.isfinite(fs[0].grad).all() and fs[0].grad.abs().sum() > 0


# ---------------------------------------------------------------- wiring


class AuxTeacher(StubTeacher):
    """Provides the auxiliary heads' logits; asking for anything of the frequency branch
    raises unless ``with_freq``."""

    def __init__(self, with_freq: bool = False):
        super().__init__()
        self.with_freq = with_freq

    def forward(self, x, needs=None):
        needs = set(needs or ())
        self.calls.append(needs)
        if not self.with_freq and {"freq", "freq_proj"} & needs:
            raise AssertionError("frequency branch touched")
        b = x.shape[0]
        g = _gen(2)
        out = TeacherOut(logits=torch.randn(b, 2, generator=g))
        for branch in ("rgb", "freq"):
            if f"{branch}_proj" in needs:
                out.aux_logits[branch] = torch.randn(b, 2, generator=g) * 3
        return out


class FreqTeacher(StubTeacher):
    """A frequency branch that differs from the RGB one beyond a channel permutation (to which
    RKD and NST are blind): the squared RGB maps."""

    def forward(self, x, needs=None):
        needs = set(needs or ())
        out = super().forward(x, needs - {"freq"})
        if "freq" in needs:
            out.freq = [f.pow(2) for f in out.rgb]
            out.freq_pooled = out.freq[-1].mean((2, 3))
        return out


HP = {"kd": {"temperature": 4.0, "alpha": 0.9, "ce_weight": 0.1},
      "rkd": {"beta": 1.0, "w_dist": 25.0, "w_angle": 50.0}, "nst": {"beta": 50.0}}
CLASSES = {"kd": KD, "rkd": RKD, "nst": NST}
NEEDS = {("kd", "rgb"): {"rgb_proj"}, ("kd", "both"): {"rgb_proj", "freq_proj"},
         ("rkd", "rgb"): {"rgb"}, ("rkd", "both"): {"rgb", "freq"},
         ("nst", "rgb"): {"rgb"}, ("nst", "both"): {"rgb", "freq"}}


def _batch():
    return {"image": torch.randn(4, 3, 64, 64, generator=_gen(3)),
            "label": torch.tensor([0, 1, 0, 1])}


def _teacher(name: str, mode: str):
    if name == "kd":
        return AuxTeacher(with_freq=mode == "both")
    return FreqTeacher() if mode == "both" else StubTeacher()


@pytest.mark.parametrize("name", ["kd", "rkd", "nst"])
def test_rgb_mode_never_touches_frequency_features(name):
    teacher = _teacher(name, "rgb")
    d = CLASSES[name](create_student("resnet18_thin"), teacher, "rgb", **HP[name])
    assert d.teacher_needs() == NEEDS[name, "rgb"]
    _, losses = d.forward_train(_batch())
    assert set(losses) == {"loss_ce", "loss_kd_rgb"}
    assert teacher.calls == [NEEDS[name, "rgb"]]
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", ["kd", "rkd", "nst"])
def test_both_mode_uses_both_branches_and_trains_the_student(name):
    teacher = _teacher(name, "both")
    d = CLASSES[name](create_student("resnet18_thin"), teacher, "both", **HP[name])
    assert d.teacher_needs() == NEEDS[name, "both"]
    _, losses = d.forward_train(_batch())
    assert set(losses) == {"loss_ce", "loss_kd_rgb", "loss_kd_freq"}
    assert losses["loss_kd_rgb"].item() != pytest.approx(losses["loss_kd_freq"].item())
    sum(losses.values()).backward()
    owned = {id(p) for p in d.trainable_modules().parameters()}
    for pname, p in d.named_parameters():
        assert id(p) in owned, f"{pname} is not in the optimizer"
    # each distillation term alone reaches the student
    for key in ("loss_kd_rgb", "loss_kd_freq"):
        d.zero_grad()
        _, losses = d.forward_train(_batch())
        losses[key].backward()
        grads = [p.grad for p in d.student.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, key


def test_kd_weights_and_targets():
    teacher = AuxTeacher(with_freq=True)
    d = KD(create_student("resnet18_thin"), teacher, "both", temperature=2.0, alpha=0.5,
           ce_weight=0.25)
    batch = _batch()
    torch.manual_seed(0)
    logits, losses = d.forward_train(batch)
    t = teacher(batch["image"], needs={"rgb_proj", "freq_proj"})
    ce = F.cross_entropy(logits, batch["label"])
    assert losses["loss_ce"].item() == pytest.approx(0.25 * ce.item(), rel=1e-5)
    for branch in ("rgb", "freq"):
        expected = 0.5 * _kd_by_loops(logits.detach(), t.aux_logits[branch], 2.0)
        assert losses[f"loss_kd_{branch}"].item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", ["kd", "rkd", "nst"])
def test_the_registry_resolves_each_method_in_both_modes(name):
    entry = load_registry()[name]
    assert entry.modes == ["rgb", "both"]
    assert entry.hparams("synthetic") == {**HP[name], "both_weighting": "sum"}
    cls = entry.resolve()
    assert cls is CLASSES[name]
    for mode in entry.modes:
        d = cls(create_student("resnet18_thin"), _teacher(name, mode), mode,
                **entry.hparams("synthetic"))
        assert d.teacher_needs() == NEEDS[name, mode]
