"""TOKD: two-in-one knowledge distillation (paper section 4; docs/design.md decisions 1-4).

The student backbone output S_B(x) feeds the classifier directly (Eq. 8) and, through the
rotations R_r, R_f in SO(d) (Eq. 14: m_k = R_k S_B(x)), the projectors G_Sr (2 conv+BN+ReLU)
and G_Sf (3 conv+BN+ReLU) whose outputs are pulled towards the frozen teacher's F_Tr, F_Tf
(Eq. 6-7). L_S = CE + alpha1 L_KD_RGB + alpha2 L_KD_Fre (Eq. 10) trains the student; the
rotations are detached there and trained by the gradient-homogenization loss (Eq. 13, 15) from
the per-sample gradients w.r.t. m_k of the same backward pass: plain gradient descent (Eq. 16)
taken on SO(d) as a Cayley retraction step (Wen & Yin 2013), whose step size decays faster than
the student's learning rate (the Stackelberg condition). dL/dR has rank <= the batch size, so
the step costs O(d^2 B) through the Woodbury identity instead of a d x d solve.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench import distributed
from kdbench.errors import KdbenchError
from kdbench.methods.base import Distiller, full_precision
from kdbench.methods.feature_kd import match_spatial
from kdbench.models.outputs import StudentOut, TeacherOut

log = logging.getLogger(__name__)

ROTATION_MODES = ("flat", "channel")
PROJ_LAST = ("match", "literal")  # docs/design.md decision 10
LOGGING_ONLY = {"gradsim_every"}
BOTH_ONLY = {"use_rgb", "use_fre", "rotation", "d", "rotation_mode", "rot_lr_scale", "rot_decay",
             "alpha2", "proj_last"}
ORTHO_TOL = 1e-5  # R is re-orthonormalised when its estimated drift max|R^T R - I| exceeds this
ORTHO_COLUMNS = 4  # columns of R^T R - I that estimate read in full (with the diagonal)


# ---------------------------------------------------------------- pure functions


def cayley(weight: Tensor) -> Tensor:
    """Rotation in SO(d) from an unconstrained square matrix: A = triu(W, 1) - triu(W, 1)^T is
    skew-symmetric and R = (I - A)^-1 (I + A) is orthogonal with det +1; W = 0 gives I."""
    upper = weight.triu(1)
    skew = upper - upper.T
    eye = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return torch.linalg.solve(eye - skew, eye + skew)


KD_REDUCTIONS = ("sum", "mean")


@full_precision
def tokd_kd_loss(fs: Tensor, ft: Tensor, reduction: str = "sum") -> Tensor:
    """Eq. 6-7: squared L2 distance between the per-sample L2-normalised (flattened) student
    and teacher features, averaged over the batch: ``sum`` over a sample's elements (each term
    lies in [0, 4]; the default) or ``mean`` over them (MSELoss's scale, 1/N as large). The
    paper does not fix the distance's scale, which sets what alpha means."""
    s = F.normalize(fs.flatten(1).float(), dim=1)
    t = F.normalize(ft.flatten(1).float(), dim=1)
    per_sample = (s - t).pow(2).sum(1)
    if reduction == "mean":
        per_sample = per_sample / s.shape[1]
    return per_sample.mean()


def rotate(z: Tensor, r: Tensor, mode: str) -> Tensor:
    """m = R z for every sample: ``flat`` z is [B, d]; ``channel`` z is [B, d, H, W] and the
    channel vector at every position is rotated."""
    if mode == "flat":
        return z @ r.T
    return torch.einsum("bchw,dc->bdhw", z, r)


def rotate_back(g: Tensor, r: Tensor, mode: str) -> Tensor:
    """R^T g for every sample (the gradient w.r.t. m expressed w.r.t. the unrotated input)."""
    if mode == "flat":
        return g @ r
    return torch.einsum("bdhw,dc->bchw", g, r)


def per_sample_cosine(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Cosine similarity of each sample's flattened vectors: [B]."""
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=eps)


def rotation_loss(grads: list[Tensor], rotations: list[Tensor], mode: str) -> Tensor:
    """Eq. 13 summed over the branches k: -sum_n cos(R_k^T grad_k,n, g_n), with the target
    g_n = mean_k R_k^T grad_k,n (Eq. 15) held fixed. ``grads`` are the per-sample gradients
    w.r.t. the rotated features m_k (detached); only ``rotations`` receive gradients."""
    back = [rotate_back(g.detach(), r, mode) for g, r in zip(grads, rotations)]
    target = (sum(b.detach() for b in back) / len(back))
    return -sum(per_sample_cosine(b, target).sum() for b in back)


def _rows(x: Tensor, mode: str) -> Tensor:
    """The vectors R acts on, one per row: ``flat`` [B, d] as is; ``channel`` [B, d, H, W] as
    [B*H*W, d] (sample-major, so ``.view(B, -1)`` gives each sample's values, permuted)."""
    return x if mode == "flat" else x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def rotation_loss_factors(grads: list[Tensor], rotations: list[Tensor], mode: str
                          ) -> tuple[Tensor, list[Tensor], list[tuple[Tensor, Tensor, Tensor]]]:
    """``rotation_loss`` without a graph through R, and its gradient in factored form.

    With V the rows of grad_k (``_rows``) and u = V R_k (R_k^T grad_k, row by row),
    dL/dR_k = V^T dL/du = P Q^T with P = V^T, Q = (dL/du)^T (d x k, k = number of rows).
    Returns the loss (0-dim, detached), u per branch as [B, k/B * d] (each sample's values,
    permuted alike in every branch, so per-sample cosines hold) and (P, Q, R_k^T P = u^T) per
    branch. Costs O(k d^2) for the products u, O(k d) for the rest.
    """
    b = grads[0].shape[0]
    vs = [_rows(g.detach().float(), mode) for g in grads]
    us = [v @ r.detach().float() for v, r in zip(vs, rotations)]
    with torch.enable_grad():
        leaves = [u.detach().reshape(b, -1).requires_grad_() for u in us]
        target = (sum(leaves) / len(leaves)).detach()  # g_n (Eq. 15), held fixed
        loss = -sum(per_sample_cosine(x, target).sum() for x in leaves)
        dus = torch.autograd.grad(loss, leaves)
    factors = [(v.T, du.view_as(v).T, u.T) for v, du, u in zip(vs, dus, us)]
    return loss.detach(), [x.detach() for x in leaves], factors


def cayley_retraction(r: Tensor, g: Tensor, tau: float) -> Tensor:
    """One gradient-descent step of size tau on SO(d) (Wen & Yin 2013, the reference form):
    with the skew A = G R^T - R G^T of the Euclidean gradient G = dL/dR,
    R_new = (I + tau/2 A)^-1 (I - tau/2 A) R, orthogonal for any tau, with the tangent
    -(G - R G^T R) (the Riemannian gradient) at tau = 0. O(d^3)."""
    a = g @ r.T - r @ g.T
    eye = torch.eye(r.shape[0], dtype=r.dtype, device=r.device)
    half = 0.5 * tau * a
    return torch.linalg.solve_ex(eye + half, r - half @ r)[0]  # _ex: no host sync


def cayley_retraction_lowrank(r: Tensor, p: Tensor, q: Tensor, tau: float,
                              rtp: Tensor | None = None) -> Tensor:
    """``cayley_retraction`` for G = P Q^T (P, Q: d x k) in O(d^2 k + k^3).

    A = U V^T with U = [P, RQ], V = [RQ, -P], and by the Woodbury identity
    R_new = R - tau U (I_2k + tau/2 V^T U)^-1 V^T R, where V^T R = [Q^T; -(R^T P)^T] for an
    orthogonal R. ``rtp`` is R^T P when the caller has it already.
    """
    rq = r @ q
    rtp = r.T @ p if rtp is None else rtp
    u = torch.cat([p, rq], 1)
    v = torch.cat([rq, -p], 1)
    eye = torch.eye(u.shape[1], dtype=r.dtype, device=r.device)
    vtr = torch.cat([q.T, -rtp.T], 0)
    z = torch.linalg.solve_ex(eye + (0.5 * tau) * (v.T @ u), vtr)[0]
    return torch.addmm(r, u, z, alpha=-tau)


def cayley_step(r: Tensor, p: Tensor, q: Tensor, tau: float,
                rtp: Tensor | None = None) -> Tensor:
    """The retraction step for G = P Q^T: the Woodbury form while 2k < d, the dense one else."""
    if 2 * p.shape[1] < r.shape[0]:
        return cayley_retraction_lowrank(r, p, q, tau, rtp)
    return cayley_retraction(r, p @ q.T, tau)


def orthogonality_drift(r: Tensor, columns: int = ORTHO_COLUMNS) -> Tensor:
    """An O(d^2 k) estimate of max|R^T R - I|: the whole diagonal (squared column norms minus
    1, summed in fp64: in fp32 the sum's rounding is as large as the drift) and the k
    ``columns`` whose diagonal entries drifted most (fp32 rounding drifts all entries alike).
    0-dim fp64; no host sync."""
    diag = torch.sum(r * r, 0, dtype=torch.float64) - 1
    j = diag.abs().topk(min(columns, len(diag))).indices
    on_diag = torch.arange(len(r), device=r.device)[:, None] == j
    cols = (r.T @ r[:, j]).masked_fill(on_diag, 0)  # the diagonal is taken above
    return torch.maximum(diag.abs().max(), cols.abs().max().double())


def orthonormalise(r: Tensor) -> Tensor:
    """The Q of R = QT with T's diagonal made positive: orthogonal, det Q = sign det R (+1 on
    SO(d)), and as close to R as R is to orthogonal."""
    q, t = torch.linalg.qr(r)
    return q * torch.where(torch.diagonal(t) < 0, -1.0, 1.0)


# ---------------------------------------------------------------- modules


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


def student_projector(cin: int, dim: int, convs: int, linear_last: bool = False) -> nn.Sequential:
    """G_Sr (convs=2) / G_Sf (convs=3): conv+BN+ReLU blocks mapping S_B(x) to the teacher's
    projected width; with ``linear_last`` the last block is a plain conv (signed output)."""
    layers = _conv_bn_relu(cin, dim)
    for _ in range(convs - 1):
        layers += _conv_bn_relu(dim, dim)
    if linear_last:
        layers[-3:] = [nn.Conv2d(dim if convs > 1 else cin, dim, 3, padding=1)]
    return nn.Sequential(*layers)


class Rotation(nn.Module):
    """R in SO(d): an fp32 buffer ``r`` (in the state dict, so a resumed run continues exactly)
    that starts at the identity and moves by Cayley retraction steps (``step``).

    After every step an O(d^2) estimate of its drift from orthogonality is taken; the next
    step reads it (a host copy made without blocking, one step old, so the device's queue never
    drains) and re-orthonormalises R first when it exceeds ``ORTHO_TOL / 2``: the margin covers
    the one step of drift that the delay allows. A state dict of the earlier Cayley-map
    parametrisation (``weight``: W, R = cayley(W)) loads as R = cayley(W).
    """

    def __init__(self, d: int) -> None:
        super().__init__()
        self.register_buffer("r", torch.eye(d))
        self._drift: tuple[Tensor, Any] | None = None  # (host copy, CUDA event or None)

    def matrix(self, d: int | None = None) -> Tensor:
        """R (fp32, no gradient), or its leading d x d block: the rotation of the first d
        coordinates when fewer than the module's size are rotated (the rest of R stays I)."""
        return self.r if d is None else self.r[:d, :d]

    @torch.no_grad()
    def step(self, p: Tensor, q: Tensor, tau: float, rtp: Tensor | None = None) -> None:
        """R <- the Cayley retraction step of size tau along dL/dR = P Q^T (``cayley_step``) on
        the leading d x d block (d = P's rows); ``rtp`` = R^T P if the caller has it."""
        d = p.shape[0]
        block = self.r[:d, :d]
        with torch.autocast(block.device.type, enabled=False):
            if self._drift_exceeds(block, ORTHO_TOL / 2):
                block.copy_(orthonormalise(block))
                rtp = None
            block.copy_(cayley_step(block, p.float(), q.float(), tau, rtp))
            self._drift = self._host_copy(orthogonality_drift(block))

    def _drift_exceeds(self, block: Tensor, tol: float) -> bool:
        """Whether the last step's drift estimate exceeds tol; with none (a fresh or just
        loaded R) the estimate of R now, read at once."""
        if self._drift is None:
            self._drift = self._host_copy(orthogonality_drift(block))
        host, event = self._drift
        if event is not None:
            event.synchronize()  # recorded a step ago: long done
        return bool(host > tol)  # a CPU tensor: no device sync

    @staticmethod
    def _host_copy(x: Tensor) -> tuple[Tensor, Any]:
        """x copied to the host without blocking, with the event that marks the copy done."""
        if x.device.type != "cuda":
            return x.to("cpu"), None
        host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        host.copy_(x, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any
                              ) -> None:
        if prefix + "weight" in state_dict and prefix + "r" not in state_dict:  # Cayley's W
            state_dict[prefix + "r"] = cayley(state_dict.pop(prefix + "weight").float())
        self._drift = None
        super()._load_from_state_dict(state_dict, prefix, *args)


def _keep(store: dict[str, Tensor], key: str, grad: Tensor) -> None:
    """A tensor hook: ``store[key] = grad`` (the gradient itself left as it is)."""
    store[key] = grad


class TOKD(Distiller):
    """TOKD: both teacher branches distilled into S_B(x) through projectors and rotations.

    Hyper-parameters (registry ``defaults``, ``--set tokd.<key>=...``):

    alpha1, alpha2: weights of L_KD_RGB and L_KD_Fre; use_rgb, use_fre: which teacher branches
    are distilled (``both`` mode; ``rgb`` mode uses the RGB branch only); projectors: G_Sr/G_Sf
    (true) or a plain 1x1 conv adaptor (false); rotation: on/off (only with two branches);
    proj_last: match (each student projector ends like the teacher projector it is pulled
    towards: G_Sf's last conv linear, as G_Tf's) or literal (the paper's text: G_Sf ends in
    BN+ReLU, so it cannot reach the negative part of F_Tf);
    d: rotation size; rotation_mode: flat | channel; rot_lr_scale: rotation lr / student lr at
    the start; rot_decay: extra per-epoch decay of the rotation lr; gradsim_every: steps between
    records of the gradient cosine trace (``gradsim.jsonl``; 0 turns it off).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, mode: str, **hp: Any) -> None:
        super().__init__(student, teacher, mode, **hp)
        self.alpha = {"rgb": float(hp.get("alpha1", 10.0)), "freq": float(hp.get("alpha2", 10.0))}
        use = {"rgb": bool(hp.get("use_rgb", True)), "freq": bool(hp.get("use_fre", True))}
        if mode == "rgb":
            use = {"rgb": True, "freq": False}
        self.branches = [b for b in ("rgb", "freq") if use[b]]
        if not self.branches:
            raise KdbenchError("tokd: use_rgb and use_fre are both false; enable at least one")
        self.kd_reduction = str(hp.get("kd_reduction", "sum"))
        if self.kd_reduction not in KD_REDUCTIONS:
            raise KdbenchError(f"tokd.kd_reduction must be sum or mean, got {self.kd_reduction!r}")
        self.rotation_mode = str(hp.get("rotation_mode", "flat"))
        if self.rotation_mode not in ROTATION_MODES:
            raise KdbenchError(f"tokd.rotation_mode must be flat or channel, got "
                               f"{self.rotation_mode!r}")
        self.rotate = bool(hp.get("rotation", True)) and len(self.branches) == 2
        self.d = int(hp.get("d", 1024))
        channels = student.stage_channels[-1]
        if self.d < 1:
            raise KdbenchError(f"tokd.d must be positive, got {self.d}")
        if self.rotate and self.rotation_mode == "channel" and self.d > channels:
            raise KdbenchError(
                f"tokd.d={self.d} exceeds the {channels} channels of S_B(x) in rotation_mode "
                f"channel; use --set tokd.d={channels} or less, or tokd.rotation_mode=flat"
            )
        dim = teacher.proj_dim
        convs = {"rgb": 2, "freq": 3}
        self.proj_last = str(hp.get("proj_last", "match"))
        if self.proj_last not in PROJ_LAST:
            raise KdbenchError(f"tokd.proj_last must be match or literal, got {self.proj_last!r}")
        # match: G_Sf ends like G_Tf (a linear conv, signed), G_Sr like G_Tr (BN+ReLU); a
        # teacher without G_Tr (single) gives its last stage map, which may be signed
        match = self.proj_last == "match"
        linear = {"rgb": match and not getattr(teacher, "rgb_proj_nonnegative", True),
                  "freq": match}
        self.projectors = nn.ModuleDict({
            b: student_projector(channels, dim, convs[b], linear[b]) if hp.get("projectors", True)
            else nn.Conv2d(channels, dim, 1) for b in self.branches
        })
        self.rotations = nn.ModuleDict(
            {b: Rotation(self.d) for b in self.branches} if self.rotate else {})
        self.rot_lr_scale = float(hp.get("rot_lr_scale", 1.0))
        self.rot_decay = float(hp.get("rot_decay", 0.5))
        if not (0.0 < self.rot_decay < 1.0 and self.rot_lr_scale > 0.0):
            raise KdbenchError(
                "tokd.rot_decay must lie in (0, 1) and tokd.rot_lr_scale be positive: the "
                "rotation lr must decay faster than the student's (the Stackelberg condition)"
            )
        self.gradsim_every = int(hp.get("gradsim_every", 10))
        self.traces: dict[str, list[dict[str, Any]]] = {"gradsim": []} if len(
            self.branches) == 2 else {}
        self.run_info: dict[str, Any] = {}
        self._schedule: dict[str, Any] = {}
        self._step_state: dict[str, Any] = {}

    # -------------------------------------------------------------- interface

    @classmethod
    def ignored_hparams(cls, mode: str) -> set[str]:
        # rgb mode distils one branch: no rotation, no frequency projector, no alpha2
        return (super().ignored_hparams(mode) | LOGGING_ONLY
                | (BOTH_ONLY if mode == "rgb" else set()))

    def teacher_needs(self) -> set[str]:
        return {f"{b}_proj" for b in self.branches}

    def trainable_modules(self) -> nn.ModuleDict:
        # the rotations are not here: after_backward moves them by Cayley steps
        return nn.ModuleDict({"student": self.student, "projectors": self.projectors})

    def on_fit_start(self, train_cfg: dict[str, Any], steps_per_epoch: int) -> None:
        """Set the rotation step size schedule (``rotation_lr``); until then the rotations
        stay where they are."""
        self._schedule = {"lr": float(train_cfg["lr"]) * self.rot_lr_scale,
                          "step_size": int(train_cfg["step_size"]),
                          "gamma": float(train_cfg["gamma"]),
                          "steps_per_epoch": max(int(steps_per_epoch), 1)}

    def rotation_lr(self, step: int) -> float:
        """eta_R of Eq. 16: lr * rot_lr_scale, times the student's StepLR factor, times
        rot_decay**epoch, so rotation lr / student lr -> 0 (the leader moves slower)."""
        s = self._schedule
        epoch = step / s["steps_per_epoch"]
        return s["lr"] * s["gamma"] ** (int(epoch) // s["step_size"]) * self.rot_decay ** epoch

    def forward_train(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        s: StudentOut = self.student(batch["image"])
        t: TeacherOut = self.teacher_forward(batch)
        z = s.feats[-1]  # S_B(x)
        losses = {"loss_ce": self.ce(s, batch)}
        ms, rots = self._rotated_inputs(z)
        for b in self.branches:
            fs = self.projectors[b](ms[b].view_as(z).to(z.dtype))
            ft = getattr(t, f"{b}_proj")
            fs, ft = match_spatial(fs, ft)
            losses[f"loss_kd_{b}"] = self.alpha[b] * tokd_kd_loss(fs, ft, self.kd_reduction)
        self._step_state = ({"m": ms, "R": rots, "grad": self._grads}
                            if len(self.branches) == 2 else {})
        return s.logits, losses

    def _rotated_inputs(self, z: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """m_k for each branch (their gradients kept when two branches are distilled): the
        rotated S_B(x), flattened ([B, C*H*W]) in flat mode, [B, C, H, W] in channel mode."""
        flat = self.rotation_mode == "flat"
        base = z.flatten(1).float() if flat else z.float()
        d = min(self.d, base.shape[1])
        if self.rotate and d < self.d and "d_effective" not in self.run_info:

            log.warning(f"tokd: d={self.d} exceeds the {base.shape[1]} values of "
                        f"S_B(x); rotating all {d} (d_effective={d})")
        self.run_info["d_effective"] = d
        ms, rots = {}, {}
        self._grads: dict[str, Tensor] = {}
        for b in self.branches:
            if self.rotate:
                r = self.rotations[b].matrix(d)  # a buffer: no gradient from L_S
                with torch.autocast(base.device.type, enabled=False):  # fp32 even under AMP
                    head = rotate(base[:, :d], r, self.rotation_mode)
                m = torch.cat([head, base[:, d:]], dim=1)
                rots[b] = r
            else:
                m = base.clone() if len(self.branches) == 2 else base
            if len(self.branches) == 2 and m.requires_grad:
                # dL/dm_k, assigned (not accumulated like retain_grad): the backward pass's
                # value is kept even when a trace took this gradient before it
                m.register_hook(functools.partial(_keep, self._grads, b))
            ms[b] = m
        return ms, rots

    def after_backward(self, step: int) -> dict[str, Any]:
        """Rotation step (Eq. 13-16) and, every ``gradsim_every`` steps, a gradsim record.
        Returns 0-dim tensors (``rot_cos``) and the float ``rot_lr``: nothing here waits for
        the device."""
        state, self._step_state = self._step_state, {}
        if not state or any(b not in state["grad"] for b in self.branches):
            return {}
        d = self.run_info["d_effective"]
        grads = [state["grad"][b] for b in self.branches]
        record = bool(self.gradsim_every) and step % self.gradsim_every == 0
        out: dict[str, Any] = {}
        with torch.no_grad(), torch.autocast(grads[0].device.type, enabled=False):
            backs = None  # R_k^T grad_k on the rotated coordinates (each sample's, permuted)
            stepping = self.rotate and bool(self._schedule)
            if stepping:
                heads = [g[:, :d] for g in grads]
                loss, backs, factors = rotation_loss_factors(
                    heads, [state["R"][b] for b in self.branches], self.rotation_mode)
                # data parallel: dL/dR = P Q^T sums over the global batch, so every rank
                # steps R along the ranks' factors side by side and keeps the same R
                factors = [tuple(distributed.all_gather_cat(f, 1) for f in fac)
                           for fac in factors]
            if record:
                if backs is None:  # no rotation step: rotation off, or before on_fit_start
                    backs = [self._back_rows(g[:, :d], state["R"].get(b))
                             for g, b in zip(grads, self.branches)]
                self.traces["gradsim"].append(self._gradsim(step, grads, backs, d))
            if stepping:
                lr = self.rotation_lr(step)
                for b, (p, q, rtp) in zip(self.branches, factors):
                    self.rotations[b].step(p, q, lr, rtp)
                out["rot_cos"] = -loss / (len(self.branches) * grads[0].shape[0])
                out["rot_lr"] = lr
        return out

    def _back_rows(self, g: Tensor, r: Tensor | None) -> Tensor:
        """R^T g for the rotated coordinates g of every sample, as [B, values] (permuted in
        channel mode like ``rotation_loss_factors``' products)."""
        x = _rows(g.float(), self.rotation_mode)
        return (x if r is None else x @ r).reshape(len(g), -1)

    def _gradsim(self, step: int, grads: list[Tensor], backs: list[Tensor], d: int
                 ) -> dict[str, Any]:
        """The gradsim record: per-sample cosines of the two distillation gradients w.r.t.
        S_B(x) (``backs`` = R^T grad on the rotated part, the rest as is), batch means as 0-dim
        tensors. A common permutation of a sample's values leaves its cosines unchanged."""
        full = [torch.cat([x, g[:, d:].flatten(1).float()], 1) for x, g in zip(backs, grads)]
        return {"step": step, "cos_full": per_sample_cosine(*full).mean(),
                "cos_sub": per_sample_cosine(*backs).mean(), "rotation": self.rotate, "d": d}

    # -------------------------------------------------------------- checkpointing

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any
                              ) -> None:
        # the earlier rotations' Adam state (extra state ``rot_opt``) has no use any more
        state_dict.pop(prefix + "_extra_state", None)
        super()._load_from_state_dict(state_dict, prefix, *args)
