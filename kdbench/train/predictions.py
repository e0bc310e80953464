"""Per-frame test predictions of a run: the fake probability, label and video id of every test
frame, kept beside ``metrics.json`` so that runs can be compared on the same frames (paired
bootstrap, :mod:`kdbench.report.paired`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdbench.errors import KdbenchError
from kdbench.files import atomic_path

PREDICTIONS = "predictions.npz"  # <run>/predictions.npz (test split); cross/<dataset>.npz


@dataclass(frozen=True)
class Predictions:
    """One split's frames, in split order: fake probability, label (1 = fake), video id."""

    prob: np.ndarray
    label: np.ndarray
    video: np.ndarray
    generator: np.ndarray | None = None  # each frame's generator, where the data names them

    def __len__(self) -> int:
        return len(self.prob)


def save_predictions(path: Path, prob: np.ndarray, label: np.ndarray, video: np.ndarray,
                     generator: np.ndarray | None = None) -> None:
    """Write ``path`` (.npz, compressed) atomically: float32 probabilities, int8 labels, the
    video ids and (when given) each frame's generator as fixed-width strings (no pickle)."""
    extra = {} if generator is None else {"generator": np.asarray(generator).astype(str)}
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, prob=np.asarray(prob, np.float32),
                            label=np.asarray(label, np.int8),
                            video=np.asarray(video).astype(str), **extra)


def load_predictions(path: Path) -> Predictions:
    """The predictions in ``path``; a one-line error when it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise KdbenchError(f"{path} is missing: the run was made before kdbench kept per-frame "
                           "predictions; run it again with `kdbench run ... --restart`")
    try:
        with np.load(path, allow_pickle=False) as z:
            return Predictions(z["prob"].astype(np.float64), z["label"].astype(np.int64),
                               z["video"], z["generator"] if "generator" in z.files else None)
    except (OSError, ValueError, KeyError) as exc:
        raise KdbenchError(f"{path} is damaged ({exc}); delete it and run the run again with "
                           "--restart") from None
