"""The Distiller interface: the one thing a distillation method implements."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from kdbench.errors import KdbenchError
from kdbench.models.outputs import StudentOut, TeacherOut, from_batch
from kdbench.registry import BOTH_HPARAMS

MODES = ("none", "rgb", "both")


def full_precision(loss: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Decorate a loss function: it runs in fp32 with autocast off, its tensor arguments (and
    tensors in list arguments) cast to fp32. Under bf16 mixed precision the models run in bf16,
    but normalisations, Gram matrices and distances in bf16 lose 2-3 digits."""

    def cast(x: Any) -> Any:
        if isinstance(x, Tensor) and x.is_floating_point():
            return x.float()
        if isinstance(x, (list, tuple)):
            return type(x)(cast(v) for v in x)
        return x

    @functools.wraps(loss)
    def wrapper(*args: Any, **kwargs: Any) -> Tensor:
        device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        if not torch.is_autocast_enabled(device):
            return loss(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return loss(*cast(args), **{k: cast(v) for k, v in kwargs.items()})

    return wrapper


class Distiller(nn.Module):
    """Wraps a student (trained) and a frozen teacher (may be None for teacher-free methods).

    Subclasses implement ``forward_train`` returning ``(logits, {name: weighted loss})``; the
    trainer sums the terms, calls backward once, then ``after_backward``, then steps.
    """

    # the stage maps the method reads from each side (0: none; 4: every stage); a backbone
    # that gives fewer is refused in one line
    stage_maps = 0

    def __init__(self, student: nn.Module, teacher: nn.Module | None, mode: str, **hparams):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if teacher is not None and self.stage_maps:
            for side in (student, teacher):
                if len(side.stage_channels) < self.stage_maps:
                    raise KdbenchError(
                        f"{type(self).__name__.lower()} reads {self.stage_maps} stage maps, "
                        f"but backbone {getattr(side, 'name', type(side).__name__)} gives "
                        f"{len(side.stage_channels)}; pick "
                        "another backbone, or a method that reads the pooled vector or logits")
        self.student = student
        self.mode = mode
        self.hparams = hparams
        # kept out of the module tree: the teacher is frozen and never saved with the student
        self._teacher = [teacher] if teacher is not None else []
        # per-step records the trainer writes to <run>/<name>.jsonl every epoch
        self.traces: dict[str, list[dict]] = {}
        # facts about the run the method learns while training, kept in metrics.json;
        # `<hparam>_effective` = the value really used (sweep tables show it if it differs)
        self.run_info: dict[str, object] = {}
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    @classmethod
    def ignored_hparams(cls, mode: str) -> set[str]:
        """Hyper-parameters that cannot change this mode's result (e.g. a logging interval):
        they neither name a run's folder nor make a finished run count as different. The
        engine's both-mode settings (:data:`kdbench.registry.BOTH_HPARAMS`) are ignored in the
        other modes."""
        return set() if mode == "both" else set(BOTH_HPARAMS)

    def teacher_needs(self) -> set[str]:
        """Teacher fields this method reads (subset of rgb, freq, rgb_proj, freq_proj,
        rgb_preact, freq_preact); only those are computed and cached."""
        return set()

    def teacher_forward(self, batch: dict[str, Tensor]) -> TeacherOut:
        """The frozen teacher's output for the batch (only the fields this method needs): the
        engine's cached outputs when the batch carries them, computed otherwise."""
        cached = from_batch(batch)
        if cached is not None:
            return cached
        with torch.no_grad():
            return self.teacher(batch["image"], needs=self.teacher_needs())

    def on_train_data(self, labels: Tensor) -> None:
        """Optional: called once before training, before the optimizer takes the trainable
        parameters, with the labels of the training frames in the order of a batch's ``pos``
        (their number is the training set's size), e.g. to build a memory bank over them."""

    def on_fit_start(self, train_cfg: dict, steps_per_epoch: int) -> None:
        """Optional: called once before training (and before a resumed checkpoint is loaded),
        e.g. to build an optimizer of the method's own."""

    def forward_train(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def after_backward(self, step: int) -> dict[str, float]:
        """Optional extra update after the backward pass; returns scalars to log."""
        return {}

    def trainable_modules(self) -> nn.ModuleDict:
        """Modules whose parameters the trainer's optimizer owns (student + adaptors)."""
        return nn.ModuleDict({"student": self.student})

    def predict(self, x: Tensor) -> Tensor:
        """Inference uses the student alone."""
        return self.student(x).logits

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def ce(self, out: StudentOut, batch: dict[str, Tensor]) -> Tensor:
        """Cross-entropy of the student's logits against the labels."""
        return nn.functional.cross_entropy(out.logits, batch["label"])
