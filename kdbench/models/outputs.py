"""Named model outputs shared by students, the teacher and every distiller."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class StudentOut:
    """Student forward result.

    logits: [B, 2]; feats: one map per stage, the last is S_B(x); pooled: [B, D] penultimate vector.
    """

    logits: Tensor
    feats: list[Tensor]
    pooled: Tensor


@dataclass
class TeacherOut:
    """Dual-branch teacher forward result; fields a caller did not ask for are None/empty.

    rgb / freq: stage maps of each branch (after the RFAMs); *_pooled: pooled last maps;
    rgb_proj / freq_proj: the condensed features F_Tr = G_Tr(T_r(x)) and F_Tf = G_Tf(T_f(x^F)).
    aux_logits: logits of the auxiliary pooled classifiers that train the projectors.
    """

    logits: Tensor
    rgb: list[Tensor] = field(default_factory=list)
    freq: list[Tensor] = field(default_factory=list)
    rgb_pooled: Tensor | None = None
    freq_pooled: Tensor | None = None
    rgb_proj: Tensor | None = None
    freq_proj: Tensor | None = None
    aux_logits: dict[str, Tensor] = field(default_factory=dict)
