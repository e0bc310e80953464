"""Batches from prepared frames: deterministic per (seed, epoch), flips decided up front."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

IN_MEMORY_BYTES = 2 << 30  # splits smaller than this are read into RAM once


class FrameSplit(Dataset):
    """Frames of one split. ``self[(positions, flips)]`` returns a whole batch as a dict."""

    def __init__(self, frames: np.ndarray, rows: pd.DataFrame) -> None:
        idx = rows["row"].to_numpy()
        nbytes = idx.size * int(np.prod(frames.shape[1:]))
        self.frames = np.ascontiguousarray(frames[idx]) if nbytes < IN_MEMORY_BYTES else frames
        self.rows = None if nbytes < IN_MEMORY_BYTES else idx
        self.labels = torch.tensor(rows["label"].to_numpy(dtype=np.int64))
        self.videos = rows["video"].astype(str).to_numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, batch: tuple[np.ndarray, np.ndarray]) -> dict[str, Tensor]:
        pos, flips = batch
        order = np.argsort(pos)  # sorted reads are faster from a memory map
        src = pos[order] if self.rows is None else self.rows[pos[order]]
        images = np.empty((len(pos), *self.frames.shape[1:]), dtype=np.uint8)
        images[order] = self.frames[src]
        images[flips] = images[flips, :, ::-1]
        return {
            "image": torch.from_numpy(images).permute(0, 3, 1, 2),
            "label": self.labels[pos],
            "pos": torch.as_tensor(pos),
            "key": torch.as_tensor(2 * pos + flips),  # (frame, flip) slot of a teacher cache
        }


def epoch_batches(
    n: int, batch_size: int, shuffle: bool, seed: int, epoch: int, drop_last: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The batches of one epoch: positions and flip flags from a (seed, epoch) generator."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).numpy() if shuffle else np.arange(n)
    flips = (torch.rand(n, generator=g) < 0.5).numpy() if shuffle else np.zeros(n, bool)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    return [
        (order[i : i + batch_size], flips[i : i + batch_size]) for i in range(0, stop, batch_size)
    ]


def iterate(
    split: FrameSplit, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
    workers: int = 0,
) -> Iterator[dict[str, Tensor]]:
    """Iterate batches (training: shuffled + random flips, drop_last; eval: in order)."""
    batches = epoch_batches(len(split), batch_size, shuffle, seed, epoch, drop_last=shuffle)
    if workers <= 0:
        return (split[b] for b in batches)
    return iter(DataLoader(split, sampler=batches, batch_size=None, num_workers=workers,
                           pin_memory=torch.cuda.is_available(), persistent_workers=False))


def to_model_input(batch: dict[str, Tensor], device: torch.device, size: int) -> dict[str, Tensor]:
    """uint8 NCHW -> float in [-1, 1] on ``device``, resized to ``size`` if needed."""
    x = batch["image"].to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "image"}
    out["image"] = x
    return out
