"""TOKD: rotations stay in SO(d), the gradient the backbone receives, the rotation step, modes."""

import pytest
import torch
from torch import nn

from kdbench.errors import KdbenchError
from kdbench.methods.tokd import (
    TOKD,
    Rotation,
    cayley,
    per_sample_cosine,
    rotate,
    rotate_back,
    rotation_loss,
    rotation_loss_factors,
    student_projector,
    tokd_kd_loss,
)
from kdbench.models.outputs import StudentOut, TeacherOut

C, H, W, PROJ = 6, 2, 2, 4
TRAIN_CFG = {"lr": 1e-2, "step_size": 5, "gamma": 0.1}


class ToyStudent(nn.Module):
    """S_B = one conv; keeps S_B(x) with its gradient for the tests."""

    stage_channels = [C]

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, stride=4, padding=1)
        self.fc = nn.Linear(C, 2)

    def forward(self, x):
        z = self.conv(x)
        z.retain_grad()
        self.z = z
        pooled = z.mean((2, 3))
        return StudentOut(logits=self.fc(pooled), feats=[z], pooled=pooled)


class ToyTeacher(nn.Module):
    """Fixed random projected features; asking for a field it was told to refuse raises."""

    proj_dim = PROJ

    def __init__(self, refuse: frozenset = frozenset()) -> None:
        super().__init__()
        self.refuse = refuse
        g = torch.Generator().manual_seed(1)
        self.w = {"rgb_proj": torch.randn(3, PROJ, generator=g),
                  "freq_proj": torch.randn(3, PROJ, generator=g)}

    def forward(self, x, needs=None):
        needs = {"rgb_proj", "freq_proj"} if needs is None else needs
        if needs & self.refuse:
            raise AssertionError(f"teacher asked for {needs & self.refuse}")
        small = nn.functional.adaptive_avg_pool2d(x, (H, W))
        out = TeacherOut(logits=torch.zeros(len(x), 2))
        for name in needs:
            setattr(out, name, torch.einsum("bchw,cp->bphw", small, self.w[name]))
        return out


def _batch(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(b, 3, 4 * H, 4 * W, generator=g),
            "label": torch.randint(0, 2, (b,), generator=g)}


def _tokd(mode="both", seed=0, **hp):
    torch.manual_seed(seed)
    m = TOKD(ToyStudent(), ToyTeacher(hp.pop("refuse", frozenset())), mode, **hp)
    m.on_fit_start(TRAIN_CFG, steps_per_epoch=10)
    return m


def _turn(m, scale=0.5):
    """Move every rotation of ``m`` away from the identity (a random rotation)."""
    with torch.no_grad():
        for rot in m.rotations.values():
            rot.r.copy_(cayley(torch.randn_like(rot.r) * scale))


def test_cayley_stays_in_so_d_after_many_steps():
    torch.manual_seed(0)
    weight = nn.Parameter(torch.zeros(16, 16))
    opt = torch.optim.Adam([weight], lr=0.05)
    target = torch.randn(16, 16)
    for _ in range(300):
        loss = (cayley(weight) * target).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    r = cayley(weight)
    assert (r - torch.eye(16)).abs().max() > 0.5  # it really moved
    assert torch.allclose(r.T @ r, torch.eye(16), atol=1e-4)
    assert abs(float(torch.linalg.det(r.detach())) - 1.0) < 1e-4
    assert torch.equal(cayley(torch.zeros(5, 5)), torch.eye(5))


def test_rotate_and_rotate_back_are_inverse_in_both_modes():
    r = cayley(torch.randn(3, 3))
    v = torch.randn(2, 3)
    assert torch.allclose(rotate(v, r, "flat"), (r @ v.T).T, atol=1e-6)
    assert torch.allclose(rotate_back(rotate(v, r, "flat"), r, "flat"), v, atol=1e-5)
    m = torch.randn(2, 3, 4, 5)
    expected = torch.einsum("dc,bchw->bdhw", r, m)
    assert torch.allclose(rotate(m, r, "channel"), expected, atol=1e-6)
    assert torch.allclose(rotate_back(rotate(m, r, "channel"), r, "channel"), m, atol=1e-5)


