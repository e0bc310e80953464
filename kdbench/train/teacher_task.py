"""Training task of the teacher: main CE + (dual teacher) the projectors' auxiliary CE
(docs/design.md decision 1: G_Tr / G_Tf are trained with the teacher through pooled linear
heads)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.models.teacher import TEACHER_FIELDS


class TeacherTask(nn.Module):
    """A Learner for the trainer: ``loss_ce`` on the teacher's head, and for the dual teacher
    ``loss_aux`` on both projector heads (a single teacher has no projector)."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher

    def forward_train(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        dual = self.teacher.kind == "dual"
        out = self.teacher(batch["image"], needs=TEACHER_FIELDS if dual else set())
        y = batch["label"]
        losses = {"loss_ce": F.cross_entropy(out.logits, y)}
        if dual:
            losses["loss_aux"] = sum(F.cross_entropy(logits, y)
                                     for logits in out.aux_logits.values())
        return out.logits, losses

    def after_backward(self, step: int) -> dict[str, float]:
        return {}

    def trainable_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"teacher": self.teacher})

    def predict(self, x: Tensor) -> Tensor:
        return self.teacher(x, needs=set()).logits
