"""A single-branch teacher: one timm classifier on RGB, its stage maps read by hooks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn

from kdbench.errors import KdbenchError
from kdbench.models.backbones import (
    _BUILDERS,
    _imagenet_model,
    load_local_weights,
)
from kdbench.models.outputs import TeacherOut
from kdbench.models.timm_backbones import MAX_STAGES, PreactStages, timm_model


def classifier_model(name: str, num_classes: int, pretrained: str | None = None) -> nn.Module:
    """A timm classifier (timm's naming, so a detector's own state dict loads into it): a
    built-in backbone with a linear head, or ``timm.create_model(name)``."""
    if name in _BUILDERS:
        model = (_imagenet_model(name, "teacher.pretrained") if pretrained == "imagenet"
                 else _BUILDERS[name][0]())
        model.reset_classifier(num_classes)
    else:
        weights = "teacher.pretrained" if pretrained == "imagenet" else None
        model = timm_model(name, "teacher.backbone", weights, num_classes=num_classes)
    if pretrained and pretrained != "imagenet":
        load_local_weights(model, pretrained)
    if not getattr(model, "feature_info", None):
        raise KdbenchError(f"teacher.backbone={name}: the timm model names no feature modules "
                           "(feature_info), so its stage maps cannot be read; pick a CNN")
    return model


class SingleBranchTeacher(PreactStages, nn.Module):
    """One classifier on RGB (teacher.kind=single).

    Stage maps: the outputs of the model's last four ``feature_info`` modules, taken by hooks
    during its own forward; ``rgb_pooled``: the last map average-pooled; ``logits``: the
    model's head (a one-logit head z becomes the two-class logits (0, z): the same
    probability; z is the fake logit). It has no projector: ``rgb_proj`` is the last stage map
    itself (F_Tr = T_r(x); ``rgb_proj_nonnegative`` is False: the map may be signed),
    ``proj_dim`` its width, and ``aux_logits['rgb']`` are its logits (the classifier is the
    RGB branch's head). ``rgb_branch`` is the teacher itself (stage widths and
    pre-activation maps, as a dual teacher's branch)."""

    kind = "single"
    rgb_proj_nonnegative = False  # F_Tr is the last stage map, signed for linear bottlenecks

    def __init__(self, backbone: str, pretrained: str | None = None,
                 num_classes: int = 2) -> None:
        super().__init__()
        self.name = backbone
        self.num_classes = num_classes
        self.model = classifier_model(backbone, num_classes, pretrained)
        infos = list(self.model.feature_info)[-MAX_STAGES:]
        self._taps = [(self.model.get_submodule(d["module"]), d.get("hook_type", "forward"))
                      for d in infos]
        self.stage_channels = [int(d["num_chs"]) for d in infos]
        self.proj_dim = self.stage_channels[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)

    @property
    def rgb_branch(self) -> SingleBranchTeacher:
        return self

    def branch_channels(self, branch: str) -> list[int]:
        if branch != "rgb":
            raise KdbenchError(f"the single-branch teacher {self.name} has no {branch} branch; "
                               "use --modes rgb (or teacher.kind=dual)")
        return self.stage_channels

    def _preact_stages(self) -> tuple[list[nn.Module], nn.Module] | str:
        if any(kind != "forward" for _, kind in self._taps):
            return "its stage maps are read before a module, not at a stage's end"
        return [m for m, _ in self._taps], self.model

    @contextmanager
    def _stage_maps(self) -> Iterator[list[Tensor]]:
        maps: list[Tensor] = []

        def after(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
            maps.append(out)

        def before(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            maps.append(args[0])

        handles = [m.register_forward_hook(after) if kind == "forward"
                   else m.register_forward_pre_hook(before) for m, kind in self._taps]
        try:
            yield maps
        finally:
            for handle in handles:
                handle.remove()

    def forward(self, x: Tensor, needs: set[str] | frozenset[str] | None = None) -> TeacherOut:
        needs = {"rgb", "rgb_proj", "rgb_preact"} if needs is None else needs
        with ExitStack() as stack:
            pre = (stack.enter_context(self.capture_preact()) if "rgb_preact" in needs else [])
            maps = stack.enter_context(self._stage_maps())
            logits = self.model(x)
        if logits.shape[1] == 1:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        out = TeacherOut(logits=logits)
        if needs & {"rgb", "rgb_proj"}:
            out.rgb, out.rgb_pooled = list(maps), self.pool(maps[-1]).flatten(1)
        if "rgb_proj" in needs:
            out.rgb_proj = maps[-1]
            out.aux_logits["rgb"] = logits
        out.rgb_preact = list(pre)
        return out
