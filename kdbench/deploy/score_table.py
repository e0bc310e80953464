"""`kdbench predict`'s output: the rich table of scores, the summary line and the JSON / CSV
files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from kdbench.files import atomic_write_json, atomic_write_text

if TYPE_CHECKING:  # both import torch: `kdbench predict` checks its arguments first
    from kdbench.deploy.predict import FileScore
    from kdbench.deploy.student_file import DeployedStudent


def _source(student: DeployedStudent) -> str:
    return str(student.run_dir) if student.run_dir else f"a {student.backbone} checkpoint"


def write_scores(scores: list[FileScore], path: Path, fmt: str,
                 student: DeployedStudent) -> None:
    """The rows as ``json`` (with the student and threshold they came from) or ``csv``."""
    if fmt == "json":
        atomic_write_json(path, {"student": _source(student), "threshold": student.threshold,
                                 "notes": student.notes, "files": [s.row() for s in scores]})
    else:
        atomic_write_text(path, pd.DataFrame([s.row() for s in scores]).to_csv(index=False))


def print_scores(scores: list[FileScore], student: DeployedStudent) -> int:
    """Print the table (stdout) and the summary (stderr); the exit status: 0 when a file was
    scored, 2 when none was."""
    from rich.table import Table

    from kdbench.progress import stdout_console

    table = Table(title=f"kdbench predict with {_source(student)} (fake above "
                  f"{student.threshold:.4f})")
    for col in ("file", "kind", "frames", "faces", "score", "label"):
        table.add_column(col, justify="right" if col in ("frames", "faces", "score") else "left")
    for s in scores:
        score = "-" if s.score is None else f"{s.score:.4f}"
        table.add_row(s.file, s.kind, str(s.frames), str(s.faces), score,
                      s.label or f"not scored: {s.error}")
    stdout_console().print(table)
    scored = [s for s in scores if s.score is not None]
    failed = [s for s in scores if s.score is None]
    for note in student.notes:
        print(f"kdbench: note: {note}", file=sys.stderr)
    fakes = sum(s.label == "fake" for s in scored)
    print(f"kdbench: scored {len(scored)} of {len(scores)} file(s): {fakes} fake, "
          f"{len(scored) - fakes} real", file=sys.stderr)
    for s in failed:
        print(f"kdbench: skipped {s.file}: {s.error}", file=sys.stderr)
    if not scored:
        print("kdbench: error: no file could be scored (see the reasons above); give "
              "decodable videos or images with a visible face, or try --detector center for "
              "pre-cropped faces", file=sys.stderr)
        return 2
    return 0
