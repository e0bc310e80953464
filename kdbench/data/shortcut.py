"""The shortcut baseline of an image dataset: how well the files' format and size alone tell
reals from fakes (GenImage's reals are JPEG, its fakes PNG; sizes differ by generator). A
detector can learn that instead of the generators' traces; a high baseline AUC is the risk,
and `prepare --reencode` / `--crop` remove what they can."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from kdbench.report.tables import Report

FEATURES = {"format": ("format",), "size": ("width", "height"),
            "format + size": ("format", "width", "height")}


def _design(table: pd.DataFrame, columns: tuple[str, ...], formats: list[str]) -> np.ndarray:
    parts = []
    if "format" in columns:
        parts += [(table["format"] == f).to_numpy(float) for f in formats]
    for c in ("width", "height"):
        if c in columns:
            parts.append(np.log1p(table[c].to_numpy(float)))
    return np.stack(parts, axis=1)


def shortcut_baseline(manifest: pd.DataFrame) -> list[dict[str, Any]]:
    """For each feature set of :data:`FEATURES`: a gradient-boosted tree classifier (scikit-
    learn) fitted on the manifest's train images, its test AUC and accuracy (threshold 0.5);
    the originals as the manifest records them (format, width, height), unreadable files left
    out. AUC 0.5: the files say nothing of the label."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import accuracy_score, roc_auc_score

    table = manifest[manifest["format"] != "unreadable"].dropna(subset=["width", "height"])
    train, test = table[table["split"] == "train"], table[table["split"] == "test"]
    formats = sorted(table["format"].unique())
    rows = []
    for name, columns in FEATURES.items():
        auc = acc = math.nan
        if train["label"].nunique() == 2 and test["label"].nunique() == 2:
            model = HistGradientBoostingClassifier(max_iter=50, min_samples_leaf=5,
                                                   random_state=0)  # small sets split too
            model.fit(_design(train, columns, formats), train["label"])
            prob = model.predict_proba(_design(test, columns, formats))[:, 1]
            auc = float(roc_auc_score(test["label"], prob))
            acc = float(accuracy_score(test["label"], prob > 0.5))
        rows.append({"features": name, "auc": auc, "acc": acc, "train": len(train),
                     "test": len(test)})
    return rows


def shortcut_report(data_root: str | os.PathLike | None) -> Report:
    """The shortcut table of the prepared image dataset in ``data_root`` (its
    ``manifest.csv``); one line when it has none."""
    from pathlib import Path

    from kdbench.data.prepare_generated import MANIFEST
    from kdbench.errors import DataError
    from kdbench.report.tables import Report

    if data_root is None or not (Path(data_root) / MANIFEST).is_file():
        raise DataError(f"--kind shortcut reads a prepared image dataset's {MANIFEST}: give "
                        "--data-root DIR of a `kdbench prepare forensynths|synthbuster|genimage` "
                        "folder")
    rows = shortcut_baseline(pd.read_csv(Path(data_root) / MANIFEST))
    table = [[r["features"], str(r["train"]), str(r["test"]),
              "-" if math.isnan(r["auc"]) else f"{100 * r['auc']:.2f}",
              "-" if math.isnan(r["acc"]) else f"{100 * r['acc']:.2f}"] for r in rows]
    notes = ["a gradient-boosted tree on the original files' format and size alone (as "
             "manifest.csv records them, before any --reencode or --crop), fitted on the train "
             "images, tested on the test images; AUC and acc in %",
             "AUC near 50: the files say nothing of the label; far above it: a detector can "
             "learn the files instead of the generators' traces: prepare with --reencode "
             "jpeg:Q and --crop center (the manifest keeps the originals, so this table "
             "still shows the risk the raw files carry)"]
    return Report(f"Shortcut baseline: {Path(data_root).name}", ["features", "train", "test",
                                                               "AUC", "acc"], table, notes)
