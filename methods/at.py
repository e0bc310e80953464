"""AT: attention transfer (Zagoruyko & Komodakis, 2017) on every stage."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.methods.base import full_precision
from kdbench.methods.feature_kd import FeatureKD, match_spatial, teacher_feats


def attention_map(f: Tensor) -> Tensor:
    """a(f): channel mean of f**2, flattened, L2-normalised per sample."""
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


@full_precision
def at_loss(fs: list[Tensor], ft: list[Tensor]) -> Tensor:
    """sum over stage pairs of mean((a(f_s) - a(f_t))**2); the larger map is pooled first."""
    total = fs[0].new_zeros(())
    for s, t in zip(fs, ft, strict=True):
        s, t = match_spatial(s, t)
        total = total + (attention_map(s) - attention_map(t)).pow(2).mean()
    return total


class AT(FeatureKD):
    weight_key = "beta"
    stage_maps = 4

    def branch_loss(self, s, t, branch):
        return at_loss(s.feats, teacher_feats(t, branch))
