"""Vanilla: the student trained with cross-entropy alone (no teacher)."""

from __future__ import annotations

from torch import Tensor

from kdbench.methods.base import Distiller


class Vanilla(Distiller):
    def forward_train(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.student(batch["image"])
        return out.logits, {"loss_ce": self.ce(out, batch)}
