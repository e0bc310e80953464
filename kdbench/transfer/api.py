"""`kdbench transfer` as a Python function (re-exported by :mod:`kdbench.api`): arguments are
checked before any data is read; bad input raises :class:`kdbench.errors.KdbenchError`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError

PathLike = str | os.PathLike


def _check_parent(run: Path, strategy: str) -> None:
    """A finished student run with its best.pt, or a finished single-branch teacher (``full``
    only: its timm classifier has no kdbench head or stages to choose from)."""
    from kdbench.files import read_json

    metrics = Path(run) / "metrics.json"
    role = read_json(metrics).get("role") if metrics.is_file() else None
    if role in ("compressed", "transferred"):
        raise KdbenchError(f"{run} is a {role} child run; transfer a run of runs/ (or a "
                           "single-branch teacher of teachers/)")
    from kdbench.compress.api import _check_parent as check

    m = check(Path(run))
    if m.get("role") == "teacher" and strategy != "full":
        raise KdbenchError(f"--strategy {strategy} does not fit a single-branch teacher: its "
                           "timm classifier has no kdbench head or stages to choose; use "
                           "--strategy full, or transfer a student run")


def transfer(run: PathLike, *, to: str, strategy: str, epochs: int = 5,
             shots: int | None = None, train_generators: Sequence[str] = (),
             test_generators: Sequence[str] = (), lr: float | None = None,
             data_root: PathLike | None = None, device: str | None = None,
             threads: int | None = None, progress: bool = True,
             registry: list[PathLike] | None = None) -> tuple[Path, dict[str, Any]]:
    """Adapt a finished run's student (or single-branch teacher) to the dataset ``to`` (its
    ``train_generators`` / ``test_generators``) with ``strategy`` (linear, partial:K, full,
    lora:R, adapter), trained ``epochs`` epochs with cross-entropy at the parent's learning
    rate (or ``lr``) on ``shots`` training images per class (None: all); a new run at
    ``<results>/transferred/<parent path>/<target>/<tag>`` recording trainable parameters,
    training time and the target's metrics. Returns its folder and metrics (a finished one is
    found, not made again)."""
    from kdbench.data.datasets import check_dataset
    from kdbench.registry import load_registry
    from kdbench.transfer.child import Transfer
    from kdbench.transfer.strategies import parse_strategy

    rate = None if lr is None else _number(lr)
    if lr is not None and not (rate is not None and rate > 0):  # also false for nan
        raise KdbenchError(f"--lr {lr}: give a learning rate > 0")
    t = Transfer(to, parse_strategy(strategy), int(epochs), shots,
                 tuple(train_generators), tuple(test_generators), rate)
    if t.epochs < 1:
        raise KdbenchError(f"--epochs {epochs}: give a whole number >= 1")
    if shots is not None and int(shots) < 1:
        raise KdbenchError(f"--shots {shots}: give a whole number >= 1 (or leave it out for "
                           "the whole training split)")
    _check_parent(Path(run), t.strategy.name)
    check_dataset(to, Path(data_root) if data_root else None)
    reg = load_registry([Path(p) for p in registry or []])
    if t.strategy.name == "lora":
        from kdbench.transfer.strategies import require_peft

        require_peft()
    from contextlib import ExitStack

    from kdbench.threads import take_share
    from kdbench.train.runner import pick_device
    from kdbench.transfer.child import make_transfer

    with ExitStack() as stack:
        stack.enter_context(take_share(threads))
        return make_transfer(Path(run), t, reg, data_root=Path(data_root) if data_root else None,
                             device=pick_device(device), progress=progress)



def _number(value: Any) -> float | None:
    """``value`` as a float, None when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
