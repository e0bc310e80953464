"""Any timm CNN as a backbone, read through ``features_only``: the last four stage maps, with
channels and strides from ``feature_info`` (docs/design.md decision 17)."""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models._features import FeatureListNet
from torch import Tensor, nn

from kdbench.errors import KdbenchError, first_line

log = logging.getLogger(__name__)

MAX_STAGES = 4  # the stage maps a backbone gives: its last four (fewer if it has fewer)
TRACE_SIZE = 64  # the image side of the one forward pass that finds where each stage ends
# modules that pass their input through unchanged in eval mode
_TRANSPARENT = {"Identity", "Dropout", "Dropout2d", "DropPath", "DropBlock2d"}


@functools.cache
def timm_names() -> tuple[str, ...]:
    """Every model name timm registers."""
    return tuple(timm.list_models())


def close_names(name: str, n: int = 3) -> list[str]:
    """The ``n`` backbone names closest to ``name``: kdbench's own three and timm's."""
    from kdbench.config import BACKBONES

    return difflib.get_close_matches(name, (*BACKBONES, *timm_names()), n=n, cutoff=0.5)


def check_timm_name(name: str, setting: str) -> None:
    """One line unless ``name`` is a timm model (``setting`` names the option)."""
    if name not in timm_names():
        near = close_names(name)
        hint = f" (closest: {', '.join(near)})" if near else ""
        raise KdbenchError(f"{setting}: unknown model {name!r}{hint}; `kdbench models PATTERN` "
                           "lists the backbones that work")


