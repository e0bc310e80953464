"""A single-branch teacher as a detector to prune (as Karathanasis et al. prune the detector
itself): its timm classifier alone, behind the student interface, so that pruning, fine-tuning
with cross-entropy, testing, export and quantization treat it as any student."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdbench.errors import KdbenchError
from kdbench.models.outputs import StudentOut

DETECTOR = "single_teacher"  # a child's metrics: what its best.pt holds


class Classifier(nn.Module):
    """A timm classifier returning :class:`StudentOut` (logits only; a one-logit head z
    becomes the two-class logits (0, z), as the single-branch teacher reads it)."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model, self.name = model, name

    def forward(self, x: Tensor) -> StudentOut:
        logits = self.model(x)
        if logits.shape[1] == 1:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        return StudentOut(logits=logits, feats=[], pooled=logits)


def architecture(config: dict[str, Any]) -> Classifier:
    """The classifier of the teacher settings ``config['teacher']``, fresh weights."""
    from kdbench.models.teacher_build import architecture_teacher

    teacher = architecture_teacher(config["teacher"])
    return Classifier(teacher.model, teacher.name)


def load_teacher(folder: Path, metrics: dict[str, Any]) -> Classifier:
    """The finished single-branch teacher of ``folder`` (trained here: its best.pt; loaded
    from ``teacher.checkpoint``: that file) as a :class:`Classifier`; one line for a
    dual-branch teacher or missing weights."""
    from kdbench.compress.settings import check_prunable_teacher
    from kdbench.models.teacher_build import architecture_teacher, build_teacher
    from kdbench.train.teacher_task import TeacherTask
    from kdbench.train.trainer import load_checkpoint

    check_prunable_teacher(folder, metrics)
    config = metrics["config"]
    checkpoint = config["teacher"].get("checkpoint")
    if checkpoint:
        if not Path(checkpoint).expanduser().is_file():
            raise KdbenchError(f"{folder} was loaded from {checkpoint}, which is gone; give "
                               "that file back to prune this teacher")
        teacher = build_teacher(config)
    else:
        if not (Path(folder) / "best.pt").is_file():
            raise KdbenchError(f"{folder} has no best.pt (checkpoints are not committed); "
                               "train the teacher again with `kdbench run` on this machine")
        teacher = architecture_teacher(config["teacher"])
        TeacherTask(teacher).load_state_dict(load_checkpoint(Path(folder) / "best.pt"))
    return Classifier(teacher.model, teacher.name).eval()


def as_parent(metrics: dict[str, Any]) -> dict[str, Any]:
    """A teacher's metrics named as a parent run's (student, method, mode, seed)."""
    return {**metrics, "student": metrics["backbone"], "method": "teacher", "variant": "",
            "mode": "none", "seed": int(metrics.get("seed") or 0)}
