"""Shared shape of the five baseline feature distillers: a pure loss on (student, teacher)
features, applied to the RGB branch and, in ``both`` mode, to the frequency branch too
(docs/design.md decision 7: L = CE + w * (L_rgb + L_fre), separate adaptors per branch)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.methods.base import Distiller
from kdbench.models.outputs import StudentOut, TeacherOut

BRANCHES = {"rgb": ("rgb",), "both": ("rgb", "freq")}


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the larger of two maps to the smaller's spatial size."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    h, w = min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1])
    return F.adaptive_avg_pool2d(a, (h, w)), F.adaptive_avg_pool2d(b, (h, w))


class FeatureKD(Distiller):
    """Subclasses set ``weight_key`` and implement ``branch_loss(s, t, branch)``; adaptors
    that the optimizer must own go in ``self.adaptors`` (one entry per branch)."""

    weight_key = "weight"

    def __init__(self, student, teacher, mode: str, **hparams) -> None:
        super().__init__(student, teacher, mode, **hparams)
        self.branches = BRANCHES[mode]
        self.weight = float(hparams[self.weight_key])
        self.adaptors = nn.ModuleDict()

    def teacher_needs(self) -> set[str]:
        return set(self.branches)

    def branch_loss(self, s: StudentOut, t: TeacherOut, branch: str) -> Tensor:
        raise NotImplementedError

    def forward_train(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        s = self.student(batch["image"])
        t = self.teacher_forward(batch)
        losses = {"loss_ce": self.ce(s, batch)}
        for branch in self.branches:
            losses[f"loss_kd_{branch}"] = self.weight * self.branch_loss(s, t, branch)
        return s.logits, losses

    def trainable_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"student": self.student, "adaptors": self.adaptors})


def branch_channels(teacher: nn.Module, branch: str) -> list[int]:
    """The stage widths of the teacher's ``branch`` (a teacher that gives one list for both
    branches: its ``stage_channels``)."""
    widths = getattr(teacher, "branch_channels", None)
    return list(widths(branch)) if widths is not None else list(teacher.stage_channels)


def preact_problem(module: nn.Module) -> str | None:
    """Why a backbone or teacher branch gives no pre-activation stage maps (None: it does)."""
    problem = getattr(module, "preact_problem", None)
    return problem() if problem is not None else None


def teacher_feats(t: TeacherOut, branch: str) -> list[Tensor]:
    return t.rgb if branch == "rgb" else t.freq


def teacher_pooled(t: TeacherOut, branch: str) -> Tensor:
    return t.rgb_pooled if branch == "rgb" else t.freq_pooled
