"""WKD: a wavelet similarity loss on the stage maps (after Lu & Ebrahimi's wavelet similarity
loss for low-resolution face distillation; their paper gives no code, so this is kdbench's
reading, stated exactly).

For each of the four stages k, with S_k the student's map and T_k the teacher branch's:

    A_k(S_k) = BN(Conv1x1(S_k))                  the adaptor, to T_k's channels
    Ŝ_k      = bilinear(A_k(S_k), size of T_k)   only where the sizes differ (a smaller student)
    (LL, H)  = one level of the orthonormal Haar DWT (kdbench.models.wavelet) of each map,
               a side that is odd padded by repeating its last row / column first
    L_k      = (||LL(Ŝ_k) - LL(T_k)||² + w_high ||H(Ŝ_k) - H(T_k)||²) / numel(T_k)
    L_wkd    = mean over k of L_k,   the run's loss  CE + beta L_wkd  (per branch in both mode)

H holds the LH, HL and HH bands. The Haar transform keeps the energy, so with w_high = 1 and even
sides L_k is the mean squared error of Ŝ_k and T_k (FitNet's distance on every stage; an odd
side counts its repeated edge twice); the default w_high = 0
matches the low-frequency structure alone, which a smaller or degraded student can follow.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods.base import full_precision
from kdbench.methods.feature_kd import FeatureKD, branch_channels, teacher_feats
from kdbench.models.wavelet import haar_dwt


def _even(x: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, w % 2, 0, h % 2), mode="replicate") if h % 2 or w % 2 else x


@full_precision
def wavelet_similarity(s: Tensor, t: Tensor, w_high: float) -> Tensor:
    """L_k of the module doc for an adapted student map ``s`` and a teacher map ``t`` of the
    same shape."""
    ls, hs = haar_dwt(_even(s))
    lt, ht = haar_dwt(_even(t))
    loss = (ls - lt).pow(2).sum()
    if w_high:
        loss = loss + w_high * (hs - ht).pow(2).sum()
    return loss / t.numel()


class Adaptor(nn.Module):
    """1x1 convolution and BatchNorm to the teacher's channels."""

    def __init__(self, cs: int, ct: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cs, ct, 1, bias=False)
        self.bn = nn.BatchNorm2d(ct)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class WKD(FeatureKD):
    weight_key = "beta"
    stage_maps = 4

    def __init__(self, student, teacher, mode, **hparams):
        super().__init__(student, teacher, mode, **hparams)
        self.w_high = float(hparams["w_high"])
        for branch in self.branches:
            widths = branch_channels(teacher, branch)
            self.adaptors[branch] = nn.ModuleList(
                Adaptor(cs, ct) for cs, ct in zip(student.stage_channels[:4], widths[:4]))

    def adapted(self, s_map: Tensor, t_map: Tensor, adaptor: nn.Module) -> Tensor:
        """Ŝ_k: the student map at the teacher's channels and size."""
        x = adaptor(s_map)
        if x.shape[-2:] != t_map.shape[-2:]:
            x = F.interpolate(x, size=t_map.shape[-2:], mode="bilinear", align_corners=False)
        return x

    def branch_loss(self, s, t, branch):
        pairs = zip(s.feats[:4], teacher_feats(t, branch)[:4], self.adaptors[branch])
        losses = [wavelet_similarity(self.adapted(sm, tm, a), tm, self.w_high)
                  for sm, tm, a in pairs]
        return sum(losses) / len(losses)
