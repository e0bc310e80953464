"""TOKD's rotation step: Eq. 16 as a Cayley retraction on SO(d) (Wen & Yin 2013), its low-rank
(Woodbury) form, the gradient it follows, R staying in SO(d), and old checkpoints."""

import pytest
import torch
from torch import nn

from kdbench.methods.tokd import (
    ORTHO_TOL,
    Rotation,
    cayley,
    cayley_retraction,
    cayley_retraction_lowrank,
    orthogonality_drift,
    orthonormalise,
    rotate_back,
    rotation_loss,
    rotation_loss_factors,
)
from tests.test_tokd import _batch, _tokd, _train_step

D = 24
SHAPES = {"flat": (5, D), "channel": (2, D, 2, 1)}  # k = 5 / 4 rows: 2k < d (Woodbury)


def _grads(mode, seed=0):
    """Two branches' per-sample gradients w.r.t. m_k that pull against each other."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(SHAPES[mode], generator=g)
    return [shared + 2 * torch.randn(SHAPES[mode], generator=g),
            -shared + 2 * torch.randn(SHAPES[mode], generator=g)]


def _rotations(seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return [cayley(torch.randn(D, D, generator=g) * scale) for _ in range(2)]


def _max_drift(r):
    r = r.double()
    return float((r.T @ r - torch.eye(len(r), dtype=torch.float64)).abs().max())


@pytest.mark.parametrize("mode", ["flat", "channel"])
def test_step_gradient_is_autograds_gradient_of_the_rotation_loss(mode):
    grads, rs = _grads(mode), _rotations()
    leaves = [r.clone().requires_grad_() for r in rs]
    reference = rotation_loss(grads, leaves, mode)
    expected = torch.autograd.grad(reference, leaves)
    loss, backs, factors = rotation_loss_factors(grads, rs, mode)
    assert float(loss) == pytest.approx(float(reference.detach()), abs=1e-5)
    for (p, q, rtp), r, g, want, back in zip(factors, rs, grads, expected, backs):
        assert torch.allclose(p @ q.T, want, atol=1e-5)  # dL/dR = P Q^T
        assert torch.allclose(rtp, r.T @ p, atol=1e-5)
        rotated = rotate_back(g, r, mode)  # R^T grad per sample, shared with the gradsim record
        rows = rotated if mode == "flat" else rotated.permute(0, 2, 3, 1).reshape(len(g), -1)
        assert torch.allclose(back, rows, atol=1e-5)


@pytest.mark.parametrize("mode", ["flat", "channel"])
def test_lowrank_and_dense_steps_give_the_same_rotation(mode):
    grads, start = _grads(mode), _rotations()
    dense, low = list(start), list(start)
    for _ in range(5):  # each path takes its gradients at its own R
        _, _, fd = rotation_loss_factors(grads, dense, mode)
        _, _, fl = rotation_loss_factors(grads, low, mode)
        assert all(2 * p.shape[1] < D for p, _, _ in fl)  # the Woodbury branch
        dense = [cayley_retraction(r, p @ q.T, 0.05) for r, (p, q, _) in zip(dense, fd)]
        low = [cayley_retraction_lowrank(r, p, q, 0.05, rtp) for r, (p, q, rtp) in zip(low, fl)]
    for a, b, s in zip(dense, low, start):
        assert (a - s).abs().max() > 1e-2  # it moved
        assert (a - b).abs().max() <= 1e-4
        assert _max_drift(b) <= 1e-5


@pytest.mark.parametrize("mode", ["flat", "channel"])
def test_one_step_decreases_the_rotation_loss(mode):
    grads, rs = _grads(mode), _rotations()
    before, _, factors = rotation_loss_factors(grads, rs, mode)
    moved = [cayley_retraction_lowrank(r, p, q, 1e-3, rtp) for r, (p, q, rtp) in zip(rs, factors)]
    after = rotation_loss(grads, moved, mode)
    assert float(after) < float(before)


def test_rotation_stays_in_so_d_over_1000_steps():
    torch.manual_seed(0)
    d, rot = 16, Rotation(16)
    for _ in range(1000):  # random conflicting gradients, a step size of the lr's order
        shared = torch.randn(4, d)
        grads = [shared + torch.randn(4, d), -shared + torch.randn(4, d)]
        _, _, factors = rotation_loss_factors(grads, [rot.matrix()] * 2, "flat")
        p, q, rtp = factors[0]
        rot.step(p, q, 1e-2, rtp)
        assert _max_drift(rot.matrix()) <= ORTHO_TOL
    assert (rot.matrix() - torch.eye(d)).abs().max() > 0.05  # it moved
    assert float(torch.linalg.det(rot.matrix().double())) == pytest.approx(1.0, abs=1e-5)


def test_a_drifted_rotation_is_reorthonormalised_with_det_plus_one():
    torch.manual_seed(0)
    rot = Rotation(D)
    with torch.no_grad():
        rot.r.copy_(_rotations()[0] * (1 + 3 * ORTHO_TOL))  # drifted, still det > 0
    assert float(orthogonality_drift(rot.matrix())) == pytest.approx(_max_drift(rot.r), rel=1e-3)
    _, _, factors = rotation_loss_factors(_grads("flat"), [rot.matrix()] * 2, "flat")
    rot.step(*factors[0][:2], 1e-3)
    assert _max_drift(rot.matrix()) <= ORTHO_TOL / 5
    assert float(torch.linalg.det(rot.matrix().double())) == pytest.approx(1.0, abs=1e-5)
    flipped = torch.eye(4)
    flipped[0, 0] = -1  # orthonormalise keeps the sign of det R
    assert float(torch.linalg.det(orthonormalise(flipped))) == pytest.approx(-1.0)


def test_a_checkpoint_of_the_cayley_parametrisation_loads_as_its_rotation(tmp_path):
    old = _tokd(d=8)
    torch.manual_seed(1)
    state = {k: v for k, v in old.state_dict().items() if not k.startswith("rotations.")}
    weights = {b: torch.randn(8, 8) * 0.3 for b in ("rgb", "freq")}  # W of R = cayley(W)
    for b, w in weights.items():
        state[f"rotations.{b}.weight"] = w
    params = [nn.Parameter(w.clone()) for w in weights.values()]
    adam = torch.optim.Adam(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    adam.step()
    state["_extra_state"] = {"rot_opt": adam.state_dict()}  # the old rotations' Adam
    torch.save(state, tmp_path / "last.pt")
    fresh = _tokd(d=8)
    fresh.load_state_dict(torch.load(tmp_path / "last.pt", weights_only=True))  # strict
    for b, w in weights.items():
        assert torch.allclose(fresh.rotations[b].matrix(), cayley(w), atol=1e-6)
    out = _train_step(fresh, 0)  # and training goes on from there
    assert float(out["rot_cos"]) >= -1.0
    assert set(fresh.state_dict()) == set(old.state_dict())  # saved in the new form


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_after_backward_does_not_synchronise_with_the_host():
    m = _tokd(d=8, gradsim_every=1).cuda()
    for step in range(2):  # the first step reads R's drift at once; the second waits for none
        _, losses = m.forward_train({k: v.cuda() for k, v in _batch(seed=step).items()})
        sum(losses.values()).backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if step else "default")
        try:
            out = m.after_backward(step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert out["rot_cos"].is_cuda and m.traces["gradsim"][-1]["cos_full"].is_cuda
