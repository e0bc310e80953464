"""The teacher a run distils from, built from its settings: dual or single, trained by
kdbench or a detector loaded from ``teacher.checkpoint`` (docs/design.md decision 17)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kdbench.errors import KdbenchError
from kdbench.models.backbones import load_matching, read_state_dict, strip_prefix
from kdbench.models.single_teacher import SingleBranchTeacher
from kdbench.models.teacher import DualBranchTeacher

Teacher = DualBranchTeacher | SingleBranchTeacher


def _head_name(model: nn.Module) -> str:
    head = model.get_classifier()
    return next((n for n, m in model.named_modules() if m is head), "classifier")


def _head_size(model: nn.Module, state: dict[str, Tensor], source: str) -> int | None:
    """1 or 2: the outputs of the classifier in ``state`` (the model's classifier names it);
    None when the file has no such weights."""
    weight = state.get(f"{_head_name(model)}.weight")
    if weight is None:
        return None
    if weight.shape[0] not in (1, 2):
        raise KdbenchError(f"{source}: its head has {weight.shape[0]} outputs; a detector's head "
                           "has two classes or one logit")
    return int(weight.shape[0])


def architecture_teacher(teacher_cfg: dict[str, Any]) -> Teacher:
    """The teacher of the settings section ``teacher_cfg`` with fresh weights (no pretrained
    weights fetched, no checkpoint read): for measuring its cost and speed."""
    return build_teacher({"teacher": {**teacher_cfg, "pretrained": None, "checkpoint": None}})


def build_teacher(cfg: dict[str, Any]) -> Teacher:
    """The teacher of the settings ``cfg``: untrained, or the detector of
    ``teacher.checkpoint`` loaded (matched / missing / unexpected counts logged; under 90 %
    matched is an error)."""
    t = cfg["teacher"]
    kind, checkpoint = t.get("kind", "dual"), t.get("checkpoint")
    state, source = None, ""
    if checkpoint:
        source = f"teacher.checkpoint {Path(checkpoint).expanduser()}"
        state = strip_prefix(read_state_dict(checkpoint, "teacher.checkpoint"),
                             t.get("key_prefix") or "")
        if not state:
            raise KdbenchError(f"{source}: no key starts with teacher.key_prefix "
                               f"{t.get('key_prefix')!r}")
    weights = None if checkpoint else t["pretrained"]
    if kind == "single":
        teacher: Teacher = SingleBranchTeacher(t["backbone"], weights)
        if state is not None:
            heads = _head_size(teacher.model, state, source)
            if heads == 1:
                teacher = SingleBranchTeacher(t["backbone"], None, heads)
            teacher.load_counts = load_matching(teacher.model, state, source, "teacher")
            if heads is None:
                raise KdbenchError(f"{source}: no classifier weights "
                                   f"{_head_name(teacher.model)}.weight in the file (after "
                                   "teacher.key_prefix); a detector's checkpoint holds its head")
    else:
        teacher = DualBranchTeacher(t["backbone"], t["proj_dim"], t["hp_cutoff"], weights,
                                    t.get("freq_backbone"), t.get("freq_view", "dct"),
                                    t.get("wavelet", "haar"), int(t.get("levels", 1)))
        if state is not None:
            teacher.load_counts = load_matching(teacher, state, source, "teacher")
    return teacher

