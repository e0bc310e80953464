"""Backbones split into a stem and four stages, built from timm models (no hub downloads)."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kdbench.compat import checked_torch_pair

checked_torch_pair()  # before timm imports torchvision: a mismatched pair is one line

import timm  # noqa: E402
import torch  # noqa: E402
from timm.models.resnet import BasicBlock, ResNet  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from kdbench.errors import KdbenchError  # noqa: E402

log = logging.getLogger(__name__)


class StagedBackbone(nn.Module):
    """A CNN as ``stem`` + four ``stages``; ``forward`` returns the four stage maps.

    ``final_relus[i]``: the ReLU that ends stage i (None: the stage ends without one, its output
    is pre-activation already); ``preact_bns[i]``: the BatchNorm feeding that pre-activation
    (a distiller's margin may come from its statistics). :meth:`capture_preact` records the
    stage maps before their final ReLU."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], channels: list[int],
                 final_relus: list[nn.Module | None] | None = None,
                 preact_bns: list[nn.BatchNorm2d] | None = None) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(channels)
        self._final_relus = list(final_relus or [None] * len(stages))  # not submodules twice
        self._preact_bns = list(preact_bns or [])

    @property
    def num_features(self) -> int:
        return self.stage_channels[-1]

    @property
    def preact_bns(self) -> list[nn.BatchNorm2d]:
        return self._preact_bns

    @contextmanager
    def capture_preact(self) -> Iterator[list[Tensor]]:
        """Within the block, each forward appends the four pre-ReLU stage maps to the list it
        yields (copies: ReLUs work in place)."""
        maps: list[Tensor] = []

        def before_relu(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0]
            maps.append(x.clone() if getattr(module, "inplace", False) else x)

        def stage_output(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
            maps.append(out.clone())  # the next stage may start with an in-place ReLU

        handles = [relu.register_forward_pre_hook(before_relu) if relu is not None
                   else stage.register_forward_hook(stage_output)
                   for relu, stage in zip(self._final_relus, self.stages, strict=True)]
        try:
            yield maps
        finally:
            for handle in handles:
                handle.remove()

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
    return StagedBackbone(stem, stages, [728, 728, 728, 2048], [None, None, None, m.act4], bns)


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


def load_local_weights(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Load a local state dict (timm naming) into ``model`` and report the parameters matched,
    missing (left at their initial values) and unexpected (in the file, unused: e.g. the
    classifier); fewer than ``MIN_MATCHED`` of the backbone's parameters matched is an error.
    Returns the three counts."""
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
    if not isinstance(state, dict):
        raise KdbenchError(f"pretrained weights file {path} holds no state dict")
    own = model.state_dict()
    state = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    counts = {"matched": sum(p.numel() for k, p in params.items() if k in usable),
              "unexpected": sum(v.numel() for k, v in state.items() if k not in usable)}
    counts["missing"] = total - counts["matched"]
    summary = (f"{_millions(counts['matched'])} of the backbone's {_millions(total)} parameters "
               f"matched, {_millions(counts['missing'])} missing, "
               f"{_millions(counts['unexpected'])} unexpected")
    if counts["matched"] < MIN_MATCHED * total:
        own_key = next((k for k in params if k not in usable), "")
        file_key = next((k for k in state if k not in usable), "")
        raise KdbenchError(
            f"pretrained weights file {path}: {summary}; at least {MIN_MATCHED:.0%} must match "
            f"(is it this backbone in timm's naming? the file has e.g. {file_key!r}, the "
            f"backbone {own_key!r})")
    model.load_state_dict(usable, strict=False)

    log.info(f"loaded {path}: {summary}")
    return counts


def _imagenet_model(name: str, setting: str) -> nn.Module:
    """The backbone with timm's ImageNet weights, through timm's own loading (its cache; a
    download when online)."""
    if name not in IMAGENET:
        raise KdbenchError(
            f"{setting}=imagenet: {name} has no ImageNet weights (kdbench's thin networks are "
            f"its own); use --set {setting}=none or a local weights file")
    try:
        return timm.create_model(IMAGENET[name], pretrained=True, num_classes=0)
    except Exception as exc:  # offline with nothing cached, a damaged download, ...
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise KdbenchError(
            f"{setting}=imagenet: timm could not load the ImageNet weights of {IMAGENET[name]} "
            f"({reason}); offline they must already be in torch's hub cache "
            f"({Path(torch.hub.get_dir()) / 'checkpoints'}); or use --set {setting}=none "
            "(train from scratch) or a local weights file") from None


def check_imagenet(name: str, setting: str) -> None:
    """Fail early (one line) unless timm's ImageNet weights of ``name`` are in torch's hub cache
    or can be downloaded into it now."""
    if name in IMAGENET:
        url = timm.models.get_pretrained_cfg(IMAGENET[name]).url or ""
        if (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]).is_file():
            return
    _imagenet_model(name, setting)


def build_backbone(name: str, pretrained: str | None = None,
                   setting: str = "pretrained") -> StagedBackbone:
    """Build a staged backbone by name; ``pretrained``: none, ``imagenet`` (timm's ImageNet
    weights) or a local weights file; ``setting`` names the option in messages."""
    if name not in _BUILDERS:
        raise KdbenchError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    make, split = _BUILDERS[name]
    if pretrained == "imagenet":
        return split(_imagenet_model(name, setting))
    model = make()
    if pretrained:
        load_local_weights(model, pretrained)
    return split(model)
