"""PKT: probabilistic knowledge transfer (Passalis & Tefas, 2018) on the pooled vectors."""

from __future__ import annotations

import torch
from torch import Tensor

from kdbench.methods.base import full_precision
from kdbench.methods.feature_kd import FeatureKD, teacher_pooled


def _conditional(x: Tensor, eps: float) -> Tensor:
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    sim = (x @ x.T + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


@full_precision
def pkt_loss(fs: Tensor, ft: Tensor, eps: float = 1e-7) -> Tensor:
    """mean(P_t * log((P_t + eps) / (P_s + eps))), P = row-normalised (cos + 1) / 2."""
    ps, pt = _conditional(fs.flatten(1), eps), _conditional(ft.flatten(1), eps)
    return torch.mean(pt * torch.log((pt + eps) / (ps + eps)))


class PKT(FeatureKD):
    weight_key = "beta"

    def branch_loss(self, s, t, branch):
        return pkt_loss(s.pooled, teacher_pooled(t, branch))
