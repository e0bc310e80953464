"""OFD: a comprehensive overhaul of feature distillation (Heo et al., ICCV 2019) on every stage.

The student's pre-ReLU stage maps, through a 1x1 conv + BN connector, regress the teacher's
pre-ReLU maps raised to a per-channel margin (the expected value of the teacher's negative
responses), with a partial L2 distance that ignores a student response below a non-positive
target."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kdbench.errors import KdbenchError
from kdbench.methods.base import full_precision
from kdbench.methods.feature_kd import FeatureKD, branch_channels, match_spatial, preact_problem
from kdbench.models.outputs import StudentOut, TeacherOut

# the reference divides the summed distance by the batch size and by a constant: 1000 for
# CIFAR-100 (32 px), 10000 for ImageNet (224 px); see the OFD class docstring for the choice
NORM = 10000.0
MIN_CDF = 0.001  # below it, the reference's margin is -3 std (the closed form is unstable)


def bn_margin(bn: nn.BatchNorm2d) -> Tensor:
    """Per-channel margin [C] from the BatchNorm feeding a pre-activation: with s = |gamma| and
    m = beta, E[x | x < 0] of N(m, s^2) = m - s * pdf(m / s) / Phi(-m / s) where
    Phi(-m / s) > 0.001, else -3 s (the reference's ``get_margin_from_BN``)."""
    weight = bn.weight if bn.weight is not None else torch.ones(bn.num_features)
    bias = bn.bias if bn.bias is not None else torch.zeros(bn.num_features)
    # float64; a zero gamma (constant response) gives the limit: m if m < 0, else 0
    s = weight.detach().double().abs().clamp_min(1e-12)
    m = bias.detach().double()
    cdf = torch.special.ndtr(-m / s)
    pdf = torch.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
    margin = torch.where(cdf > MIN_CDF, m - s * pdf / cdf.clamp_min(MIN_CDF), -3 * s)
    return margin.float()


@full_precision
def ofd_loss(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """The reference's ``distillation_loss``, summed over every element: the target raised
    to the margin ([1, C, 1, 1]), then (source - target)^2 where the source is above the
    target or the target is positive (a source below a non-positive target costs nothing)."""
    target = torch.max(target, margin)
    mask = (source > target) | (target > 0)
    return ((source - target).pow(2) * mask).sum()


def stage_weighted(stage_losses: list[Tensor], batch_size: int, norm: float = NORM) -> Tensor:
    """The reference's total: sum_i loss_i / 2**(n - i - 1) (the last stage weighs most),
    divided by the batch size and by ``norm``."""
    n = len(stage_losses)
    total = sum(loss / 2 ** (n - i - 1) for i, loss in enumerate(stage_losses))
    return total / batch_size / norm


def connector(cs: int, ct: int) -> nn.Sequential:
    """1x1 conv (Cs -> Ct, no bias) + BN(Ct), initialised as the reference's
    ``build_feature_connector``: conv weights N(0, 2 / (k * k * Ct)), BN weight 1, bias 0."""
    conv, bn = nn.Conv2d(cs, ct, 1, bias=False), nn.BatchNorm2d(ct)
    n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / n))
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


class OFD(FeatureKD):
    """OFD: overhaul of feature distillation (Heo et al., 2019) on the pre-ReLU stage maps.

    On the four stages, per branch: L = CE + beta * (L_rgb [+ L_fre]).

    Choices:

    - Targets are the teacher branch's stage maps before their final ReLU and before the RFAMs
      (``TeacherOut.rgb_preact`` / ``freq_preact``); the student's are ``student(x,
      preact=True).preact``.
    - The margin of stage i comes from ``teacher.<branch>_branch.preact_bns[i]``: for ResNets
      the last block's bn2 (the reference's choice for ResNets; the pre-activation is
      bn2(.) + shortcut), for Xception the last BatchNorm of the stage's last block (blocks 3,
      7, 11: rep's last BN before rep(x) + skip) and bn4 for the exit stage. Margins are
      computed once at construction and kept as buffers (``margin_<branch>_<i>``).
    - ``both``: separate connectors and margins per branch.
    - Maps of different sizes: the larger is average-pooled to the smaller after the connector.
    - Normalisation: sum over stages of loss_i / 2**(n - i - 1), / batch size / 10000 (the
      reference's ImageNet constant, not CIFAR's 1000): the paper preset's teacher (Xception at
      299 px: 728 x 19 x 19 maps, 2048 x 10 x 10 at the end) gives a stage-weighted element
      count (about 4.3e5) like the ImageNet ResNet-152 teacher's at 224 px (4.0e5), against
      4.9e4 for the CIFAR WRN teacher at 32 px. beta = 1 is then the reference's weighting
      (mdistiller's FEAT_WEIGHT 1e-4 on its batch-mean loss); at 64 px with thin ResNets the
      term is about 100 times smaller and beta can be raised.
    """

    weight_key = "beta"
    stage_maps = 4

    def __init__(self, student, teacher, mode, **hparams):
        super().__init__(student, teacher, mode, **hparams)
        self.num_stages = len(student.stage_channels)
        sides = (getattr(student, "backbone", student),
                 *(getattr(teacher, f"{b}_branch") for b in self.branches))
        for side in sides:
            if preact_problem(side):
                raise KdbenchError(f"ofd reads pre-activation stage maps, which backbone "
                                   f"{side.name} does not give ({preact_problem(side)}); pick "
                                   "another backbone or method")
        for branch in self.branches:
            pairs = zip(student.stage_channels, branch_channels(teacher, branch), strict=True)
            self.adaptors[branch] = nn.ModuleList(connector(cs, ct) for cs, ct in pairs)
            bns = getattr(teacher, f"{branch}_branch").preact_bns
            if len(bns) != self.num_stages:
                raise ValueError(f"the teacher's {branch} branch gives {len(bns)} pre-activation "
                                 f"BatchNorms for {self.num_stages} stages")
            for i, bn in enumerate(bns):
                self.register_buffer(f"margin_{branch}_{i}", bn_margin(bn).view(1, -1, 1, 1))

    def teacher_needs(self) -> set[str]:
        return {f"{branch}_preact" for branch in self.branches}

    def margins(self, branch: str) -> list[Tensor]:
        """The branch's per-stage margins, each [1, Ct, 1, 1]."""
        return [getattr(self, f"margin_{branch}_{i}") for i in range(self.num_stages)]

    def branch_loss(self, s: StudentOut, t: TeacherOut, branch: str) -> Tensor:
        targets = t.rgb_preact if branch == "rgb" else t.freq_preact
        losses = []
        for conn, fs, ft, margin in zip(self.adaptors[branch], s.preact, targets,
                                        self.margins(branch), strict=True):
            source, target = match_spatial(conn(fs), ft.detach())
            losses.append(ofd_loss(source, target, margin))
        return stage_weighted(losses, s.logits.shape[0])

    def forward_train(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        s = self.student(batch["image"], preact=True)
        t = self.teacher_forward(batch)
        losses = {"loss_ce": self.ce(s, batch)}
        for branch in self.branches:
            losses[f"loss_kd_{branch}"] = self.weight * self.branch_loss(s, t, branch)
        return s.logits, losses