def test_kd_loss_is_the_distance_of_l2_normalised_features():
    fs = torch.tensor([[3.0, 4.0], [1.0, 0.0]]).view(2, 2, 1, 1)
    ft = torch.tensor([[4.0, 3.0], [0.0, 2.0]]).view(2, 2, 1, 1)
    # sample 1: (0.6, 0.8) vs (0.8, 0.6) -> 0.04 + 0.04; sample 2: (1, 0) vs (0, 1) -> 2
    assert tokd_kd_loss(fs, ft).item() == pytest.approx((0.08 + 2.0) / 2)
    assert tokd_kd_loss(fs, ft, "mean").item() == pytest.approx((0.04 + 1.0) / 2)  # 2 elements


def test_rotation_loss_is_minus_the_summed_cosine_to_the_mean_gradient():
    g1 = torch.tensor([[1.0, 0.0]])
    g2 = torch.tensor([[0.0, 1.0]])
    eye = torch.eye(2)
    # each is at 45 degrees to the mean (0.5, 0.5)
    assert rotation_loss([g1, g2], [eye, eye], "flat").item() == pytest.approx(-2 * 0.5 ** 0.5)


def test_at_initialisation_the_forward_equals_an_unrotated_one():
    batch = _batch()
    on, off = _tokd(seed=3), _tokd(seed=3, rotation=False)
    _, loss_on = on.forward_train(batch)
    _, loss_off = off.forward_train(batch)
    m_on, m_off = on._step_state["m"], off._step_state["m"]
    for b in ("rgb", "freq"):  # the projectors' inputs: R_k S_B(x) = S_B(x) at R = I
        assert torch.allclose(m_on[b], m_off[b], atol=1e-6)
    assert set(loss_on) == {"loss_ce", "loss_kd_rgb", "loss_kd_freq"}
    for k in loss_on:
        assert torch.allclose(loss_on[k], loss_off[k], atol=1e-6), k
    assert torch.equal(on.rotations["rgb"].matrix(), torch.eye(on.d))  # R starts at I
    with torch.no_grad():  # a real rotation changes the distillation loss
        on.rotations["rgb"].r.copy_(cayley(torch.eye(on.d).roll(1, 1) * 0.5))
    _, moved = on.forward_train(batch)
    assert not torch.allclose(moved["loss_kd_rgb"], loss_off["loss_kd_rgb"], atol=1e-4)


@pytest.mark.parametrize("mode", ["flat", "channel"])
def test_backbone_gradient_is_cls_plus_rotated_back_branch_gradients(mode):
    d = 10 if mode == "flat" else 4
    m = _tokd(d=d, rotation_mode=mode, alpha1=3.0, alpha2=7.0)
    _turn(m)  # away from the identity
    batch = _batch()
    _, losses = m.forward_train(batch)
    z = m.student.z
    rs = {b: m.rotations[b].matrix() for b in ("rgb", "freq")}
    ms = m._step_state["m"]
    g_cls = torch.autograd.grad(losses["loss_ce"], z, retain_graph=True)[0]
    g = {b: torch.autograd.grad(losses[f"loss_kd_{b}"], ms[b], retain_graph=True)[0]
         for b in ("rgb", "freq")}
    expected = g_cls.flatten(1) if mode == "flat" else g_cls.clone()
    for b in ("rgb", "freq"):
        head = rotate_back(g[b][:, :d], rs[b].detach(), mode)
        expected = expected + torch.cat([head, g[b][:, d:]], 1)
    z.grad = None  # torch.autograd.grad fills .grad of tensors that retain it
    sum(losses.values()).backward()
    assert torch.allclose(z.grad.flatten(1), expected.flatten(1), atol=1e-6)
    # R is a buffer: L_S cannot train it
    assert not any(r.matrix().requires_grad for r in m.rotations.values())


def test_rotation_step_raises_the_cosine_of_conflicting_gradients():
    torch.manual_seed(0)
    b, d = 32, 8
    shared = torch.randn(b, d)
    g_r = shared + 2.0 * torch.randn(b, d)
    g_f = -shared + 2.0 * torch.randn(b, d)  # pulls against g_r
    rots = [Rotation(d), Rotation(d)]

    def cos():
        r1, r2 = (r.matrix() for r in rots)
        return float(per_sample_cosine(g_r @ r1, g_f @ r2).mean())

    before = cos()
    for _ in range(200):  # Eq. 16 on SO(d): Cayley steps along dL_R/dR = P Q^T
        _, _, factors = rotation_loss_factors([g_r, g_f], [r.matrix() for r in rots], "flat")
        for rot, (p, q, rtp) in zip(rots, factors):
            rot.step(p, q, 0.02, rtp)
    assert before < -0.05
    assert cos() > before + 0.3


