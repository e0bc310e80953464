"""ReviewKD: distilling knowledge via knowledge review (Chen et al., CVPR 2021).

The student's levels (its four stage maps and its pooled vector as a 1x1 map) are fused top-down
by attention-based fusion (ABF) modules, and every fused level is compared with the teacher's map
of the same level by the hierarchical context loss (HCL), as in mdistiller's ``ReviewKD``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods.base import full_precision
from kdbench.methods.feature_kd import (
    FeatureKD,
    branch_channels,
    match_spatial,
    teacher_feats,
    teacher_pooled,
)
from kdbench.models.outputs import StudentOut, TeacherOut

HCL_LEVELS = (4, 2, 1)  # the pooled context sizes of the hierarchical context loss
WARMUP_FRAC = 20 / 240  # mdistiller: WARMUP_EPOCHS 20 of SOLVER.EPOCHS 240


@full_precision
def hcl_loss(fs_list: list[Tensor], ft_list: list[Tensor]) -> Tensor:
    """Hierarchical context loss, summed over level pairs of equal shape [B, C, H, W].

    Per pair: (mse(fs, ft) + sum_k 2**-k mse(pool_l(fs), pool_l(ft))) / (1 + sum_k 2**-k), where
    l runs over (4, 2, 1) keeping only l < H (k = 1, 2, ... over the kept sizes) and pool_l is
    an adaptive average pool to (l, l); a 1x1 level has the plain mse term alone.
    """
    total: Tensor | float = 0.0
    for fs, ft in zip(fs_list, ft_list, strict=True):
        h = fs.shape[2]
        loss = F.mse_loss(fs, ft)
        weight, norm = 1.0, 1.0
        for size in HCL_LEVELS:
            if size >= h:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, (size, size)),
                                              F.adaptive_avg_pool2d(ft, (size, size)))
            norm += weight
        total = total + loss / norm
    return total  # type: ignore[return-value]


class ABF(nn.Module):
    """Attention-based fusion of one student level with the fused level above it.

    conv1x1(in -> mid) + BN; if ``fuse``: a per-pixel pair of sigmoid weights from
    conv1x1(2 mid -> 2) mixes this level with the upper level's residual (nearest-resized to this
    level's size); the mix is nearest-resized to the output size; conv3x3(mid -> out) + BN gives
    the output. Returns (output, residual for the next level down).
    """

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid_channel),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channel, out_channel, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channel),
        )
        self.att_conv = (
            nn.Sequential(nn.Conv2d(2 * mid_channel, 2, kernel_size=1), nn.Sigmoid())
            if fuse else None
        )
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def attention(self, x: Tensor, residual: Tensor) -> Tensor:
        """The fusion weights [B, 2, H, W] of (this level, the upper residual), in (0, 1)."""
        return self.att_conv(torch.cat([x, residual], dim=1))

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]
                ) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("a fusing ABF needs the upper level's residual")
            residual = F.interpolate(residual, x.shape[-2:], mode="nearest")
            z = self.attention(x, residual)
            x = x * z[:, :1] + residual * z[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def build_abfs(in_channels: list[int], out_channels: list[int], max_mid_channel: int
               ) -> nn.ModuleList:
    """ABFs ordered top-down (deepest level first); the top one does not fuse. The middle width
    is min(max_mid_channel, in_channels[-1]) for every level, as the reference sets it."""
    mid = min(max_mid_channel, in_channels[-1])
    last = len(in_channels) - 1
    abfs = [ABF(c_in, mid, c_out, idx < last)
            for idx, (c_in, c_out) in enumerate(zip(in_channels, out_channels, strict=True))]
    return nn.ModuleList(abfs[::-1])


def review(abfs: nn.ModuleList, student_levels: list[Tensor], sizes: list[tuple[int, int]]
           ) -> list[Tensor]:
    """Fuse the student's levels (shallow to deep) top-down; the outputs come back shallow to
    deep, level i resized to ``sizes[i]``."""
    levels, sizes = student_levels[::-1], sizes[::-1]
    results: list[Tensor] = []
    residual: Tensor | None = None
    for abf, feat, size in zip(abfs, levels, sizes, strict=True):
        out, residual = abf(feat, residual, size)
        results.insert(0, out)
    return results


class ReviewKD(FeatureKD):
    """ReviewKD: knowledge review (Chen et al., 2021), fused student stages vs the teacher's.

    Per teacher branch: L = CE + beta * warm-up * (L_rgb [+ L_fre]), one ABF set per branch in
    ``self.adaptors[branch]``.

    Levels: the student's four stage maps and its pooled vector as a 1x1 map, against the branch's
    four teacher stage maps and pooled vector as a 1x1 map. Choices where kdbench differs from
    mdistiller's CIFAR code:

    - features are the post-ReLU stage maps that kdbench's students and teacher give (the teacher's
      after the RFAMs); mdistiller takes the student's post-ReLU maps (STU_PREACT False) but the
      teacher's pre-activation maps, which kdbench's backbones do not expose;
    - spatial sizes are read at run time, not set in the config (SHAPES / OUT_SHAPES): each ABF
      fuses at its own student level's size and resizes to the teacher map of that level; should
      a fused map and the teacher's still differ, the larger is adaptive-average-pooled;
    - mid width min(max_mid_channel, student pooled width) (the reference hard-codes 512);
    - warm-up: the loss weight is multiplied by min(epoch / warmup_epochs, 1) with the fractional
      epoch step / steps_per_epoch (0 at the first step; mdistiller uses the 1-based integer
      epoch) and warmup_epochs = warmup_frac * train epochs (mdistiller: 20 of 240 epochs), kept
      in ``run_info["warmup_epochs_effective"]``. The step count is a buffer, so a resumed run
      continues it; without ``on_fit_start`` there is no warm-up.
    """

    weight_key = "beta"
    stage_maps = 4

    def __init__(self, student: nn.Module, teacher: nn.Module, mode: str, **hparams) -> None:
        super().__init__(student, teacher, mode, **hparams)
        self.warmup_frac = float(hparams.get("warmup_frac", WARMUP_FRAC))
        max_mid = int(hparams.get("max_mid_channel", 512))
        s_chans = list(student.stage_channels)
        in_channels = [*s_chans, s_chans[-1]]
        for branch in self.branches:
            t_chans = list(branch_channels(teacher, branch))
            self.adaptors[branch] = build_abfs(in_channels, [*t_chans, t_chans[-1]], max_mid)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.steps_per_epoch: int | None = None
        self.warmup_epochs = 0.0

    def on_fit_start(self, train_cfg: dict, steps_per_epoch: int) -> None:
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.warmup_epochs = self.warmup_frac * float(train_cfg["epochs"])
        self.run_info["warmup_epochs_effective"] = self.warmup_epochs

    def warmup_factor(self) -> Tensor:
        """min(epoch / warmup_epochs, 1) at the current (fractional) epoch, a 0-d fp32 tensor on
        the step counter's device (no host sync)."""
        if self.steps_per_epoch is None or self.warmup_epochs <= 0:
            return torch.ones((), device=self.step.device)
        epoch = self.step.double() / self.steps_per_epoch
        return (epoch / self.warmup_epochs).clamp(max=1.0).float()

    def branch_loss(self, s: StudentOut, t: TeacherOut, branch: str) -> Tensor:
        targets = [*teacher_feats(t, branch), teacher_pooled(t, branch)[:, :, None, None]]
        student_levels = [*s.feats, s.pooled[:, :, None, None]]
        sizes = [(ft.shape[-2], ft.shape[-1]) for ft in targets]
        fused = review(self.adaptors[branch], student_levels, sizes)
        pairs = [match_spatial(fs, ft) for fs, ft in zip(fused, targets, strict=True)]
        return hcl_loss([fs for fs, _ in pairs], [ft for _, ft in pairs])

    def forward_train(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        factor = self.warmup_factor()
        logits, losses = super().forward_train(batch)
        for branch in self.branches:
            losses[f"loss_kd_{branch}"] = factor * losses[f"loss_kd_{branch}"]
        if self.training:
            self.step += 1
        return logits, losses
