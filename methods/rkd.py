"""RKD: relational knowledge distillation (Park et al., 2019) on the pooled vectors, as
RepDistiller's ``distiller_zoo/RKD.py`` (RKDLoss: distance + angle terms)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.methods.base import full_precision
from kdbench.methods.feature_kd import FeatureKD, teacher_pooled


def pairwise_distance(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between the rows of e [B, D]: squared distances clamped at ``eps``,
    square root, zero diagonal."""
    sq = e.pow(2).sum(dim=1)
    dist = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.T).clamp(min=eps).sqrt()
    return dist * (1 - torch.eye(len(e), dtype=dist.dtype, device=dist.device))


def _normalised_distance(e: Tensor) -> Tensor:
    d = pairwise_distance(e)
    return d / d[d > 0].mean()


def _angles(e: Tensor) -> Tensor:
    """cos of the angle at e_i between e_j and e_k, for all (i, j, k), flattened."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [i, j] = e_j - e_i
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


@full_precision
def rkd_loss(fs: Tensor, ft: Tensor, w_dist: float = 25.0, w_angle: float = 50.0) -> Tensor:
    """w_dist * smooth_l1(psi_D(s), psi_D(t)) + w_angle * smooth_l1(psi_A(s), psi_A(t)) on the
    flattened vectors; psi_D: pairwise distances over the mean of the positive ones, psi_A: the
    cosines of the angles of every triplet. The teacher side carries no gradient."""
    student, teacher = fs.flatten(1), ft.flatten(1).detach()
    loss_d = F.smooth_l1_loss(_normalised_distance(student), _normalised_distance(teacher))
    loss_a = F.smooth_l1_loss(_angles(student), _angles(teacher))
    return w_dist * loss_d + w_angle * loss_a


class RKD(FeatureKD):
    """RKD: relational KD (Park et al., 2019), distances and angles of the pooled vectors.

    beta * rkd_loss(student pooled, teacher pooled) per teacher branch (no adaptor)."""

    weight_key = "beta"

    def branch_loss(self, s, t, branch):
        return rkd_loss(s.pooled, teacher_pooled(t, branch), float(self.hparams["w_dist"]),
                        float(self.hparams["w_angle"]))
