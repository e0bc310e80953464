"""SP: similarity-preserving KD (Tung & Mori, 2019) on the last stage."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.methods.base import full_precision
from kdbench.methods.feature_kd import FeatureKD, teacher_feats


def similarity(f: Tensor) -> Tensor:
    """G = F F^T over the flattened maps, each row L2-normalised."""
    flat = f.flatten(1)
    return F.normalize(flat @ flat.T, dim=1)


@full_precision
def sp_loss(fs: Tensor, ft: Tensor) -> Tensor:
    """||G_t - G_s||_F^2 / B^2."""
    b = fs.shape[0]
    return (similarity(ft) - similarity(fs)).pow(2).sum() / (b * b)


class SP(FeatureKD):
    weight_key = "beta"

    def branch_loss(self, s, t, branch):
        return sp_loss(s.feats[-1], teacher_feats(t, branch)[-1])
