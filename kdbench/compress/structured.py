"""Structured channel pruning with Torch-Pruning (DepGraph) to a target share of parameters."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from types import ModuleType

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from kdbench.errors import KdbenchError, first_line
from kdbench.models.cost import count_params

log = logging.getLogger(__name__)

Forward = Callable[[nn.Module, Tensor], Tensor]
ITERATIONS = 25  # bisection steps on the channel ratio


class _TraceError(Exception):
    """Torch-Pruning failed on the model (tracing, pruning or the pruned model's forward)."""


def require_torch_pruning() -> ModuleType:
    """The torch_pruning module, or one line saying how to install it."""
    try:
        import torch_pruning
    except ImportError:
        raise KdbenchError('structured pruning needs Torch-Pruning: pip install '
                           '"kdbench[compress]"') from None
    return torch_pruning


def _flat_tensors(out: object) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat_tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flat_tensors(o)]
    return []


def output_layers(model: nn.Module, example: Tensor, forward: Forward) -> list[nn.Module]:
    """The layers whose outputs are the model's outputs (a classifier: its outputs are the
    classes, never pruned): those returning a tensor ``forward`` returns, else the last
    convolution or linear layer run."""
    outputs: list[tuple[nn.Module, Tensor]] = []

    def hook(module: nn.Module, _inputs: object, out: object) -> None:
        if isinstance(out, Tensor):
            outputs.append((module, out))

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (_ConvNd, nn.Linear))]
    try:
        with torch.no_grad():
            returned = {id(t) for t in _flat_tensors(forward(model, example))}
    except Exception as exc:
        shape = tuple(getattr(example, "shape", ()))
        raise KdbenchError(f"{type(model).__name__} does not run on the example input {shape} "
                           f"({first_line(exc)}); give an example batch the model accepts"
                           ) from None
    finally:
        for h in hooks:
            h.remove()
    direct = [m for m, t in outputs if id(t) in returned]
    return direct or [m for m, _ in outputs[-1:]]


def _prune(model: nn.Module, example: Tensor, ratio: float, forward: Forward,
           ignore: list[nn.Module]) -> None:
    """Prune ``ratio`` of the channels of every coupled group in place (and check that the
    pruned model still runs); any failure is a _TraceError."""
    tp = require_torch_pruning()
    try:
        with torch.enable_grad():
            pruner = tp.pruner.MetaPruner(
                model, example, importance=tp.importance.MagnitudeImportance(p=1),
                pruning_ratio=ratio, ignored_layers=ignore, forward_fn=forward)
            pruner.step()
        with torch.no_grad():
            forward(model, example)
    except Exception as exc:
        raise _TraceError(first_line(exc)) from None


def _trial(model: nn.Module, example: Tensor, ratio: float, forward: Forward,
           ignore: list[nn.Module]) -> int:
    """Parameters left after pruning a copy of ``model`` at ``ratio``."""
    trial = copy.deepcopy(model)
    names = {id(m): n for n, m in model.named_modules()}
    copies = dict(trial.named_modules())
    _prune(trial, example, ratio, forward, [copies[names[id(m)]] for m in ignore])
    return count_params(trial)


def _solve_ratio(model: nn.Module, example: Tensor, target: float, forward: Forward,
                 ignore: list[nn.Module], reference: int, tolerance: float) -> float:
    """The channel ratio whose removed share of ``reference`` parameters is closest to
    ``target`` (bisection; the share rises with the ratio until groups would empty, where
    Torch-Pruning leaves them whole)."""
    removed = 1 - count_params(model) / reference  # ratio 0: the model as it is
    best = (abs(removed - target), 0.0, removed)
    lo, hi = 0.0, 1.0
    for _ in range(ITERATIONS):
        ratio = (lo + hi) / 2
        removed = 1 - _trial(model, example, ratio, forward, ignore) / reference
        best = min(best, (abs(removed - target), ratio, removed))
        if best[0] == 0:
            break
        lo, hi = (ratio, hi) if removed < target else (lo, ratio)
    error, ratio, removed = best
    if error > tolerance:
        raise KdbenchError(
            f"structured pruning cannot remove {_pct(target)} of {reference:,} parameters "
            f"within {_pct(tolerance)}: the closest reachable is {_pct(removed)}; choose a "
            "target near that or use --prune unstructured")
    return ratio


def _pct(x: float) -> str:
    return f"{100 * x:.6g}%"


def _update_stage_channels(model: nn.Module, example: Tensor) -> None:
    """Set ``backbone.stage_channels`` to the channels of the stage maps the model returns."""
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "stage_channels"):
        return
    with torch.no_grad():
        out = model(example)
    feats = getattr(out, "feats", None)
    if feats:
        backbone.stage_channels = [int(f.shape[1]) for f in feats]


def prune_structured(model: nn.Module, example: Tensor, target: float, *,
                     forward: Forward | None = None, ignore: Iterable[nn.Module] = (),
                     reference_params: int | None = None, tolerance: float = 0.01) -> dict:
    """Remove channels in place (L1 magnitude, residual and depthwise groups coupled by DepGraph)
    so that ``target`` of ``reference_params`` (default: the current count) parameters is gone,
    within ``tolerance``. ``forward(model, x)`` returns a tensor (a kdbench student:
    ``lambda m, x: m(x).logits``); the output layers and ``ignore`` keep their outputs. Updates
    ``backbone.stage_channels``; keeps the train/eval mode. Returns ratio, params_before,
    params_after, reference_params and removed (share of reference_params)."""
    from kdbench.compress.unstructured import check_target

    target = check_target(target)
    require_torch_pruning()
    run: Forward = forward or (lambda m, x: m(x))
    before = count_params(model)
    reference = int(reference_params) if reference_params is not None else before
    if reference <= 0:
        raise KdbenchError(f"reference_params must be a positive parameter count, got {reference}")
    ignore = list(ignore)
    own = {id(m) for m in model.modules()}
    for m in ignore:
        if id(m) not in own:
            raise KdbenchError(f"ignored layer {type(m).__name__} is not part of "
                               f"{type(model).__name__}; pass modules of the model being pruned")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        ignored = ignore + [m for m in output_layers(model, example, run)
                            if id(m) not in {id(i) for i in ignore}]
        ratio = _solve_ratio(model, example, target, run, ignored, reference, tolerance)
        if ratio > 0:
            _prune(model, example, ratio, run, ignored)
        _update_stage_channels(model, example)
    except _TraceError as exc:
        raise KdbenchError(f"Torch-Pruning cannot trace {type(model).__name__}: {exc}; prune it "
                           "with --prune unstructured instead") from None
    finally:
        for m, mode in modes.items():
            m.training = mode
    after = count_params(model)
    result = {"ratio": ratio, "params_before": before, "params_after": after,
              "reference_params": reference, "removed": 1 - after / reference}
    log.info(f"structured pruning: channel ratio {ratio:.4f}, {before:,} -> {after:,} parameters, "
             f"{result['removed']:.2%} of {reference:,} removed (target {_pct(target)})")
    return result
