"""Batches from prepared frames: deterministic per (seed, epoch), flips decided up front."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kdbench.distributed import shard_batch, shard_range

IN_MEMORY_BYTES = 2 << 30  # splits smaller than this are read into RAM once


class FrameSplit(Dataset):
    """Frames of one split. ``self[(positions, flips)]`` returns a whole batch as a dict."""

    def __init__(self, frames: np.ndarray, rows: pd.DataFrame) -> None:
        idx = rows["row"].to_numpy()
        self.row_index = idx  # rows of the prepared frames, in split order
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


class WithLookup(Dataset):
    """A split whose batches also carry values looked up by their ``key`` (the cached teacher
    outputs of each (frame, flip)), read in the loader's worker processes."""

    def __init__(self, split: FrameSplit, lookup: Callable[[np.ndarray], dict[str, Tensor]]):
        self.split, self.lookup = split, lookup

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, batch: tuple[np.ndarray, np.ndarray]) -> dict[str, Tensor]:
        out = self.split[batch]
        out.update(self.lookup(out["key"].numpy()))
        return out


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
    workers: int = 0, lookup: Callable[[np.ndarray], dict[str, Tensor]] | None = None,
    pin_memory: bool = False, shard: tuple[int, int] = (0, 1),
) -> Iterator[dict[str, Tensor]]:
    """Iterate batches (training: shuffled + random flips, drop_last; eval: in order).
    ``workers`` > 0 reads them in that many processes, ``prefetch`` batches ahead each, into
    pinned memory if ``pin_memory``; ``lookup`` adds values by each batch's ``key``.
    ``shard`` = (rank, ranks) of a data-parallel run: training takes the rank's slice of every
    global batch, evaluation the rank's contiguous block of the split."""
    batches = epoch_batches(len(split), batch_size, shuffle, seed, epoch, drop_last=shuffle)
    rank, ranks = shard
    if ranks > 1 and shuffle:
        batches = [shard_batch(b, rank, ranks) for b in batches]
    elif ranks > 1:
        lo, hi = shard_range(len(split), rank, ranks)
        batches = [(np.arange(i, min(i + batch_size, hi)), np.zeros(min(batch_size, hi - i), bool))
                   for i in range(lo, hi, batch_size)]
    data: Dataset = split if lookup is None else WithLookup(split, lookup)
    if workers <= 0:
        return (data[b] for b in batches)
    return iter(DataLoader(data, sampler=batches, batch_size=None, num_workers=workers,
                           pin_memory=pin_memory, prefetch_factor=PREFETCH,
                           persistent_workers=False))


PREFETCH = 4  # batches each loader worker reads ahead


def to_model_input(batch: dict[str, Tensor], device: torch.device, size: int,
                   channels_last: bool = False) -> dict[str, Tensor]:
    """uint8 NCHW -> float in [-1, 1] on ``device``, resized to ``size`` if needed, in the
    channels-last memory format if asked; fp16 values (cached teacher outputs) -> fp32."""
    x = batch["image"].to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = {k: _to(v, device) for k, v in batch.items() if k != "image"}
    out["image"] = x
    return out


def _to(v: Tensor, device: torch.device) -> Tensor:
    v = v.to(device, non_blocking=True)
    return v.float() if v.dtype == torch.float16 else v
