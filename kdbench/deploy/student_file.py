"""A trained student on its own: loaded from a run folder or a checkpoint file, with what
inference needs to know (input size, face crop size, frames per video, face detector and the
decision threshold)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdbench.errors import KdbenchError
from kdbench.models.students import Student, create_student

DEFAULT_SIZE, DEFAULT_FRAMES, DEFAULT_DETECTOR = 64, 8, "dlib"  # a bare checkpoint's defaults
NO_THRESHOLD_NOTE = ("this run records no validation threshold (it predates them): 0.5 is used; "
                     "train it again with --restart to choose one on its validation split")
STUDENT_FILE = "student.pt"  # <run>/deploy/student.pt: the student's weights alone


class FakeProbability(nn.Module):
    """A student's inference path: images in the run's normalisation ([-1, 1], NCHW float) ->
    the fake probability of each image, shape [B]."""

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.student = student

    def forward(self, image: Tensor) -> Tensor:
        return torch.softmax(self.student(image).logits.float(), dim=1)[:, 1]


@dataclass
class DeployedStudent:
    """A student in eval mode and how its inputs are made. ``crop_size``: the side of the face
    crops of its dataset's preparation (resized to ``size`` as in training)."""

    model: Student
    backbone: str
    size: int
    crop_size: int
    frames: int
    detector: str
    threshold: float
    notes: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    reencode: str = "none"  # as the preparation re-encoded each image (prepare --reencode)
    # a cross-resolution student's blur, JPEG and noise, applied to its (small) input before
    # the model, which is exported alone
    pre: nn.Module | None = None

    def probability(self) -> FakeProbability:
        return FakeProbability(self.model).eval()


def _student_state(state: Any, path: Path) -> dict[str, Tensor]:
    """The student's parameters from a run's best.pt (the learner's state: ``student.*``), a
    ``deploy/student.pt`` or a bare student state dict."""
    if isinstance(state, dict) and "learner" in state:  # a last.pt
        state = state["learner"]
    if not isinstance(state, dict) or not state:
        raise KdbenchError(f"{path} holds no state dict; give a run's best.pt or a student's "
                           "state dict")
    prefix = "student."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if any(k.startswith(prefix) for k in state):  # a cross-resolution run: its degradation
        raise KdbenchError(f"{path} is the checkpoint of a student that reads a degraded input "
                           "(student.size, blur, JPEG, noise), which a bare checkpoint does "
                           "not record; give its run with --run instead")
    return state


def load_weights(student: Student, path: Path) -> None:
    """Load a checkpoint into ``student``; a one-line error when it does not fit."""
    from kdbench.train.trainer import load_checkpoint

    if not Path(path).is_file():
        raise KdbenchError(f"checkpoint {path} not found; give a run's best.pt, a "
                           f"deploy/{STUDENT_FILE} or a student state dict")
    state = _student_state(load_checkpoint(Path(path)), Path(path))
    try:
        result = student.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a parameter of another shape
        first = str(exc).strip().splitlines()[-1].strip()
        raise KdbenchError(f"{path} does not fit the {student.name} student ({first}); "
                           "check --student") from None
    if result.missing_keys or result.unexpected_keys:
        raise KdbenchError(
            f"{path} does not fit the {student.name} student ({len(result.missing_keys)} "
            f"parameters missing, {len(result.unexpected_keys)} unexpected, e.g. "
            f"{(result.missing_keys or result.unexpected_keys)[0]}); check --student")


def from_run(run_dir: Path) -> DeployedStudent:
    """The student of a finished run at its best validation epoch, with the run's input size,
    frames per video, preparation (detector, crop size) and validation threshold."""
    from kdbench.train.evaluate import load_student

    run_dir = Path(run_dir)
    student, metrics = load_student(run_dir)
    data = dict(metrics["config"]["data"])
    from kdbench.models.degrade import DegradedStudent

    pre = None
    if isinstance(student, DegradedStudent):  # cross-resolution: the small model alone
        from dataclasses import replace as with_changes

        from kdbench.models.degrade import Degrade

        d = student.degrade.d
        if d.blur or d.jpeg or d.noise:  # after the resize, before the model
            pre = Degrade(with_changes(d, size=None)).eval()
        student, data["size"] = student.student, d.size or data["size"]
    prepared = metrics.get("prepared") or {}
    notes = []
    threshold = metrics.get("threshold")
    if threshold is None:
        threshold = 0.5
        notes.append(NO_THRESHOLD_NOTE)
    return DeployedStudent(
        student.eval(), metrics["student"], int(data["size"]),
        int(prepared.get("size") or data["size"]), int(data["frames"]),
        prepared.get("detector") or DEFAULT_DETECTOR, float(threshold), notes, run_dir, metrics,
        prepared.get("reencode") or "none", pre)


def from_checkpoint(path: Path, backbone: str, size: int | None = None) -> DeployedStudent:
    """A student of ``backbone`` (built in, or any timm CNN) from a checkpoint file, without
    its run: input and crop size ``size`` (default 64), 8 frames, the dlib detector and the
    threshold 0.5."""
    from kdbench.deploy.inputs import check_student

    check_student(backbone)
    student = create_student(backbone)
    load_weights(student, Path(path))
    size = size or DEFAULT_SIZE
    return DeployedStudent(student.eval(), backbone, size, size, DEFAULT_FRAMES,
                           DEFAULT_DETECTOR, 0.5,
                           ["a bare checkpoint has no validation threshold: 0.5 is used"])


def load_deployed(run_dir: Path | None = None, checkpoint: Path | None = None,
                  student: str | None = None, size: int | None = None) -> DeployedStudent:
    """A run's student (``run_dir``), or a checkpoint's (``checkpoint`` with ``student``)."""
    from kdbench.deploy.inputs import check_source

    check_source(run_dir, checkpoint, student)
    if run_dir is not None:
        return from_run(Path(run_dir))
    return from_checkpoint(Path(checkpoint), student, size)


def model_input(crops: np.ndarray, size: int, device: torch.device,
                pre: nn.Module | None = None) -> Tensor:
    """uint8 face crops [N, S, S, 3] -> the model's float input [N, 3, size, size] on
    ``device``, exactly as training and evaluation make it (``pre``: a cross-resolution
    student's blur, JPEG and noise)."""
    from kdbench.data.loader import to_model_input

    batch = {"image": torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)}
    x = to_model_input(batch, device, size)["image"]
    if pre is not None:
        with torch.no_grad():
            x = pre.to(device)(x)
    return x
