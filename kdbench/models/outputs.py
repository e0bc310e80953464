"""Named model outputs shared by students, the teacher and every distiller."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class StudentOut:
    """Student forward result.

    logits: [B, 2]; feats: one map per stage, the last is S_B(x); pooled: [B, D] penultimate vector;
    preact: the stage maps before their final ReLU (only when asked: ``student(x, preact=True)``).
    """

    logits: Tensor
    feats: list[Tensor]
    pooled: Tensor
    preact: list[Tensor] = field(default_factory=list)


@dataclass
class TeacherOut:
    """Dual-branch teacher forward result; fields a caller did not ask for are None/empty.

    rgb / freq: stage maps of each branch (after the RFAMs); *_pooled: pooled last maps;
    rgb_proj / freq_proj: the condensed features F_Tr = G_Tr(T_r(x)) and F_Tf = G_Tf(T_f(x^F)).
    aux_logits: logits of the auxiliary pooled classifiers that train the projectors.
    rgb_preact / freq_preact: each branch's stage maps before their final ReLU (and before the
    RFAMs).
    """

    logits: Tensor
    rgb: list[Tensor] = field(default_factory=list)
    freq: list[Tensor] = field(default_factory=list)
    rgb_preact: list[Tensor] = field(default_factory=list)
    freq_preact: list[Tensor] = field(default_factory=list)
    rgb_pooled: Tensor | None = None
    freq_pooled: Tensor | None = None
    rgb_proj: Tensor | None = None
    freq_proj: Tensor | None = None
    aux_logits: dict[str, Tensor] = field(default_factory=dict)


LIST_FIELDS = ("rgb", "freq", "rgb_preact", "freq_preact")
TENSOR_FIELDS = ("logits", "rgb_pooled", "freq_pooled", "rgb_proj", "freq_proj")
PREFIX = "teacher."  # batch keys of cached teacher outputs (kdbench.train.teacher_cache)


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


def from_batch(batch: dict[str, Tensor]) -> TeacherOut | None:
    """The cached teacher outputs a batch carries (None if it carries none)."""
    flat = {k[len(PREFIX):]: v for k, v in batch.items() if k.startswith(PREFIX)}
    return unflatten(flat) if flat else None
