"""The marks a table cell carries about its runs, and their notes: † (other teacher weights),
⊘ (a collapsed run) and ≡ (its seeds tie exactly).

A run has *collapsed* when its test predictions put (nearly) every frame in one class, or when
its training accuracy never leaves the majority rate: its accuracy then says nothing about
the method (the synthetic test split is 80 % fake: 80.00 is "always fake").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.files import StoreError, read_jsonl
from kdbench.train.predictions import PREDICTIONS, load_predictions

ONE_CLASS = 0.99  # share of the test frames in one predicted class that counts as collapse
LEAVES = 0.02  # train accuracy must once exceed the majority rate by this much

OTHER_TEACHER = "†"
COLLAPSED = "⊘"
TIED = "≡"

OTHER_TEACHER_NOTE = ("†: a run of this cell distilled from other teacher weights than the "
                      "stored teacher's (its recorded sha256 differs: the teacher was trained "
                      "again to other weights); re-run it with --restart.")
TIED_NOTE = ("≡: every seed of the cell has exactly the same value (for acc: the same number "
             "of test frames right); where their AUC differs, the runs are different models "
             "that tie.")


def collapse_reason(folder: Path, metrics: dict[str, Any]) -> str:
    """Why the finished run in ``folder`` collapsed ("" when it did not): (nearly) every test
    frame predicted in one class (at the 0.5 threshold of the accuracy), or a training
    accuracy that never exceeded the majority rate by :data:`LEAVES` (the rate of the test
    frames, which FF++-style splits share with the training frames)."""
    path = folder / PREDICTIONS
    if path.is_file():
        try:
            prob = load_predictions(path).prob
        except KdbenchError:
            prob = np.zeros(0)
        if len(prob):
            fake = float(np.mean(prob > 0.5))
            if max(fake, 1 - fake) >= ONE_CLASS:
                which = "fake" if fake >= 0.5 else "real"
                return f"{100 * max(fake, 1 - fake):.1f} % of the test frames called {which}"
    fraction = (metrics.get("test") or {}).get("fake_fraction")
    history = folder / "history.jsonl"
    if fraction is None or not history.is_file():
        return ""
    try:
        accs = [r["train_acc"] for r in read_jsonl(history) if "train_acc" in r]
    except StoreError:
        return ""
    majority = max(fraction, 1 - fraction)
    if accs and max(accs) <= majority + LEAVES:
        return (f"train accuracy at most {100 * max(accs):.1f} % against a majority rate of "
                f"{100 * majority:.1f} %")
    return ""


def cell_marks(c: Any, sel: pd.DataFrame) -> Any:
    """``c`` (a Cell of the runs ``sel``) marked † when a run used other teacher weights, ⊘
    when a run collapsed, ≡ (on each metric part) when its seeds tie exactly."""
    if "other_teacher" in sel and sel["other_teacher"].fillna(False).astype(bool).any():
        c.mark += OTHER_TEACHER
    if "collapsed" in sel and sel["collapsed"].fillna("").astype(bool).any():
        c.mark += COLLAPSED
        bad = sel[sel["collapsed"].fillna("").astype(bool)]
        c.flagged = [(r.method + (f"@{r.variant}" if r.variant else ""), r.mode, r.seed,
                      r.collapsed) for r in bad.itertuples()]
    for part in c.parts or [c]:  # equal floats can give a std of 1e-16, not 0
        if part.n >= 2 and not math.isnan(part.std) and part.std < 1e-9:
            part.mark += TIED
    return c


def collapsed_note(flagged: list[tuple]) -> str:
    """⊘'s note: which runs of the table's cells collapsed, and how."""
    groups: dict[tuple, list] = {}
    for label, mode, seed, reason in sorted(set(flagged)):
        groups.setdefault((label, mode), []).append((seed, reason))
    parts = [f"{label} {mode} seed{'s' * (len(v) > 1)} {','.join(str(s) for s, _ in v)} "
             f"({v[0][1]})" for (label, mode), v in sorted(groups.items())]
    return (f"{COLLAPSED}: a run of this cell collapsed (its test predictions put "
            f"{100 * ONE_CLASS:.0f} % or more of the frames in one class, or its train "
            f"accuracy never left the majority rate); its numbers say nothing about the method: "
            + "; ".join(parts) + ".")


def mark_notes(rows: list[list[Any]]) -> list[str]:
    """The notes of the marks the table's cells carry."""
    marks = "".join(c.mark + "".join(p.mark for p in getattr(c, "parts", []))
                    for row in rows for c in row if hasattr(c, "mark"))
    notes = []
    if OTHER_TEACHER in marks:
        notes.append(OTHER_TEACHER_NOTE)
    if COLLAPSED in marks:
        notes.append(collapsed_note([f for row in rows for c in row
                                     for f in getattr(c, "flagged", [])]))
    if TIED in marks:
        notes.append(TIED_NOTE)
    return notes
