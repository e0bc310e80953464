"""Data parallel under torchrun: the ranks, the collectives kdbench needs, the DDP wrapper.

``torchrun --nproc_per_node=N -m kdbench run ...`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` in their environment (never a ``--local_rank`` argument).
:func:`setup` joins them into one process group (gloo on the CPU, NCCL on CUDA, one GPU per
local rank). ``train.batch_size`` stays the global batch: each rank takes its slice of the
same deterministic batch (:func:`shard_batch`), the trainable modules are wrapped in DDP
(:func:`data_parallel`), the frozen teacher is not, and only rank 0 writes files and prints
(:func:`is_main`). Without torchrun every function here is the one-process identity.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from kdbench.errors import KdbenchError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one torchrun job."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1


def world() -> World:
    """The ranks as torchrun's environment gives them (one rank without torchrun)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise KdbenchError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (torchrun sets "
                           "them); unset them to run in one process") from None
    if size < 1 or not 0 <= rank < size:
        raise KdbenchError(f"RANK={rank} is not a rank of WORLD_SIZE={size}; start data "
                           "parallel runs with torchrun")
    return World(rank, local, size)


def active() -> bool:
    """Whether this process is one of several ranks in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """Rank 0 (the one process that writes files and prints), or the only process."""
    return not active() or dist.get_rank() == 0


def size() -> int:
    return dist.get_world_size() if active() else 1


def backend() -> str | None:
    """The process group's backend (gloo, nccl), None in one process."""
    return str(dist.get_backend()) if active() else None


