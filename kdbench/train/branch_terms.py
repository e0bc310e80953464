"""The two distillation terms of a ``both``-mode run, as the engine sees them: their weighting
(the ``both_weighting`` hyper-parameter every method with a both mode has) and the cosine of
their gradients at the student's stage maps (the trace ``gradcos.jsonl``), whatever the method.

A method names its per-branch distillation terms ``loss_kd_rgb`` and ``loss_kd_freq`` (the
weighted terms of ``forward_train``); the engine reads nothing else of it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from kdbench.config import GRADCOS_TRACE
from kdbench.errors import KdbenchError

log = logging.getLogger(__name__)

BRANCH_TERMS = ("loss_kd_rgb", "loss_kd_freq")
TRACE = GRADCOS_TRACE  # <run>/gradcos.jsonl


def branch_factor(learner: Any) -> float:
    """The factor of each branch term: 0.5 for a both-mode learner with
    ``both_weighting: mean`` (the total distillation weight then equals rgb mode's), else 1."""
    hparams = getattr(learner, "hparams", None) or {}
    mean = getattr(learner, "mode", None) == "both" and hparams.get("both_weighting") == "mean"
    return 0.5 if mean else 1.0


def weigh_branches(losses: dict[str, Tensor], factor: float, label: str
                   ) -> dict[str, Tensor]:
    """``losses`` with each branch term times ``factor`` (unchanged at 1)."""
    if factor == 1.0:
        return losses
    missing = [t for t in BRANCH_TERMS if t not in losses]
    if missing:
        raise KdbenchError(
            f"{label}: both_weighting=mean weighs the terms {' and '.join(BRANCH_TERMS)}, but "
            f"the method returned no {missing[0]!r} (it returned {', '.join(losses)}); name "
            "its per-branch distillation terms so, or leave both_weighting at sum")
    return {k: v * factor if k in BRANCH_TERMS else v for k, v in losses.items()}


def per_sample_cosine(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """cos(a_i, b_i) of each row of two [B, ...] tensors, in fp32."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(eps)


class BranchCosine:
    """Every ``every`` steps of a ``both``-mode distiller: the cosine between the gradients of
    its RGB and its frequency term with respect to the student's last shared stage, i.e. the
    deepest stage map that both terms' gradients reach with a non-zero gradient (the last map
    for logit or last-stage methods, an earlier one for a method that reads only that), per
    sample and averaged over the batch. With two classes a logit term's gradient at that map
    is the head's weight difference times a signed scalar per sample, so a logit method's
    per-sample cosine is +-1 and its mean is 2 x (share of samples where the two teachers
    pull the same way) - 1. Recorded as ``{step, epoch, stage, cos, norm_ratio}`` in the
    learner's trace ``gradcos`` (norm_ratio: mean |grad L_fre| / |grad L_rgb|).

    The gradients are taken with ``torch.autograd.grad`` before the step's backward pass: they
    reach no parameter's gradient, so the run's numbers are as without the trace (tested).
    They do fire the ``retain_grad`` of a tensor in the graph, which accumulates: a method that
    reads a gradient of its own (for a rotation update, say) takes it with a tensor hook that
    assigns (``Tensor.register_hook``), so the backward pass's value is the one it keeps.
    """

    def __init__(self, learner: nn.Module, every: int) -> None:
        student = getattr(learner, "student", None)
        traces = getattr(learner, "traces", None)
        self.active = (every > 0 and getattr(learner, "mode", None) == "both"
                       and isinstance(student, nn.Module) and isinstance(traces, dict))
        self.every, self.epoch = every, 0  # the trainer sets the epoch (from 1)
        self.maps: list[Tensor] | None = None
        self.handle = None
        if self.active:
            self.rows: list[dict[str, Any]] = traces.setdefault(TRACE, [])
            self.handle = student.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: Any, out: Any) -> None:
        feats = getattr(out, "feats", None)
        if module.training and torch.is_grad_enabled() and feats:
            self.maps = list(feats)

    def record(self, losses: dict[str, Tensor], step: int) -> None:
        """A record at every ``every``-th step (the maps of the step's forward pass)."""
        maps, self.maps = self.maps, None
        if not self.active or step % self.every or maps is None:
            return
        if any(t not in losses or not losses[t].requires_grad for t in BRANCH_TERMS):
            return
        grads = [torch.autograd.grad(losses[t], maps, retain_graph=True, allow_unused=True)
                 for t in BRANCH_TERMS]
        for i in reversed(range(len(maps))):
            g_rgb, g_fre = grads[0][i], grads[1][i]
            if g_rgb is None or g_fre is None or not (bool(g_rgb.any()) and bool(g_fre.any())):
                continue  # a term that does not reach this map (or vanishes on it, e.g. AT's
                # normalised attention of a 1 x 1 map): the next stage up
            with torch.no_grad():
                ratio = (g_fre.flatten(1).float().norm(dim=1)
                         / g_rgb.flatten(1).float().norm(dim=1).clamp_min(1e-12))
                self.rows.append({"step": step, "epoch": self.epoch,
                                  "stage": i + 1,
                                  "cos": per_sample_cosine(g_rgb, g_fre).mean(),
                                  "norm_ratio": ratio.mean()})
            return

    def close(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
