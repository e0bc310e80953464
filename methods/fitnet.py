"""FitNet: hint learning (Romero et al., 2015) on the middle stage, trained in one stage."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods.base import full_precision
from kdbench.methods.feature_kd import FeatureKD, branch_channels, match_spatial, teacher_feats

HINT_STAGE = 2  # of the four stages: ResNet layer3, Xception blocks 8-11


@full_precision
def fitnet_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between the regressed student hint and the teacher's."""
    return F.mse_loss(pred, target)


class ConvReg(nn.Module):
    """Regressor mapping the student map to the teacher's width: conv + BN + ReLU."""

    def __init__(self, cs: int, ct: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cs, ct, 3, padding=1)
        self.bn = nn.BatchNorm2d(ct)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class FitNet(FeatureKD):
    weight_key = "beta"
    stage_maps = 4

    def __init__(self, student, teacher, mode, **hparams):
        super().__init__(student, teacher, mode, **hparams)
        cs = student.stage_channels[HINT_STAGE]
        for branch in self.branches:
            self.adaptors[branch] = ConvReg(cs, branch_channels(teacher, branch)[HINT_STAGE])

    def branch_loss(self, s, t, branch):
        hint, target = match_spatial(s.feats[HINT_STAGE], teacher_feats(t, branch)[HINT_STAGE])
        return fitnet_loss(self.adaptors[branch](hint), target)
