"""`kdbench eval`: a trained student tested on another dataset (cross-dataset, Table 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdbench.data.datasets import PreparedData
from kdbench.data.loader import FrameSplit
from kdbench.files import atomic_write_json
from kdbench.models.students import Student, create_student
from kdbench.train.metrics import detection_metrics
from kdbench.train.predictions import save_predictions
from kdbench.train.store import finished_student_run
from kdbench.train.trainer import load_checkpoint

CROSS_DIR = "cross"  # <run>/cross/<dataset>.json and .npz


def load_student(run_dir: Path) -> tuple[Student, dict[str, Any]]:
    """The student of a finished run at its best validation epoch, and the run's metrics (a
    structurally pruned child run's student reshaped to its recorded structure first; a
    transferred run's with its adapter)."""
    from kdbench.compress.settings import STRUCTURE_FILE
    from kdbench.files import read_json

    metrics = finished_student_run(run_dir)
    state = load_checkpoint(run_dir / "best.pt")
    from kdbench.compress.teacher_model import DETECTOR, architecture

    if metrics.get("detector") == DETECTOR:  # a pruned single-branch teacher
        student = architecture(metrics["config"])
    else:
        student = create_student(metrics["student"])
    if (metrics.get("transfer") or {}).get("kind") == "adapter":  # kdbench transfer's adapter
        from kdbench.transfer.strategies import AdaptedStudent

        student = AdaptedStudent(student)
    from kdbench.models.degrade import degraded

    student = degraded(student, metrics["config"])  # cross-resolution: reads the small image
    if (Path(run_dir) / STRUCTURE_FILE).is_file():
        from kdbench.compress.structure_file import apply_structure

        apply_structure(student, read_json(Path(run_dir) / STRUCTURE_FILE))
    prefix = "student."
    student.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                             if k.startswith(prefix)})
    return student.eval(), metrics


@torch.no_grad()
def evaluate_run(run_dir: Path, data: PreparedData, dataset: str, device: torch.device,
                 batch_size: int = 256) -> dict[str, Any]:
    """Test metrics of a run's student on ``dataset``'s test split, written to
    ``<run>/cross/<dataset>.json`` (its per-frame predictions to ``<dataset>.npz``)."""
    from kdbench.data.loader import iterate, to_model_input

    student, metrics = load_student(run_dir)
    size = metrics["config"]["data"]["size"]
    split = FrameSplit(data.frames, data.split("test"))
    student.to(device)
    probs = []
    for batch in iterate(split, batch_size, shuffle=False):
        b = to_model_input(batch, device, size)
        probs.append(torch.softmax(student(b["image"]).logits.float(), 1)[:, 1].cpu())
    prob = torch.cat(probs).numpy()
    result = detection_metrics(prob, split.labels.numpy(), split.videos)
    save_predictions(run_dir / CROSS_DIR / f"{dataset}.npz", prob, split.labels.numpy(),
                     split.videos)
    record = {"train_dataset": metrics["dataset"], "test_dataset": dataset, "test": result,
              "device": str(device)}
    atomic_write_json(run_dir / CROSS_DIR / f"{dataset}.json", record)
    return record
