"""NST: neuron selectivity transfer (Huang & Wang, 2017, "Like What You Like") on every stage,
as RepDistiller's ``distiller_zoo/NST.py`` (NSTLoss, squared-MMD with a polynomial kernel)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.methods.base import full_precision
from kdbench.methods.feature_kd import FeatureKD, match_spatial, teacher_feats


def poly_kernel(a: Tensor, b: Tensor) -> Tensor:
    """k[n, i, j] = <b[n, i], a[n, j]>**2 for a [B, Ca, HW], b [B, Cb, HW]: the same values as
    ``(a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2)``, without the [B, Cb, Ca, HW] product."""
    return torch.bmm(b, a.transpose(1, 2)).pow(2)


def _neurons(f: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, HW], each channel's spatial pattern L2-normalised."""
    return F.normalize(f.flatten(2), dim=2)


@full_precision
def nst_loss(fs: list[Tensor], ft: list[Tensor]) -> Tensor:
    """sum over stage pairs of mean k(t, t) + mean k(s, s) - 2 mean k(s, t) (the first term
    detached); the larger map is pooled first, the channel counts may differ."""
    total = fs[0].new_zeros(())
    for s, t in zip(fs, ft, strict=True):
        s, t = match_spatial(s, t)
        s, t = _neurons(s), _neurons(t)
        total = total + (poly_kernel(t, t).mean().detach() + poly_kernel(s, s).mean()
                         - 2 * poly_kernel(s, t).mean())
    return total


class NST(FeatureKD):
    """NST: neuron selectivity transfer (Huang & Wang, 2017) on every stage.

    beta * nst_loss over the four stage maps per teacher branch (no adaptor)."""

    weight_key = "beta"
    stage_maps = 4

    def branch_loss(self, s, t, branch):
        return nst_loss(s.feats, teacher_feats(t, branch))
