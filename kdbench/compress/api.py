"""`kdbench compress` as a Python function (re-exported by :mod:`kdbench.api`): arguments are
checked before torch is imported; bad input raises :class:`kdbench.errors.KdbenchError`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kdbench.compress.settings import Compression, check, check_prunable_teacher
from kdbench.errors import KdbenchError

PathLike = str | os.PathLike


def _check_parent(run: Path) -> dict[str, Any]:
    """The parent's metrics: a finished student run with its best.pt (one line otherwise;
    the dual-branch teacher is refused)."""
    from kdbench.deploy.inputs import check_run
    from kdbench.files import read_json

    metrics_path = Path(run) / "metrics.json"
    if metrics_path.is_file():
        m = read_json(metrics_path)
        if m.get("role") == "compressed":
            raise KdbenchError(f"{run} is a compressed child run; compress its parent "
                               f"({m.get('parent', {}).get('path', 'the runs/... folder')}) "
                               "with the settings combined (e.g. a higher --target, --steps)")
        if m.get("role") == "teacher":
            check_prunable_teacher(Path(run), m)
            return m
    return check_run(Path(run))


def compress(run: PathLike, *, prune: str, target: float, scope: str = "layer",
             steps: int = 1, finetune: int = 0, finetune_with: str | None = None,
             finetune_mode: str = "both", data_root: PathLike | None = None,
             device: str | None = None, threads: int | None = None, progress: bool = True,
             registry: list[PathLike] | None = None) -> tuple[Path, dict[str, Any]]:
    """Prune a finished run's student into a child run of its own
    (``<results>/compressed/<the run's path>/<tag>``, its parent recorded): ``prune``
    unstructured (L1 masks per layer or ``global``; ``target`` = the fraction of weights
    zeroed) or structured (Torch-Pruning channel pruning; ``target`` = the measured fraction
    of parameters removed, within 1 point, in ``steps`` steps); BatchNorm statistics
    recalibrated; then ``finetune`` epochs with cross-entropy alone (``finetune_with`` None)
    or a registry distiller against the run's teacher, at the parent's learning rate times its
    decay; tested like a run. Returns the child's folder and metrics (a finished child is
    found, not made again)."""
    from kdbench.registry import load_registry

    c = Compression(prune, float(target), scope, int(steps), int(finetune), finetune_with,
                    finetune_mode)
    reg = load_registry([Path(p) for p in registry or []])
    check(c, reg)
    if _check_parent(Path(run)).get("role") == "teacher" and c.finetune_with:
        raise KdbenchError("a pruned teacher is fine-tuned with cross-entropy alone (it has no "
                           "teacher of its own); leave --finetune-with out")
    if c.prune == "structured":
        from kdbench.compress.structured import require_torch_pruning

        require_torch_pruning()
    from contextlib import ExitStack

    from kdbench.compress.child import make_child
    from kdbench.threads import take_share
    from kdbench.train.runner import pick_device

    with ExitStack() as stack:
        stack.enter_context(take_share(threads))
        return make_child(Path(run), c, reg, data_root=Path(data_root) if data_root else None,
                          device=pick_device(device), progress=progress)
