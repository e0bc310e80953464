"""KD: knowledge distillation with softened logits (Hinton et al., 2015), as RepDistiller's
``distiller_zoo/KD.py`` (DistillKL) with mdistiller's default weights (CE 0.1, KD 0.9, T 4)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.methods.base import Distiller, full_precision
from kdbench.methods.feature_kd import BRANCHES


@full_precision
def kd_loss(logits_s: Tensor, logits_t: Tensor, temperature: float) -> Tensor:
    """sum KL(softmax(t / T) || softmax(s / T)) * T**2 / batch: the batch mean of the per-sample
    KL divergence, scaled by T**2 so that its gradient keeps the size of the CE gradient."""
    log_p_s = F.log_softmax(logits_s / temperature, dim=1)
    p_t = F.softmax(logits_t / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") * temperature**2 / logits_s.shape[0]


class KD(Distiller):
    """KD: knowledge distillation with softened logits (Hinton et al., 2015).

    L = ce_weight * CE + alpha * (KD(s, aux_rgb) [+ KD(s, aux_freq) in ``both`` mode]).

    Targets: the logits of the teacher's auxiliary per-branch heads (``aux_logits``), not its fused
    ``logits``, which already mix in the frequency branch. ``rgb`` mode distils from the RGB
    branch's head only; ``both`` mode adds the frequency branch's head as a second target, each
    its own KD term (loss_kd_rgb, loss_kd_freq).
    """

    def __init__(self, student, teacher, mode: str, **hparams) -> None:
        super().__init__(student, teacher, mode, **hparams)
        self.branches = BRANCHES[mode]
        self.temperature = float(hparams["temperature"])
        self.alpha = float(hparams["alpha"])
        self.ce_weight = float(hparams["ce_weight"])

    def teacher_needs(self) -> set[str]:
        # the auxiliary heads are computed from the projector outputs
        return {f"{branch}_proj" for branch in self.branches}

    def forward_train(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        s = self.student(batch["image"])
        t = self.teacher_forward(batch)
        losses = {"loss_ce": self.ce_weight * self.ce(s, batch)}
        for branch in self.branches:
            target = t.aux_logits[branch]
            losses[f"loss_kd_{branch}"] = self.alpha * kd_loss(s.logits, target, self.temperature)
        return s.logits, losses
