"""TensorBoard event files of a run (``train.tensorboard``; the ``tb`` extra): loss terms and the
learning rate at logging intervals, train and validation metrics per epoch, and a method's
traces (a gradient cosine trace), written by TensorBoard's own ``SummaryWriter``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError


class EventLog:
    """One run's event file in its folder (so `tensorboard --logdir RESULTS` names each run by
    its path: ``runs/<dataset>/<student>/<label>/<mode>/seed<k>``); a no-op when disabled."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.writer = None
        self._logged: dict[str, int] = {}  # trace name -> rows already written
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise KdbenchError("train.tensorboard needs the tensorboard package; pip install "
                               "'kdbench[tb]', or drop --tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir))

    def scalars(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        """Each finite number of ``values`` as the scalar ``<prefix><name>`` at ``step``."""
        if self.writer is None:
            return
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(prefix + name, value, step)

    def traces(self, traces: dict[str, list[dict[str, Any]]]) -> None:
        """The rows of each method trace not written yet, at their own ``step``."""
        if self.writer is None:
            return
        for name, rows in traces.items():
            for row in rows[self._logged.get(name, 0):]:
                step = int(row.get("step", 0))
                self.scalars({k: float(v) for k, v in row.items()
                              if k != "step" and _number(v)}, step, f"trace/{name}/")
            self._logged[name] = len(rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return not isinstance(v, bool)
