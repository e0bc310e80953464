"""TOKD: two-in-one knowledge distillation (paper section 4; docs/design.md decisions 1-4).

The student backbone output S_B(x) feeds the classifier directly (Eq. 8) and, through the
rotations R_r, R_f in SO(d) (Eq. 14: m_k = R_k S_B(x)), the projectors G_Sr (2 conv+BN+ReLU)
and G_Sf (3 conv+BN+ReLU) whose outputs are pulled towards the frozen teacher's F_Tr, F_Tf
(Eq. 6-7). L_S = CE + alpha1 L_KD_RGB + alpha2 L_KD_Fre (Eq. 10) trains the student; the
rotations are detached there and trained by the gradient-homogenization loss (Eq. 13, 15) from
the per-sample gradients w.r.t. m_k of the same backward pass, with their own optimizer whose
learning rate decays faster than the student's (Eq. 16, the Stackelberg condition).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.errors import KdbenchError
from kdbench.methods.base import Distiller
from kdbench.methods.feature_kd import match_spatial
from kdbench.models.outputs import StudentOut, TeacherOut

ROTATION_MODES = ("flat", "channel")
LOGGING_ONLY = {"gradsim_every"}
BOTH_ONLY = {"use_rgb", "use_fre", "rotation", "d", "rotation_mode", "rot_lr_scale", "rot_decay",
             "alpha2"}


# ---------------------------------------------------------------- pure functions


def cayley(weight: Tensor) -> Tensor:
    """Rotation in SO(d) from an unconstrained square matrix: A = triu(W, 1) - triu(W, 1)^T is
    skew-symmetric and R = (I - A)^-1 (I + A) is orthogonal with det +1; W = 0 gives I."""
    upper = weight.triu(1)
    skew = upper - upper.T
    eye = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return torch.linalg.solve(eye - skew, eye + skew)


KD_REDUCTIONS = ("sum", "mean")


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


# ---------------------------------------------------------------- modules


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


def student_projector(cin: int, dim: int, convs: int) -> nn.Sequential:
    """G_Sr (convs=2) / G_Sf (convs=3): conv+BN+ReLU blocks mapping S_B(x) to the teacher's
    projected width."""
    layers = _conv_bn_relu(cin, dim)
    for _ in range(convs - 1):
        layers += _conv_bn_relu(dim, dim)
    return nn.Sequential(*layers)


class Rotation(nn.Module):
    """R in SO(d) through the Cayley map, starting at the identity, always computed in fp32."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d, d))

    def matrix(self, d: int | None = None) -> Tensor:
        """The rotation, or for ``d`` smaller than the module's size the rotation of its
        leading d x d block (still in SO(d))."""
        w = self.weight if d is None else self.weight[:d, :d]
        with torch.autocast(w.device.type, enabled=False):
            return cayley(w.float())


