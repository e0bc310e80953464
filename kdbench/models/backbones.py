"""Backbones split into a stem and four stages, built from timm models (no hub downloads)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import Tensor, nn

from kdbench.errors import KdbenchError


class StagedBackbone(nn.Module):
    """A CNN as ``stem`` + four ``stages``; ``forward`` returns the four stage maps."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], channels: list[int]) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(channels)

    @property
    def num_features(self) -> int:
        return self.stage_channels[-1]

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def _thin_resnet(layers: list[int]) -> nn.Module:
    return ResNet(BasicBlock, layers, channels=(32, 64, 128, 256), stem_width=32, num_classes=0)


def _split_resnet(m: nn.Module) -> StagedBackbone:
    stem = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)
    stages = [m.layer1, m.layer2, m.layer3, m.layer4]
    return StagedBackbone(stem, stages, [32, 64, 128, 256])


def _split_xception(m: nn.Module) -> StagedBackbone:
    """Stages end after blocks 3, 7 and 11 (where the teacher's RFAMs sit) and after conv4."""
    stem = nn.Sequential(m.conv1, m.bn1, m.act1, m.conv2, m.bn2, m.act2)
    blocks = [getattr(m, f"block{i}") for i in range(1, 13)]
    stages = [
        nn.Sequential(*blocks[0:3]),
        nn.Sequential(*blocks[3:7]),
        nn.Sequential(*blocks[7:11]),
        nn.Sequential(blocks[11], m.conv3, m.bn3, m.act3, m.conv4, m.bn4, m.act4),
    ]
    return StagedBackbone(stem, stages, [728, 728, 728, 2048])


_BUILDERS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], StagedBackbone]]] = {
    "resnet18_thin": (lambda: _thin_resnet([2, 2, 2, 2]), _split_resnet),
    "resnet34_thin": (lambda: _thin_resnet([3, 4, 6, 3]), _split_resnet),
    "xception": (
        lambda: timm.create_model("legacy_xception", pretrained=False, num_classes=0),
        _split_xception,
    ),
}

BACKBONES = tuple(_BUILDERS)  # the same names as kdbench.config.BACKBONES (tested)


def load_local_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict (timm naming) into ``model``; classifier keys are ignored."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise KdbenchError(
            f"pretrained weights file {path} not found; give a local .pth/.pt path "
            "(kdbench never downloads weights) or drop the pretrained setting"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise KdbenchError(
            f"pretrained weights file {path} needs unpickling (it holds more than tensors), "
            "which kdbench does not do for safety; re-save it as a state dict: "
            "torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise KdbenchError(f"pretrained weights file {path} cannot be read "
                           f"({str(exc).splitlines()[0][:120]}); is it a PyTorch weight file?"
                           ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise KdbenchError(f"no tensor of {path} matches the backbone; is it the right model?")
    model.load_state_dict(usable, strict=False)


def build_backbone(name: str, pretrained: str | None = None) -> StagedBackbone:
    """Build a staged backbone by name; ``pretrained`` is an optional local weights file."""
    if name not in _BUILDERS:
        raise KdbenchError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    make, split = _BUILDERS[name]
    model = make()
    if pretrained:
        load_local_weights(model, pretrained)
    return split(model)
