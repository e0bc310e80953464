"""Generator protocols on a prepared dataset: each frame's generator (from ``manifest.csv``
where the preparation wrote one, else the fake's manipulation), and the frames a protocol keeps:
training on some generators, testing on others. A real belongs to a generator where the
dataset says so (ForenSynths' test reals, GenImage's, synthetic_gen's); reals of no generator
(FF++, Synthbuster's RAISE photographs) stay in every selection."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kdbench.errors import DataError, did_you_mean

ANY = ("real", "raise")  # a real's generator name that ties it to no generator


def with_generators(index: pd.DataFrame, root: Path) -> pd.DataFrame:
    """``index`` with a ``generator`` column: the manifest's (by video) where the prepared
    folder has one, else the manipulation of fakes and "real" for reals."""
    manifest = Path(root) / "manifest.csv"
    out = index.copy()
    if manifest.is_file():
        table = pd.read_csv(manifest, usecols=["video", "generator"], dtype={"video": str})
        out["generator"] = out["video"].map(dict(zip(table["video"], table["generator"])))
    if "generator" not in out or out["generator"].isna().any():
        fallback = out["manipulation"] if "manipulation" in out else pd.Series("fake",
                                                                                out.index)
        fallback = fallback.where(out["label"] == 1, "real")
        out["generator"] = out["generator"].fillna(fallback) if "generator" in out \
            else fallback
    return out


def fake_generators(index: pd.DataFrame, split: str | None = None) -> list[str]:
    """The generators whose fakes the ``split`` (default: any) holds, sorted."""
    rows = index if split is None else index[index["split"] == split]
    return sorted(rows.loc[rows["label"] == 1, "generator"].astype(str).unique())


def _check(names: Sequence[str], index: pd.DataFrame, splits: tuple[str, ...],
           option: str) -> None:
    have = sorted(set().union(*(fake_generators(index, s) for s in splits)))
    for name in names:
        if name not in have:
            raise DataError(f"{option}: unknown generator {name!r}{did_you_mean(name, have)}; "
                            f"{_which(splits)} {', '.join(have) or 'no fakes'}")


def _which(splits: tuple[str, ...]) -> str:
    return (f"the {splits[0]} split holds" if len(splits) == 1
            else f"the {' and '.join(splits)} splits hold")


def select(index: pd.DataFrame, train: Sequence[str] = (),
           test: Sequence[str] = ()) -> pd.DataFrame:
    """The frames a protocol keeps: in train and val, the fakes of ``train`` generators (all
    when empty) and their reals; in test, those of ``test`` (all when empty). Reals of no
    generator (:data:`ANY`) are kept everywhere. One line for an unknown generator, naming
    the ones the split holds."""
    _check(train, index, ("train", "val"), "--train-generators")
    _check(test, index, ("test",), "--test-generators")

    def keep(rows: pd.DataFrame, names: Sequence[str]) -> pd.Series:
        if not names:
            return pd.Series(True, rows.index)
        return rows["generator"].isin(list(names)) | ((rows["label"] == 0)
                                                      & rows["generator"].isin(ANY))

    parts = []
    for split, names in (("train", train), ("val", train), ("test", test)):
        rows = index[index["split"] == split]
        parts.append(rows[keep(rows, names)])
    return pd.concat(parts).sort_values("row", kind="stable").reset_index(drop=True)


def video_generators(index: pd.DataFrame, videos: Sequence[str]) -> np.ndarray | None:
    """The generator of each of ``videos`` (as :func:`with_generators` put them in ``index``),
    or None when the index has no generator column."""
    if "generator" not in index:
        return None
    mapping = dict(zip(index["video"].astype(str), index["generator"].astype(str)))
    return np.array([mapping.get(str(v), "") for v in videos])