def test_after_backward_updates_the_rotations_and_logs_the_gradient_cosine():
    m = _tokd(d=8, gradsim_every=2)
    before = {b: r.matrix().clone() for b, r in m.rotations.items()}
    for step in range(3):
        _, losses = m.forward_train(_batch(seed=step))
        sum(losses.values()).backward()
        out = m.after_backward(step)
        # 0-dim tensors, read by the trainer when it logs: no host sync in the step
        assert isinstance(out["rot_cos"], torch.Tensor) and out["rot_cos"].dim() == 0
        assert -1.0 <= float(out["rot_cos"]) <= 1.0 and out["rot_lr"] > 0
    assert all(not torch.equal(before[b], r.matrix()) for b, r in m.rotations.items())
    for r in m.rotations.values():
        assert torch.allclose(r.matrix().T @ r.matrix(), torch.eye(8), atol=1e-5)
    steps = [rec["step"] for rec in m.traces["gradsim"]]
    assert steps == [0, 2]
    rec = m.traces["gradsim"][0]
    assert -1 <= float(rec["cos_full"]) <= 1 and -1 <= float(rec["cos_sub"]) <= 1
    assert rec["rotation"]
    assert m.run_info["d_effective"] == 8


def test_rotation_lr_decays_faster_than_the_students():
    m = _tokd(rot_decay=0.5)
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=TRAIN_CFG["lr"])
    sched = torch.optim.lr_scheduler.StepLR(opt, TRAIN_CFG["step_size"], TRAIN_CFG["gamma"])
    ratio = []
    for epoch in range(12):  # the trainer's StepLR, stepped once per epoch of 10 steps
        ratio.append(m.rotation_lr(epoch * 10) / opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert ratio[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(ratio, ratio[1:]))
    with pytest.raises(KdbenchError, match="Stackelberg"):
        _tokd(rot_decay=1.0)


@pytest.mark.parametrize(("mode", "d", "rotation"),
                         [("flat", 10, True), ("channel", 4, True), ("flat", 10, False)])
def test_gradsim_record_is_the_cosine_of_the_two_distillation_gradients(mode, d, rotation):
    m = _tokd(d=d, rotation_mode=mode, rotation=rotation, gradsim_every=1)
    _turn(m)
    _, losses = m.forward_train(_batch())
    z = m.student.z
    g = [torch.autograd.grad(losses[f"loss_kd_{b}"], z, retain_graph=True)[0].flatten(1)
         for b in ("rgb", "freq")]
    z.grad = None
    for t in m._step_state["m"].values():
        t.grad = None
    sum(losses.values()).backward()
    m.after_backward(0)
    rec = m.traces["gradsim"][0]
    sub = [x.view(len(x), C, H * W)[:, :d] if mode == "channel" else x[:, :d] for x in g]
    expected_full = torch.nn.functional.cosine_similarity(g[0], g[1], dim=1).mean()
    expected_sub = per_sample_cosine(*sub).mean()
    assert float(rec["cos_full"]) == pytest.approx(float(expected_full), abs=1e-5)
    assert float(rec["cos_sub"]) == pytest.approx(float(expected_sub), abs=1e-5)
    assert rec["rotation"] is rotation and rec["d"] == d


def test_rgb_mode_ignores_the_settings_of_the_second_branch():
    assert {"d", "rotation", "alpha2", "gradsim_every"} <= TOKD.ignored_hparams("rgb")
    assert TOKD.ignored_hparams("both") == {"gradsim_every"}


def test_rgb_mode_uses_neither_the_frequency_projector_nor_the_rotations():
    m = _tokd("rgb", refuse=frozenset({"freq_proj"}))
    assert set(m.projectors) == {"rgb"} and len(m.rotations) == 0
    assert m.teacher_needs() == {"rgb_proj"}
    _, losses = m.forward_train(_batch())
    assert set(losses) == {"loss_ce", "loss_kd_rgb"}
    sum(losses.values()).backward()
    assert m.after_backward(0) == {} and m.traces == {}


def test_ablation_switches():
    fre_only = _tokd(use_rgb=False, refuse=frozenset({"rgb_proj"}))
    assert set(fre_only.projectors) == {"freq"} and len(fre_only.rotations) == 0
    _, losses = fre_only.forward_train(_batch())
    assert set(losses) == {"loss_ce", "loss_kd_freq"}
    plain = _tokd(projectors=False)
    assert all(isinstance(p, nn.Conv2d) and p.kernel_size == (1, 1)
               for p in plain.projectors.values())
    full = _tokd()
    # 2 / 3 blocks; with proj_last match (the default) G_Sf's last block is a plain conv
    assert len(full.projectors["rgb"]) == 6 and len(full.projectors["freq"]) == 7
    assert set(full.rotations) == {"rgb", "freq"}
    # R_r, R_f are buffers moved by after_backward, not parameters of the trainer's optimizer
    assert list(full.rotations.parameters()) == []
    assert {k for k in full.state_dict() if k.startswith("rotations.")} == {
        "rotations.rgb.r", "rotations.freq.r"}
    with pytest.raises(KdbenchError, match="both false"):
        _tokd(use_rgb=False, use_fre=False)


def test_channel_rotation_larger_than_the_channels_is_a_clear_error():
    with pytest.raises(KdbenchError, match=f"exceeds the {C} channels"):
        _tokd(rotation_mode="channel", d=C + 1)
    _tokd(rotation_mode="channel", d=C).forward_train(_batch())


def test_flat_rotation_larger_than_s_b_is_clamped_and_recorded():
    m = _tokd(d=1000)  # S_B(x) has C*H*W = 24 values
    _, losses = m.forward_train(_batch())
    sum(losses.values()).backward()
    m.after_backward(0)
    assert m.run_info["d_effective"] == C * H * W


def _train_step(m, step, seed=None):
    _, losses = m.forward_train(_batch(seed=step if seed is None else seed))
    sum(losses.values()).backward()
    return m.after_backward(step)


def test_rotations_travel_with_the_state_dict_and_resume_exactly():
    m = _tokd(d=8)
    for step in range(2):
        _train_step(m, step)
    fresh = _tokd(d=8, seed=1)
    fresh.load_state_dict(m.state_dict())
    for b in m.rotations:
        assert torch.equal(fresh.rotations[b].matrix(), m.rotations[b].matrix())
    _train_step(m, 2)
    _train_step(fresh, 2)
    for b in m.rotations:  # the next step moves both alike: nothing else carries over
        assert torch.equal(fresh.rotations[b].matrix(), m.rotations[b].matrix())


def _fit_projector(proj_last: str, target: torch.Tensor, steps: int = 300) -> float:
    """L_KD after ``steps`` Adam steps of G_Sf alone on one fixed batch towards ``target``."""
    torch.manual_seed(0)
    proj = student_projector(8, target.shape[1], 3, linear_last=proj_last == "match")
    z = torch.randn(4, 8, 3, 3)
    opt = torch.optim.Adam(proj.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = tokd_kd_loss(proj(z), target)
        loss.backward()
        opt.step()
    return tokd_kd_loss(proj(z), target).item()


def test_matched_projector_reaches_a_signed_target_and_the_literal_one_cannot():
    target = torch.randn(4, 16, 3, 3, generator=torch.Generator().manual_seed(1))
    t = target.flatten(1)
    floor = (2 - 2 * t.clamp(min=0).norm(dim=1) / t.norm(dim=1)).mean().item()  # best >= 0 fit
    assert floor > 0.5
    assert _fit_projector("match", target) < 0.02
    assert _fit_projector("literal", target) > 0.95 * floor


def test_proj_last_builds_the_frequency_projector_and_is_checked():
    student, teacher = ToyStudent(), ToyTeacher()
    last = {p: TOKD(student, teacher, "both", proj_last=p).projectors["freq"][-1]
            for p in ("match", "literal")}
    assert isinstance(last["match"], nn.Conv2d) and last["match"].bias is not None
    assert isinstance(last["literal"], nn.ReLU)
    rgb = TOKD(student, teacher, "both", proj_last="match").projectors["rgb"][-1]
    assert isinstance(rgb, nn.ReLU)  # G_Sr ends like G_Tr in both settings
    with pytest.raises(KdbenchError, match="proj_last must be match or literal"):
        TOKD(student, teacher, "both", proj_last="signed")