class TOKD(Distiller):
    """TOKD: both teacher branches distilled into S_B(x) through projectors and rotations.

    Hyper-parameters (registry ``defaults``, ``--set tokd.<key>=...``):

    alpha1, alpha2: weights of L_KD_RGB and L_KD_Fre; use_rgb, use_fre: which teacher branches
    are distilled (``both`` mode; ``rgb`` mode uses the RGB branch only); projectors: G_Sr/G_Sf
    (true) or a plain 1x1 conv adaptor (false); rotation: on/off (only with two branches);
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
        self.projectors = nn.ModuleDict({
            b: student_projector(channels, dim, convs[b]) if hp.get("projectors", True)
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
        self._rot_opt: torch.optim.Optimizer | None = None
        self._pending_rot_state: dict[str, Any] | None = None
        self._schedule: dict[str, Any] = {}
        self._step_state: dict[str, Any] = {}

    # -------------------------------------------------------------- interface

    @classmethod
    def ignored_hparams(cls, mode: str) -> set[str]:
        # rgb mode distils one branch: no rotation, no frequency projector, no alpha2
        return LOGGING_ONLY | (BOTH_ONLY if mode == "rgb" else set())

    def teacher_needs(self) -> set[str]:
        return {f"{b}_proj" for b in self.branches}

    def trainable_modules(self) -> nn.ModuleDict:
        # the rotations are not here: their own optimizer trains them (after_backward)
        return nn.ModuleDict({"student": self.student, "projectors": self.projectors})

    def on_fit_start(self, train_cfg: dict[str, Any], steps_per_epoch: int) -> None:
        """Create the rotation optimizer; its lr follows the student's StepLR times
        rot_decay**epoch, so rotation lr / student lr -> 0 (the leader moves slower)."""
        self._schedule = {"lr": float(train_cfg["lr"]) * self.rot_lr_scale,
                          "step_size": int(train_cfg["step_size"]),
                          "gamma": float(train_cfg["gamma"]),
                          "steps_per_epoch": max(int(steps_per_epoch), 1)}
        if self.rotate:
            self._rot_opt = torch.optim.Adam(self.rotations.parameters(),
                                             lr=self._schedule["lr"])
            if self._pending_rot_state is not None:
                self._rot_opt.load_state_dict(self._pending_rot_state)
                self._pending_rot_state = None

    def rotation_lr(self, step: int) -> float:
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
        self._step_state = {"m": ms, "R": rots} if len(self.branches) == 2 else {}
        return s.logits, losses

    def _rotated_inputs(self, z: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """m_k for each branch (gradients retained when two branches are distilled): the
        rotated S_B(x), flattened ([B, C*H*W]) in flat mode, [B, C, H, W] in channel mode."""
        flat = self.rotation_mode == "flat"
        base = z.flatten(1).float() if flat else z.float()
        d = min(self.d, base.shape[1])
        if self.rotate and d < self.d and "d_effective" not in self.run_info:
            from kdbench.progress import console

            console.print(f"[yellow]tokd: d={self.d} exceeds the {base.shape[1]} values of "
                          f"S_B(x); rotating all {d} (d_effective={d})[/]", highlight=False)
        self.run_info["d_effective"] = d
        ms, rots = {}, {}
        for b in self.branches:
            if self.rotate:
                r = self.rotations[b].matrix(d)  # once per step, with its graph for L_R
                with torch.autocast(base.device.type, enabled=False):  # fp32 even under AMP
                    head = rotate(base[:, :d], r.detach(), self.rotation_mode)
                m = torch.cat([head, base[:, d:]], dim=1)
                rots[b] = r
            else:
                m = base.clone() if len(self.branches) == 2 else base
            if len(self.branches) == 2 and m.requires_grad:
                m.retain_grad()
            ms[b] = m
        return ms, rots

    def after_backward(self, step: int) -> dict[str, float]:
        """Rotation step (Eq. 13-16) and, every ``gradsim_every`` steps, a gradsim record."""
        state, self._step_state = self._step_state, {}
        if not state or any(m.grad is None for m in state["m"].values()):
            return {}
        d = self.run_info["d_effective"]
        grads = {b: m.grad for b, m in state["m"].items()}
        out: dict[str, float] = {}
        with torch.no_grad():
            back = {b: self._back(g, state["R"].get(b), d) for b, g in grads.items()}
            if self.gradsim_every and step % self.gradsim_every == 0:
                rec = {"step": step,
                       "cos_full": float(per_sample_cosine(back["rgb"], back["freq"]).mean()),
                       "cos_sub": float(per_sample_cosine(back["rgb"][:, :d],
                                                          back["freq"][:, :d]).mean()),
                       "rotation": self.rotate, "d": d}
                self.traces["gradsim"].append(rec)
        if self.rotate and self._rot_opt is not None:
            lr = self.rotation_lr(step)
            for group in self._rot_opt.param_groups:
                group["lr"] = lr
            heads = [grads[b][:, :d] for b in self.branches]
            loss = rotation_loss(heads, [state["R"][b] for b in self.branches],
                                 self.rotation_mode)
            self._rot_opt.zero_grad(set_to_none=True)
            loss.backward()
            self._rot_opt.step()
            out["rot_cos"] = -float(loss.detach()) / (len(self.branches) * grads["rgb"].shape[0])
            out["rot_lr"] = lr
        return out

    def _back(self, g: Tensor, r: Tensor | None, d: int) -> Tensor:
        """The gradient w.r.t. m expressed w.r.t. S_B(x): R^T on the rotated part."""
        if r is None:
            return g
        return torch.cat([rotate_back(g[:, :d], r.detach(), self.rotation_mode), g[:, d:]], 1)

    # -------------------------------------------------------------- checkpointing

    def get_extra_state(self) -> dict[str, Any]:
        return {"rot_opt": self._rot_opt.state_dict() if self._rot_opt is not None else None}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        opt_state = (state or {}).get("rot_opt")
        if opt_state is None:
            return
        if self._rot_opt is not None:
            self._rot_opt.load_state_dict(opt_state)
        else:
            self._pending_rot_state = opt_state
