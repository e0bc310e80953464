"""The majority rate of a table's test frames: the accuracy of always answering the larger
class, stated under every table so that an accuracy can be read against it (the synthetic
test split is 80 % fake: an accuracy of 80 % has learnt nothing)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.train.predictions import PREDICTIONS, load_predictions


def fraction_from_predictions(paths: Iterable[Path]) -> float | None:
    """The fake fraction of the labels in the first readable predictions file of ``paths``."""
    for path in map(Path, paths):
        if not path.is_file():
            continue
        try:
            labels = load_predictions(path).label
        except KdbenchError:
            continue
        if len(labels):
            return float(labels.mean())
    return None


def split_fractions(runs: pd.DataFrame) -> dict[str, list[float]]:
    """Dataset -> the fake fractions of the test frames of its finished runs: the ones their
    metrics.json records (``test.fake_fraction``), else the labels of a run's stored
    predictions (runs made before the fraction was recorded)."""
    done = runs[runs["status"] == "finished"]
    found: dict[str, list[float]] = {}
    for dataset, group in done.groupby("dataset", sort=True):
        recorded = group.get("fake_fraction", pd.Series(dtype=float))
        values = [float(f) for f in recorded.dropna()]
        if not values:
            fraction = fraction_from_predictions(Path(p) / PREDICTIONS for p in group["path"])
            values = [] if fraction is None else [fraction]
        if values:
            found[str(dataset)] = values
    return found


def _larger(fraction: float) -> str:
    return "fake" if fraction >= 0.5 else "real"


def majority_notes(fractions: dict[str, list[float]]) -> list[str]:
    """``Majority rate of the test frames (always answering fake): 80.0 % (synthetic).``,
    each dataset's rate named (no note when no run records its test labels)."""
    fractions = {d: [f for f in fs if f is not None and not math.isnan(f)]
                 for d, fs in fractions.items()}
    fractions = {d: fs for d, fs in fractions.items() if fs}
    if not fractions:
        return []
    classes = {_larger(f) for fs in fractions.values() for f in fs}
    one = len(classes) == 1
    parts = []
    for dataset, values in sorted(fractions.items()):
        rates = dict.fromkeys(f"{100 * max(f, 1 - f):.1f} %" + ("" if one else f" {_larger(f)}")
                              for f in values)  # runs of other test splits: each rate once
        parts.append(f"{' or '.join(rates)} ({dataset})")
    answer = classes.pop() if one else "the larger class"
    return [f"Majority rate of the test frames (always answering {answer}): "
            f"{', '.join(parts)}."]
