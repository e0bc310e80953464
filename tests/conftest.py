"""Shared fixtures: a tiny prepared dataset written in the prepared-folder format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kdbench.data.datasets import PreparedData, load_prepared
from kdbench.files import atomic_save_npy, atomic_write_json

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def kdbench_logs_on_stderr():
    """kdbench's log lines on stderr, as the CLI sets them (library calls in a test are read
    from capsys like the CLI's)."""
    from kdbench.logs import to_stderr

    to_stderr()


# Options of the dev extra's plugins are set here, not in pyproject's addopts, so that a plain
# `pytest` without them (no pytest-benchmark, no pytest-timeout) neither errors nor warns.
def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if not pluginmanager.hasplugin("timeout"):  # pyproject's `timeout`: pytest-timeout's ini
        parser.addini("timeout", "per-test timeout in seconds (used by pytest-timeout, which "
                      "is not installed: pip install -e '.[dev]')")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's own pytest_configure reads it
def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("benchmark"):
        config.option.benchmark_disable_gc = True


def write_prepared(root: Path, dataset: str = "synthetic", videos_per_split=(6, 4, 4),
                   frames: int = 2, size: int = 16, seed: int = 0) -> Path:
    """A prepared folder whose fake frames carry a faint bright square (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    rows, images = [], []
    for split, n in zip(("train", "val", "test"), videos_per_split):
        for v in range(n):
            label = v % 2
            base = rng.integers(0, 200, size=(size, size, 3))
            for f in range(frames):
                img = base + rng.integers(0, 40, size=base.shape)
                if label:
                    img[4:10, 4:10] += 30
                images.append(np.clip(img, 0, 255).astype(np.uint8))
                rows.append({"video": f"{split}{v:02d}", "label": label,
                             "manipulation": "Fake" if label else "real", "split": split,
                             "frame": f})
    index = pd.DataFrame(rows)
    index.insert(0, "row", np.arange(len(index)))
    root.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(root / "frames.npy", np.stack(images))
    index.to_csv(root / "index.csv", index=False)
    atomic_write_json(root / "prepared.json", {"dataset": dataset, "size": size,
                                               "frames": frames})
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> PreparedData:
    return load_prepared(write_prepared(tmp_path / "prepared"), "synthetic")