def rank() -> int:
    return dist.get_rank() if active() else 0


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 and return this rank's device:
    ``cuda:LOCAL_RANK`` (NCCL) when ``device`` is CUDA, the CPU (gloo) otherwise. Ranks other
    than 0 print nothing from here on (errors excepted). One process: ``device`` unchanged."""
    w = world()
    if w.size == 1:
        return device
    if device.type == "cuda":
        if device.index not in (None, w.local_rank):
            raise KdbenchError(f"--device {device}: under torchrun each rank uses "
                               "cuda:LOCAL_RANK; pass --device cuda or leave --device out")
        if w.local_rank >= torch.cuda.device_count():
            raise KdbenchError(f"LOCAL_RANK {w.local_rank} has no GPU ({torch.cuda.device_count()}"
                               " visible); start at most that many processes per node")
        device = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    if w.rank != 0:
        import logging

        from kdbench.progress import console

        console.quiet = True  # no progress bars
        logging.getLogger("kdbench").setLevel(logging.WARNING)
    return device


def teardown() -> None:
    """Leave the process group (the end of a torchrun job's `kdbench run`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank."""
    if active():
        dist.barrier()


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class RankZeroError(KdbenchError):
    """An error every rank raises alike (rank 0's, shared by :func:`on_main`, or a check of
    the common settings): rank 0 alone reports it."""


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` computed on rank 0 and its result given to every rank; a
    :class:`KdbenchError` it raises is raised on every rank, so all of them stop alike."""
    if not active():
        return fn()
    result: tuple[bool, Any] = (True, None)
    if is_main():
        try:
            result = (True, fn())
        except KdbenchError as exc:
            result = (False, str(exc))
    ok, value = broadcast_object(result)
    if not ok:
        raise RankZeroError(value)
    return value


def all_gather_cat(x: Tensor, dim: int = 0) -> Tensor:
    """Every rank's ``x`` concatenated along ``dim`` in rank order; the ranks' sizes along
    ``dim`` may differ (the other dimensions must agree)."""
    if not active():
        return x
    x = x.contiguous()
    sizes = torch.tensor([x.shape[dim]], device=x.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(size())]
    dist.all_gather(all_sizes, sizes)
    lengths = [int(s) for s in all_sizes]
    pad = list(x.shape)
    pad[dim] = max(lengths) - x.shape[dim]
    padded = torch.cat([x, x.new_zeros(pad)], dim) if pad[dim] else x
    parts = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(parts, padded)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, lengths)], dim)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (every rank passes the same keys)."""
    if not active() or not values:
        return values
    keys = sorted(values)
    t = _on_backend(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64))
    dist.all_reduce(t)
    return {k: float(v) / size() for k, v in zip(keys, t.cpu().tolist())}


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank."""
    if not active():
        return flag
    t = _on_backend(torch.tensor([int(flag)]))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _on_backend(t: Tensor) -> Tensor:
    """``t`` where the backend reduces it: this rank's GPU for NCCL, the CPU for gloo."""
    return t.cuda() if dist.get_backend() == "nccl" else t


def shard_batch(batch: tuple[np.ndarray, np.ndarray], rank: int, ranks: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Rank ``rank``'s contiguous slice of one global training batch (positions, flips)."""
    pos, flips = batch
    lo, hi = len(pos) * rank // ranks, len(pos) * (rank + 1) // ranks
    return pos[lo:hi], flips[lo:hi]


def shard_range(n_items: int, rank: int, ranks: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous block [lo, hi) of ``n_items`` (an evaluation split); the
    blocks of ranks 0, 1, ... follow each other, so gathering in rank order restores the
    order."""
    return n_items * rank // ranks, n_items * (rank + 1) // ranks


def check_batch_size(batch_size: int) -> None:
    """The global batch must split evenly over the ranks (DDP averages the ranks' gradients
    with equal weights)."""
    n = size()
    if batch_size % n:
        up = -(-batch_size // n) * n
        raise RankZeroError(f"train.batch_size={batch_size} does not split over {n} ranks; pass "
                           f"--set train.batch_size={up} (the global batch), or another "
                           "--nproc_per_node")


class TrainForward(nn.Module):
    """The learner's training forward as a module's ``forward``, so DDP can wrap it (DDP
    prepares its gradient all-reduce in ``forward``). The learner's frozen teacher lives
    outside its module tree and is not wrapped."""

    def __init__(self, learner: nn.Module) -> None:
        super().__init__()
        self.learner = learner

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.learner.forward_train(batch)


def data_parallel(learner: nn.Module, device: torch.device, sync_bn: bool
                  ) -> Callable[[dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]]:
    """The training forward of ``learner``: DDP-wrapped across the ranks (the gradients of
    its trainable parameters all-reduced; every one of them must take part in each step's
    loss), or the learner's ``forward_train`` in one process. ``sync_bn``: the learner's
    BatchNorm layers become SyncBatchNorm (CUDA only), statistics over the global batch;
    otherwise each rank normalises with its slice's and :func:`average_bn_stats` averages the
    running statistics before every evaluation. Buffers are not broadcast from rank 0, so a
    rank that drifts apart shows in :func:`state_digest`."""
    if not active():
        return learner.forward_train
    if sync_bn:
        if device.type != "cuda":
            raise KdbenchError("train.sync_bn needs CUDA ranks (gloo has no SyncBatchNorm); "
                               "drop --set train.sync_bn=true on the CPU")
        nn.SyncBatchNorm.convert_sync_batchnorm(learner)
    ddp = nn.parallel.DistributedDataParallel
    # no buffer broadcast from rank 0 before each forward (torch >= 2.11 renamed the switch)
    no_sync = ({"forward_sync_buffers": False}
               if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else {"broadcast_buffers": False})
    ids = [device.index] if device.type == "cuda" else None
    return ddp(TrainForward(learner), device_ids=ids, **no_sync)


def average_bn_stats(module: nn.Module) -> None:
    """Average the running mean and variance of ``module``'s BatchNorm layers over the ranks
    (per-rank BatchNorm has its own; timm's ``distribute_bn`` with reduce)."""
    if not active():
        return
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf in (m.running_mean, m.running_var):
                if buf is not None:
                    dist.all_reduce(buf)
                    buf.div_(size())


def state_digest(module: nn.Module) -> str:
    """sha256 of ``module``'s state dict (names, dtypes, shapes, bytes): equal on every rank
    when the replicas agree."""
    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        if isinstance(value, Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order."""
    if not active():
        return [obj]
    out: list[Any] = [None] * size()
    dist.all_gather_object(out, obj)
    return out
