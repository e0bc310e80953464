"""VID: variational information distillation (Ahn et al., 2019) on every stage."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods.base import full_precision
from kdbench.methods.feature_kd import FeatureKD, branch_channels, match_spatial, teacher_feats


@full_precision
def vid_loss(mean: Tensor, var: Tensor, target: Tensor) -> Tensor:
    """mean(0.5 * ((mean - target)**2 / var + log var)); var broadcasts per channel."""
    return torch.mean(0.5 * ((mean - target).pow(2) / var + torch.log(var)))


class VIDRegressor(nn.Module):
    """1x1 conv(Cs->Ct), ReLU, 1x1, ReLU, 1x1 (no bias) and a per-channel variance
    softplus(p) + eps with p set so the variance starts at ``init_var``."""

    def __init__(self, cs: int, ct: int, init_var: float = 5.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(cs, ct, 1, bias=False), nn.ReLU(),
            nn.Conv2d(ct, ct, 1, bias=False), nn.ReLU(),
            nn.Conv2d(ct, ct, 1, bias=False),
        )
        self.eps = eps
        self.log_scale = nn.Parameter(torch.full((ct,), math.log(math.expm1(init_var - eps))))

    def variance(self) -> Tensor:
        return (F.softplus(self.log_scale) + self.eps).view(1, -1, 1, 1)

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        s, t = match_spatial(s, t)
        return vid_loss(self.regressor(s), self.variance(), t)


class VID(FeatureKD):
    weight_key = "beta"
    stage_maps = 4

    def __init__(self, student, teacher, mode, **hparams):
        super().__init__(student, teacher, mode, **hparams)
        for branch in self.branches:
            pairs = zip(student.stage_channels, branch_channels(teacher, branch), strict=True)
            self.adaptors[branch] = nn.ModuleList(
                VIDRegressor(cs, ct, hparams.get("init_var", 5.0)) for cs, ct in pairs
            )

    def branch_loss(self, s, t, branch):
        regs = self.adaptors[branch]
        return sum(reg(fs, ft) for reg, fs, ft in
                   zip(regs, s.feats, teacher_feats(t, branch), strict=True))