def timm_model(name: str, setting: str, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)``, with timm's pretrained weights when ``weights``
    names the option that asked for them (``student.pretrained``: through timm's cache, a
    download when online); one line for an unknown name, a model without those weights or
    whose weights cannot be had, and a model that cannot be built so (features_only)."""
    check_timm_name(name, setting)
    if weights and not imagenet_weights(name):
        raise KdbenchError(f"{weights}=imagenet: timm has no pretrained weights for {name}; use "
                           f"--set {weights}=none or a local weights file")
    try:
        return timm.create_model(name, pretrained=bool(weights), **kwargs)
    except Exception as exc:
        if weights:
            cache = (f"timm's cache (Hugging Face hub: {Path.home() / '.cache' / 'huggingface'}"
                     f"; or {Path(torch.hub.get_dir())})")
            raise weights_error(weights, name, exc, cache) from None
        if kwargs.get("features_only"):
            raise KdbenchError(f"{setting}: timm model {name!r} does not give its stage maps "
                               f"through features_only ({first_line(exc, 120)}); pick a CNN "
                               "(`kdbench models PATTERN` lists the backbones that work)"
                               ) from None
        raise KdbenchError(f"{setting}: timm could not build {name} ({first_line(exc)})"
                           ) from None


def features_model(name: str, setting: str, weights: str | None = None) -> nn.Module:
    """``timm.create_model(name, features_only=True)`` (:func:`timm_model`)."""
    return timm_model(name, setting, weights, features_only=True)


def is_activation(module: nn.Module) -> bool:
    """An activation layer of torch or timm."""
    kind = type(module).__module__
    return kind.startswith(("torch.nn.modules.activation", "timm.layers.activations"))


def _significant(module: nn.Module) -> bool:
    """A module whose call shapes a stage's output: a leaf that is not a pass-through, or a
    BatchNorm (timm's BatchNormAct2d holds its activation as a child)."""
    if type(module).__name__ in _TRANSPARENT:
        return False
    return isinstance(module, nn.BatchNorm2d) or not any(True for _ in module.children())


def stage_ends(stages: list[nn.Module], run: nn.Module, size: int = TRACE_SIZE
               ) -> tuple[list[nn.Module | None], list[nn.BatchNorm2d], str | None]:
    """Where each stage ends, found by one eval-mode forward pass ``run(x)`` on zeros while
    hooks record the modules each stage calls, in order: its final activation (None when the
    stage ends without one: its output is a pre-activation, e.g. BN + shortcut) and the
    BatchNorm feeding that pre-activation. Returns (final activations, BatchNorms, None), or
    ([], [], why) when a stage ends in something else."""
    calls: list[list[nn.Module]] = [[] for _ in stages]
    handles = []
    for i, stage in enumerate(stages):
        for module in stage.modules():
            if _significant(module):
                handles.append(module.register_forward_pre_hook(
                    lambda m, args, i=i: calls[i].append(m)))
    owner = next(run.parameters())
    try:
        with torch.no_grad():
            run(torch.zeros(1, 3, size, size, device=owner.device, dtype=owner.dtype))
    finally:
        for handle in handles:
            handle.remove()
    finals: list[nn.Module | None] = []
    bns: list[nn.BatchNorm2d] = []
    for i, called in enumerate(calls):
        last = called[-1] if called else None
        if last is None or not (is_activation(last) or isinstance(last, nn.BatchNorm2d)):
            what = type(last).__name__ if last is not None else "nothing"
            return [], [], f"its stage {i + 1} ends in {what}, not BatchNorm [+ activation]"
        before = called[:-1] if is_activation(last) else called
        bn = _feeding_bn(before, {id(m): n for n, m in stages[i].named_modules()})
        if isinstance(bn, str):
            return [], [], f"its stage {i + 1}'s end is fed by {bn}"
        finals.append(last if is_activation(last) else None)
        bns.append(bn)
    return finals, bns, None


_SHORTCUT = ("downsample", "shortcut", "skip")  # timm's names of a residual's side path


def _feeding_bn(before: list[nn.Module], names: dict[int, str]) -> nn.BatchNorm2d | str:
    """The last BatchNorm the stage calls before its end on its main path: a residual's
    shortcut BatchNorm (timm names it downsample / shortcut / skip), called after the main
    path's, is passed over. A block that sums several BatchNorm'd branches (RepVGG) gives its
    last branch's."""
    for m in reversed(before):
        name = names.get(id(m), "")
        if isinstance(m, nn.BatchNorm2d) and not any(
                part.startswith(_SHORTCUT) for part in name.split(".")):
            return m
    return "no BatchNorm on its main path"


@contextmanager
def preact_hooks(stages: list[nn.Module], finals: list[nn.Module | None]
                 ) -> Iterator[list[Tensor]]:
    """Within the block, each forward appends the stage maps before their final activation to
    the list it yields: the input of the activation's last call in the stage (a copy: many
    work in place), or the stage's output where it ends without one."""
    maps: list[Tensor] = []
    last: dict[int, Tensor] = {}

    def before(i: int, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        last[i] = args[0].clone() if getattr(module, "inplace", False) else args[0]

    def after(i: int, module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        maps.append(last.pop(i) if finals[i] is not None else out.clone())

    handles = []
    for i, (stage, final) in enumerate(zip(stages, finals, strict=True)):
        if final is not None:
            handles.append(final.register_forward_pre_hook(functools.partial(before, i)))
        handles.append(stage.register_forward_hook(functools.partial(after, i)))
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


Ends = tuple[list[nn.Module | None], list[nn.BatchNorm2d], str | None]


class PreactStages:
    """Pre-activation stage maps for a module whose stages are submodules: a subclass gives
    :meth:`_preact_stages` (the stage modules and the module whose forward runs them, or why
    there are none), or sets ``_ends`` itself; the ends are traced on first use."""

    name: str
    training: bool
    _ends: Ends | None = None

    def _preact_stages(self) -> tuple[list[nn.Module], nn.Module] | str:
        raise NotImplementedError

    def _stage_ends(self) -> Ends:
        if self._ends is None:
            found = self._preact_stages()
            if isinstance(found, str):
                self._ends = ([], [], found)
            else:
                was_training = self.training
                self.eval()  # type: ignore[attr-defined]
                try:
                    self._ends = stage_ends(*found)
                finally:
                    self.train(was_training)  # type: ignore[attr-defined]
        return self._ends

    def preact_problem(self) -> str | None:
        """Why there are no pre-activation stage maps (None: there are)."""
        return self._stage_ends()[2]

    @property
    def preact_bns(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm feeding each stage's pre-activation (a distiller's margin)."""
        return self._stage_ends()[1]

    @contextmanager
    def capture_preact(self) -> Iterator[list[Tensor]]:
        """Within the block, each forward appends the pre-activation stage maps to the list it
        yields (copies: activations work in place)."""
        finals, _, problem = self._stage_ends()
        found = self._preact_stages()
        if problem or isinstance(found, str):
            raise KdbenchError(f"{self.name} gives no pre-activation stage maps: {problem}")
        with preact_hooks(found[0], finals) as maps:
            yield maps


def weights_error(setting: str, name: str, exc: Exception, cache: str) -> KdbenchError:
    """The one line for pretrained weights timm could not load (offline with nothing cached, a
    damaged download, ...); ``cache`` says where they must be offline."""
    reason = first_line(exc)
    return KdbenchError(
        f"{setting}=imagenet: timm could not load the pretrained weights of {name} ({reason}); "
        f"offline they must already be in {cache}; or use --set {setting}=none (train from "
        "scratch) or a local weights file")


def _sequence(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The modules a features_only model runs one after another, with the feature module
    names they answer to; None when its features come from hooks."""
    if isinstance(model, FeatureListNet):
        return [(name, module) for name, module in model.items()]
    if (hasattr(model, "conv_stem") and hasattr(model, "blocks")
            and hasattr(model, "_stage_out_idx") and model.feature_hooks is None):
        head = [n for n in ("conv_stem", "bn1", "act1") if hasattr(model, n)]
        # feature 0 is called bn1 but is the whole stem's output (with act1 where there is one)
        seq = [(f"_{n}", getattr(model, n)) for n in head[:-1]]
        seq.append(("bn1", getattr(model, head[-1])))
        return seq + [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
    return None


def split_features(model: nn.Module) -> tuple[nn.Module, list[nn.Module]] | None:
    """(stem, the last four stages) of a features_only model whose modules run in sequence:
    stage k ends at the k-th of its last four feature modules; None for hook-based ones."""
    seq = _sequence(model)
    if seq is None:
        return None
    names = [n for n, _ in seq]
    if isinstance(model, FeatureListNet):
        wanted = list(model.return_layers)
    else:
        wanted = list(model.feature_info.module_name())
    ends = sorted(names.index(n) for n in wanted if n in names)
    if len(ends) != len(wanted):
        return None
    kept = ends[-MAX_STAGES:]
    starts = [(ends[-MAX_STAGES - 1] + 1) if len(ends) > MAX_STAGES else 0] + \
        [e + 1 for e in kept[:-1]]
    stem = nn.Sequential(*[m for _, m in seq[:starts[0]]])
    stages = [nn.Sequential(*[m for _, m in seq[a:b + 1]]) for a, b in zip(starts, kept)]
    return stem, stages


def imagenet_weights(name: str) -> bool:
    """Whether timm has pretrained weights for the model ``name``."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, KeyError):
        return False
    return bool(cfg and (cfg.url or cfg.hf_hub_id or cfg.file))
