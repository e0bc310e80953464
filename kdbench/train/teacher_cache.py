"""Teacher outputs computed once per run for every (training frame, flip), then looked up.

The teacher is frozen and in eval mode, so its output for a frame depends only on the frame and
its flip. The cache is built at the start of ``fit`` in a fixed order (so an interrupted and
resumed run sees the same values) and holds only the fields the method asked for
(``teacher_needs``); above its memory budget the live teacher is used instead.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from kdbench.data.loader import FrameSplit, to_model_input
from kdbench.models.outputs import TeacherOut

LIST_FIELDS = ("rgb", "freq")
TENSOR_FIELDS = ("logits", "rgb_pooled", "freq_pooled", "rgb_proj", "freq_proj")


def flatten(out: TeacherOut) -> dict[str, Tensor]:
    """TeacherOut -> {name: batched tensor} of the fields that are present."""
    flat = {f: getattr(out, f) for f in TENSOR_FIELDS if getattr(out, f) is not None}
    for f in LIST_FIELDS:
        flat.update({f"{f}.{i}": t for i, t in enumerate(getattr(out, f))})
    flat.update({f"aux_logits.{k}": t for k, t in out.aux_logits.items()})
    return flat


def unflatten(flat: dict[str, Tensor]) -> TeacherOut:
    """Inverse of :func:`flatten`."""
    out = TeacherOut(logits=flat["logits"])
    for name, t in flat.items():
        field, _, sub = name.partition(".")
        if field in LIST_FIELDS:
            getattr(out, field).append((int(sub), t))
        elif field == "aux_logits":
            out.aux_logits[sub] = t
        elif field != "logits":
            setattr(out, field, t)
    for f in LIST_FIELDS:
        setattr(out, f, [t for _, t in sorted(getattr(out, f))])
    return out


class TeacherCache:
    """Slot ``2 * position + flip`` of the training split holds that frame's teacher output."""

    def __init__(self, store: dict[str, Tensor]) -> None:
        self.store = store

    def lookup(self, keys: Tensor) -> TeacherOut:
        return unflatten({k: v.index_select(0, keys.to(v.device)) for k, v in self.store.items()})

    @classmethod
    def build(
        cls, teacher: nn.Module, needs: set[str], split: FrameSplit, size: int,
        device: torch.device, batch_size: int, max_bytes: int,
    ) -> TeacherCache | None:
        """Run the teacher over every frame and its mirror; None if it would exceed
        ``max_bytes``."""
        n = len(split)
        store: dict[str, Tensor] = {}
        with torch.no_grad():
            for flip in (False, True):
                for start in range(0, n, batch_size):
                    pos = np.arange(start, min(start + batch_size, n))
                    batch = to_model_input(split[(pos, np.full(len(pos), flip))], device, size)
                    flat = flatten(teacher(batch["image"], needs=needs))
                    if not store:
                        per_frame = sum(t[0].numel() * t.element_size() for t in flat.values())
                        if per_frame * 2 * n > max_bytes:
                            return None
                        store = {k: torch.empty((2 * n, *t.shape[1:]), dtype=t.dtype,
                                                device=device) for k, t in flat.items()}
                    slots = torch.as_tensor(2 * pos + int(flip), device=device)
                    for k, t in flat.items():
                        store[k].index_copy_(0, slots, t)
        return cls(store)
