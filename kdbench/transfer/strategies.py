"""What a transfer strategy trains (``--strategy``): ``linear`` (the head), ``partial:K`` (the
last K stages and the head), ``full``, ``lora:R`` (PEFT LoRA of rank R on the plain
convolutions, the head trained, merged into the convolutions before export) and ``adapter`` (a
depthwise-separable convolution block after the last stage, residual and starting as the
identity, the backbone frozen)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdbench.errors import KdbenchError
from kdbench.models.outputs import StudentOut
from kdbench.models.students import WrappedStudent

STRATEGIES = ("linear", "partial:K", "full", "lora:R", "adapter")


@dataclass(frozen=True)
class Strategy:
    name: str  # linear | partial | full | lora | adapter
    k: int | None = None  # partial: stages; lora: rank

    def __str__(self) -> str:
        return f"{self.name}:{self.k}" if self.k is not None else self.name


def parse_strategy(spec: str) -> Strategy:
    """``linear``, ``partial:K``, ``full``, ``lora:R`` or ``adapter``; one line otherwise."""
    name, _, value = str(spec).partition(":")
    if name in ("linear", "full", "adapter") and not value:
        return Strategy(name)
    if name in ("partial", "lora") and value.isdigit() and int(value) >= 1:
        return Strategy(name, int(value))
    raise KdbenchError(f"unknown --strategy {spec!r}; choose one of {', '.join(STRATEGIES)} "
                       "(K, R: whole numbers >= 1)")


class Adapter(nn.Module):
    """x + pointwise(relu(depthwise(x))): a depthwise 3x3 and a pointwise 1x1 convolution,
    the pointwise one zero at the start, so the adapted model starts as the original."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pointwise = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.pointwise.weight)
        nn.init.zeros_(self.pointwise.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pointwise(torch.relu(self.depthwise(x)))


class AdaptedStudent(WrappedStudent):
    """A student with an :class:`Adapter` on its last stage map (the student interface)."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__(student)
        self.adapter = Adapter(student.stage_channels[-1])

    def forward(self, x: Tensor, preact: bool = False) -> StudentOut:
        """As :meth:`Student.forward`, the last stage map passed through the adapter (its
        pre-activation maps, when asked, are the backbone's)."""
        maps: list[Tensor] = []
        if preact:
            with self.backbone.capture_preact() as maps:
                feats = self.backbone(x)
        else:
            feats = self.backbone(x)
        feats = [*feats[:-1], self.adapter(feats[-1])]
        pooled = self.pool(feats[-1]).flatten(1)
        return StudentOut(logits=self.fc(pooled), feats=feats, pooled=pooled, preact=maps)


def _head(model: nn.Module) -> nn.Module:
    head = getattr(model, "fc", None)
    if head is None:
        raise KdbenchError(f"{type(model).__name__} has no classifier head named fc; transfer "
                           "takes a kdbench student run")
    return head


def plain_convolutions(model: nn.Module) -> list[str]:
    """The qualified names of the ungrouped convolutions (LoRA's targets: PEFT merges no
    grouped or depthwise convolution)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups == 1]


def _eval_mode(module: nn.Module, _inputs: object) -> None:
    module.training = False


def freeze_batchnorm(model: nn.Module) -> int:
    """Keep every BatchNorm whose parameters are frozen in eval mode while the model trains
    (its running statistics neither used from the batch nor updated): a frozen layer is
    frozen, as a linear probe means. Returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters(recurse=False)):
            module.register_forward_pre_hook(_eval_mode)
            count += 1
    return count


def apply(student: nn.Module, strategy: Strategy) -> nn.Module:
    """The model to train for ``strategy``, its trainable parameters set (the others frozen,
    their BatchNorm layers kept in eval mode); a strategy the backbone cannot take is one
    line. A cross-resolution student keeps its degradation outermost (the adapted model reads
    the small image)."""
    from kdbench.models.degrade import DegradedStudent

    if isinstance(student, DegradedStudent):
        student.student = apply(student.student, strategy)
        return student
    model = _apply(student, strategy)
    freeze_batchnorm(model)
    return model


def _apply(student: nn.Module, strategy: Strategy) -> nn.Module:
    if strategy.name == "full":
        return student.requires_grad_(True)
    student.requires_grad_(False)
    if strategy.name == "linear":
        _head(student).requires_grad_(True)
        return student
    if strategy.name == "partial":
        stages = getattr(student.backbone, "stages", None)
        if stages is None or strategy.k > len(stages):
            have = ("no stages that can be trained apart (timm feature hooks)"
                    if stages is None else f"{len(stages)} stages")
            choose = f"partial:1..{len(stages)}, " if stages else ""
            raise KdbenchError(f"--strategy {strategy} does not fit {student.name}: it has "
                               f"{have}; choose {choose}linear, full, lora:R or adapter")
        for stage in list(stages)[-strategy.k:]:
            stage.requires_grad_(True)
        _head(student).requires_grad_(True)
        return student
    if strategy.name == "adapter":
        adapted = AdaptedStudent(student)
        adapted.adapter.requires_grad_(True)
        _head(student).requires_grad_(True)
        return adapted
    return _lora(student, strategy.k)


def require_peft() -> None:
    """One line when PEFT (the transfer extra) is not installed."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise KdbenchError('--strategy lora needs PEFT: pip install "kdbench[transfer]"') \
            from None


def _lora(student: nn.Module, rank: int) -> nn.Module:
    """PEFT LoRA of ``rank`` on every plain convolution, the head trained alongside."""
    require_peft()
    from peft import LoraConfig, get_peft_model

    targets = plain_convolutions(student.backbone)
    if not targets:
        raise KdbenchError(f"--strategy lora:{rank} does not fit {student.name}: it has no "
                           "ungrouped convolution to adapt; choose linear, partial:K, full or "
                           "adapter")
    _head(student)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=[f"backbone.{t}"
                                                                  for t in targets],
                        modules_to_save=["fc"])
    return get_peft_model(student, config)


def finalize(model: nn.Module) -> nn.Module:
    """The trained model as it is exported: LoRA merged into its convolutions (the student's
    own architecture again); the others as they are."""
    from kdbench.models.degrade import DegradedStudent

    if isinstance(model, DegradedStudent):
        model.student = finalize(model.student)
        return model
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
