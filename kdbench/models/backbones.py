"""Backbones split into a stem and four stages, built from timm models (no hub downloads)."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path

from kdbench.compat import checked_torch_pair

checked_torch_pair()  # before timm imports torchvision: a mismatched pair is one line

import timm  # noqa: E402
import torch  # noqa: E402
from timm.models.resnet import BasicBlock, ResNet  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from kdbench.errors import KdbenchError  # noqa: E402
from kdbench.models.timm_backbones import PreactStages  # noqa: E402

log = logging.getLogger(__name__)


class StagedBackbone(PreactStages, nn.Module):
    """A CNN as ``stem`` + its last four ``stages``; ``forward`` returns the stage maps.

    ``final_relus[i]``: the activation that ends stage i (None: the stage ends without one, its
    output is pre-activation already); ``preact_bns[i]``: the BatchNorm feeding that
    pre-activation (a distiller's margin may come from its statistics). The built-in backbones
    name them; for a timm backbone one forward pass finds them on first use
    (:func:`kdbench.models.timm_backbones.stage_ends`). ``capture_preact()`` records the stage
    maps before their final activation."""

    sequential = True  # the stages can be run one at a time (the dual teacher's RFAMs)

    def __init__(self, stem: nn.Module, stages: list[nn.Module], channels: list[int],
                 final_relus: list[nn.Module | None] | None = None,
                 preact_bns: list[nn.BatchNorm2d] | None = None, name: str = "") -> None:
        super().__init__()
        self.name = name
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(channels)
        if preact_bns is not None:  # kept out of the module tree (not submodules twice)
            self._ends = (list(final_relus or [None] * len(stages)), list(preact_bns), None)

    @property
    def num_features(self) -> int:
        return self.stage_channels[-1]

    def _preact_stages(self) -> tuple[list[nn.Module], nn.Module]:
        return list(self.stages), self

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class HookedBackbone(PreactStages, nn.Module):
    """A timm model whose features_only maps come from hooks (its stages cannot be run one at a
    time): ``forward`` returns its last four maps; no pre-activation maps."""

    sequential = False

    def __init__(self, model: nn.Module, channels: list[int], name: str) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.stage_channels = list(channels)

    @property
    def num_features(self) -> int:
        return self.stage_channels[-1]

    def _preact_stages(self) -> str:
        return "its stage maps come from timm's feature hooks, not from stages run in turn"

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.model(x))[-len(self.stage_channels):]


def _thin_resnet(layers: list[int]) -> nn.Module:
    return ResNet(BasicBlock, layers, channels=(32, 64, 128, 256), stem_width=32, num_classes=0)


def _split_resnet(m: nn.Module) -> StagedBackbone:
    stem = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)
    stages = [m.layer1, m.layer2, m.layer3, m.layer4]
    # a stage ends in its last block's relu(bn2(.) + shortcut): OFD's ResNet choice of BN
    return StagedBackbone(stem, stages, [32, 64, 128, 256], [s[-1].act2 for s in stages],
                          [s[-1].bn2 for s in stages])


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
    # blocks 3, 7, 11 end in rep(x) + skip (no ReLU; rep's last BatchNorm), conv4 in bn4, act4
    bns = [[b for b in blocks[i].rep if isinstance(b, nn.BatchNorm2d)][-1] for i in (2, 6, 10)]
    bns.append(m.bn4)
    return StagedBackbone(stem, stages, [728, 728, 728, 2048], [None, None, None, m.act4], bns,
                          name="xception")


_BUILDERS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], StagedBackbone]]] = {
    "resnet18_thin": (lambda: _thin_resnet([2, 2, 2, 2]), _split_resnet),
    "resnet34_thin": (lambda: _thin_resnet([3, 4, 6, 3]), _split_resnet),
    "xception": (
        lambda: timm.create_model("legacy_xception", pretrained=False, num_classes=0),
        _split_xception,
    ),
}

BACKBONES = tuple(_BUILDERS)  # the same names as kdbench.config.BACKBONES (tested)
IMAGENET = {"xception": "legacy_xception"}  # backbones with timm ImageNet weights
MIN_MATCHED = 0.9  # share of a backbone's parameters a weight file must fill


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def read_state_dict(path: str | Path, what: str = "pretrained weights file") -> dict[str, Tensor]:
    """The tensors of a local weight file: a state dict, or a dict holding one under
    ``state_dict`` or ``model``; one line when it cannot be read (``what`` names the file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise KdbenchError(f"{what} {path} not found; give a local .pth/.pt path (kdbench never "
                           "downloads weights)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise KdbenchError(
            f"{what} {path} needs unpickling (it holds more than tensors), which kdbench does "
            "not do for safety; re-save it as a state dict: torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise KdbenchError(f"{what} {path} cannot be read "
                           f"({str(exc).splitlines()[0][:120]}); is it a PyTorch weight file?"
                           ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise KdbenchError(f"{what} {path} holds no state dict")
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The keys that start with ``prefix``, without it (all keys when ``prefix`` is empty)."""
    if not prefix:
        return state
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_matching(model: nn.Module, state: dict[str, Tensor], source: str,
                  what: str = "backbone") -> dict[str, int]:
    """Load the tensors of ``state`` whose names and shapes fit ``model`` and report the
    parameters matched, missing (left at their initial values) and unexpected (in the file,
    unused: e.g. a classifier); fewer than ``MIN_MATCHED`` of ``what``'s parameters matched is
    an error naming ``source``. Returns the three counts."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    counts = {"matched": sum(p.numel() for k, p in params.items() if k in usable),
              "unexpected": sum(v.numel() for k, v in state.items() if k not in usable)}
    counts["missing"] = total - counts["matched"]
    summary = (f"{_millions(counts['matched'])} of the {what}'s {_millions(total)} parameters "
               f"matched ({counts['matched'] / max(total, 1):.1%}), "
               f"{_millions(counts['missing'])} missing, "
               f"{_millions(counts['unexpected'])} unexpected")
    if counts["matched"] < MIN_MATCHED * total:
        own_key = next((k for k in params if k not in usable), "")
        file_key = next((k for k in state if k not in usable), "")
        raise KdbenchError(
            f"{source}: {summary}; at least {MIN_MATCHED:.0%} must match (is it this "
            f"architecture in timm's naming? the file has e.g. {file_key!r}, the {what} "
            f"{own_key!r})")
    model.load_state_dict(usable, strict=False)
    log.info(f"loaded {source}: {summary}")
    return counts


def load_local_weights(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Load a local state dict (timm naming) into ``model`` (:func:`load_matching`)."""
    state = read_state_dict(path)
    return load_matching(model, state, f"pretrained weights file {Path(path).expanduser()}")


def _imagenet_model(name: str, setting: str) -> nn.Module:
    """The built-in backbone with timm's ImageNet weights, through timm's own loading (its
    cache; a download when online)."""
    if name not in IMAGENET:
        raise KdbenchError(
            f"{setting}=imagenet: {name} has no ImageNet weights (kdbench's thin networks are "
            f"its own); use --set {setting}=none or a local weights file")
    try:
        return timm.create_model(IMAGENET[name], pretrained=True, num_classes=0)
    except Exception as exc:
        from kdbench.models.timm_backbones import weights_error

        cache = f"torch's hub cache ({Path(torch.hub.get_dir()) / 'checkpoints'})"
        raise weights_error(setting, IMAGENET[name], exc, cache) from None


def check_imagenet(name: str, setting: str) -> None:
    """Fail early (one line) unless timm's ImageNet weights of ``name`` are in its cache or can
    be downloaded into it now."""
    if name in IMAGENET:
        url = timm.models.get_pretrained_cfg(IMAGENET[name]).url or ""
        if (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]).is_file():
            return
        _imagenet_model(name, setting)
    elif name in _BUILDERS:
        _imagenet_model(name, setting)
    else:
        from kdbench.models.timm_backbones import features_model

        features_model(name, "teacher.backbone" if setting.startswith("teacher") else
                       "--students", setting)


def check_backbone(name: str, setting: str, size: int | None = None) -> tuple[int, bool]:
    """(stage maps, whether its stages run in turn) of the backbone ``name``; one line unless it
    is a built-in backbone or a timm model with features_only that runs at ``size`` px (built
    and run on the meta device: no weights, no compute)."""
    if name in _BUILDERS:
        return 4, True
    from kdbench.errors import first_line
    from kdbench.models.timm_backbones import MAX_STAGES, features_model, split_features

    with torch.device("meta"):
        model = features_model(name, setting)
        if size is not None:
            try:
                model.eval()(torch.zeros(2, 3, size, size))
            except Exception as exc:
                raise KdbenchError(f"{setting}: {name} does not run at {size} px "
                                   f"({first_line(exc)}); pick another data.size or backbone "
                                   "(`kdbench models PATTERN --size N` tries them)") from None
    return min(len(model.feature_info.channels()), MAX_STAGES), split_features(model) is not None


def build_backbone(name: str, pretrained: str | None = None,
                   setting: str = "pretrained") -> StagedBackbone | HookedBackbone:
    """Build a backbone by name: one of kdbench's three (their exact construction) or any timm
    model with features_only (its last four stage maps); ``pretrained``: none, ``imagenet``
    (timm's weights) or a local weights file; ``setting`` names the option in messages."""
    if name not in _BUILDERS:
        return _timm_backbone(name, pretrained, setting)
    make, split = _BUILDERS[name]
    if pretrained == "imagenet":
        backbone = split(_imagenet_model(name, setting))
    else:
        model = make()
        if pretrained:
            load_local_weights(model, pretrained)
        backbone = split(model)
    backbone.name = name
    return backbone


def _timm_backbone(name: str, pretrained: str | None, setting: str
                   ) -> StagedBackbone | HookedBackbone:
    from kdbench.models.timm_backbones import (
        MAX_STAGES,
        features_model,
        split_features,
    )

    if pretrained == "imagenet":
        model = features_model(name, "backbone", setting)
    else:
        model = features_model(name, "backbone")
        if pretrained:
            load_local_weights(model, pretrained)
    channels = list(model.feature_info.channels())[-MAX_STAGES:]
    split = split_features(model)
    if split is None:
        return HookedBackbone(model, channels, name)
    stem, stages = split
    return StagedBackbone(stem, stages, channels, name=name)


def adapt_input_channels(module: nn.Module, channels: int) -> None:
    """Make the first convolution of ``module`` (a stem reading RGB) read ``channels`` input
    channels: its RGB weights repeated across them and scaled by 3 / ``channels`` (as timm's
    adapt_input_conv), so pretrained weights give the same response to an input whose
    channels repeat the image's colours."""
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None or conv.in_channels != 3 or conv.groups != 1:
        raise KdbenchError(f"the stem's first convolution does not read 3 ungrouped channels "
                           f"({conv}); teacher.freq_view=dwt needs a backbone whose stem does")
    with torch.no_grad():
        weight = conv.weight.repeat(1, (channels + 2) // 3, 1, 1)[:, :channels] * 3 / channels
    conv.in_channels = channels
    conv.weight = nn.Parameter(weight.contiguous())
