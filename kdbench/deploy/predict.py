"""`kdbench predict`: a student's fake score for video and image files, with the frames, the
face crops and the input made exactly as `kdbench prepare` and the evaluation make them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from kdbench.data.detectors import Detector
from kdbench.data.video import read_frames, read_image
from kdbench.deploy.inputs import media_kind
from kdbench.deploy.student_file import DeployedStudent, model_input
from kdbench.errors import KdbenchError


@dataclass
class FileScore:
    """One input file's result: ``score`` is the video's fake score (the mean, or max, of its
    frames' fake probabilities) or the image's; ``error`` says why a file was not scored."""

    file: str
    kind: str
    frames: int = 0
    faces: int = 0
    score: float | None = None
    label: str | None = None
    error: str | None = None

    def row(self) -> dict:
        return asdict(self)


@torch.no_grad()
def fake_probabilities(student: DeployedStudent, crops: np.ndarray, device: torch.device,
                       batch_size: int = 64) -> np.ndarray:
    """The student's fake probability of each uint8 face crop [N, S, S, 3]."""
    model = student.probability().to(device)
    out = [model(model_input(crops[i:i + batch_size], student.size, device, student.pre)).cpu()
           for i in range(0, len(crops), batch_size)]
    return torch.cat(out).double().numpy()


def score_file(path: Path, student: DeployedStudent, detector: Detector, frames: int,
               agg: str, device: torch.device) -> FileScore:
    """Score one file: ``frames`` evenly spaced frames of a video (one of an image), the face
    cropped in each as the preparation does (a frame without a face takes the nearest
    frame's box), the student's probability per frame, aggregated by ``agg``."""
    from kdbench.data.prepare import crop_faces
    from kdbench.data.reencode import parse_reencode, reencode

    kind = media_kind(path) or "video"  # the inputs are checked by kdbench.deploy.inputs
    result = FileScore(str(path), kind)
    try:
        video = read_image(path)[None] if kind == "image" else read_frames(path, frames)
    except KdbenchError as exc:
        result.error = f"cannot decode: {exc}"
        return result
    result.frames = len(video)
    recode = parse_reencode(student.reencode)
    crops, result.faces = crop_faces([reencode(f, recode) for f in video], detector,
                                     student.crop_size)
    if crops is None:
        result.error = f"no face found in any of its {len(video)} frame(s)"
        return result
    probs = fake_probabilities(student, crops, device)
    result.score = float(probs.mean() if agg == "mean" else probs.max())
    result.label = "fake" if result.score > student.threshold else "real"
    return result


def predict_files(files: list[Path], student: DeployedStudent, detector: Detector,
                  frames: int, agg: str, device: torch.device,
                  progress: bool = True) -> list[FileScore]:
    """:func:`score_file` for every file, with a progress bar (``agg`` and ``frames`` checked
    by :func:`kdbench.deploy.api.predict`)."""
    from kdbench.progress import progress_bar

    results = []
    with progress_bar(progress) as bar:
        task = bar.add_task("predict", total=len(files), info="")
        for path in files:
            results.append(score_file(path, student, detector, frames, agg, device))
            bar.advance(task)
    return results
