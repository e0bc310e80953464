"""What `kdbench predict`, `export` and `quantize` are given, checked before torch is imported:
the media files (recognised by their extension), the run folder, the checkpoint and its student
(torch and timm are imported only for a student name that is not built in)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kdbench.config import BACKBONES
from kdbench.data.video import IMAGE_SUFFIXES
from kdbench.errors import KdbenchError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv",
                  ".wmv")
AGGREGATES = ("mean", "max")
RUN_FOLDER = "runs/<dataset>/<student>/<method>/<mode>/seed<k>"


def media_kind(path: Path) -> str | None:
    """``video`` or ``image`` by the extension of ``path`` (None for any other file)."""
    suffix = Path(path).suffix.lower()
    return "video" if suffix in VIDEO_SUFFIXES else "image" if suffix in IMAGE_SUFFIXES else None


def media_files(inputs: Iterable[Path]) -> list[Path]:
    """The video and image files among ``inputs``: files as given, folders searched
    recursively (sorted, other files skipped). A path that does not exist, or a file named
    explicitly that is no video or image by its extension, is a one-line error."""
    files: list[Path] = []
    inputs = [Path(p) for p in inputs]
    accepted = " ".join(VIDEO_SUFFIXES + IMAGE_SUFFIXES)
    for path in inputs:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and media_kind(p))
        elif path.is_file():
            if media_kind(path) is None:
                raise KdbenchError(f"input {path} is not a video or image file by its "
                                   f"extension; give files ending in {accepted}, or folders "
                                   "holding them")
            files.append(path)
        else:
            raise KdbenchError(f"input {path} does not exist; give video or image files, or "
                               "folders holding them")
    if not files:
        raise KdbenchError(f"no video or image file in {', '.join(map(str, inputs))} (looked "
                           f"for {accepted})")
    return files


def check_run(run_dir: Path) -> dict[str, Any]:
    """The metrics of the finished student run in ``run_dir`` (one-line errors: missing,
    unfinished, a teacher's, without its best.pt)."""
    from kdbench.train.store import finished_student_run

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KdbenchError(f"run folder {run_dir} not found; give a finished run's folder "
                           f"({RUN_FOLDER} of a result store)")
    return finished_student_run(run_dir)


def check_checkpoint(path: Path) -> None:
    """A one-line error when the checkpoint file ``path`` does not exist."""
    if not Path(path).is_file():
        raise KdbenchError(f"checkpoint {path} not found; give a run's best.pt, a "
                           "deploy/student.pt or a student state dict")


def check_student(name: str, setting: str = "--student") -> None:
    """One line unless ``name`` is a student backbone: built in, or a timm CNN that gives its
    stage maps through features_only (the closest timm names otherwise)."""
    if name not in BACKBONES:
        from kdbench.models.backbones import check_backbone

        check_backbone(name, setting)


def check_source(run_dir: Path | None, checkpoint: Path | None, student: str | None) -> None:
    """A run folder, or a checkpoint with its student's backbone, one of the two; each
    checked on disk (the file before the name, which may need timm)."""
    if (run_dir is None) == (checkpoint is None):
        raise KdbenchError("give a run folder (--run RUN_DIR) or a checkpoint (--checkpoint "
                           "FILE --student NAME), one of the two")
    if run_dir is not None:
        check_run(Path(run_dir))
        return
    if student is None:
        raise KdbenchError(f"--checkpoint needs --student, the backbone it was trained as: "
                           f"{', '.join(BACKBONES)} or a timm CNN name (e.g. "
                           "mobilenetv3_small_050)")
    check_checkpoint(Path(checkpoint))
    check_student(student)
