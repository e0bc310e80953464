"""Training task of the dual-branch teacher: main CE + the projectors' auxiliary CE
(docs/design.md decision 1: G_Tr / G_Tf are trained with the teacher through pooled linear
heads)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.models.teacher import DualBranchTeacher


class TeacherTask(nn.Module):
    """A Learner for the trainer: ``loss_ce`` on the fused head, ``loss_aux`` on both
    projector heads."""

    def __init__(self, teacher: DualBranchTeacher) -> None:
        super().__init__()
        self.teacher = teacher

    def forward_train(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.teacher(batch["image"])
        y = batch["label"]
        aux = sum(F.cross_entropy(logits, y) for logits in out.aux_logits.values())
        return out.logits, {"loss_ce": F.cross_entropy(out.logits, y), "loss_aux": aux}

    def after_backward(self, step: int) -> dict[str, float]:
        return {}

    def trainable_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"teacher": self.teacher})

    def predict(self, x: Tensor) -> Tensor:
        return self.teacher(x, needs=set()).logits
