"""Model cost: parameter count and GFLOPs (fvcore; one fused multiply-add = one FLOP)."""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn


class _LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model, x)


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inference path of a student or the teacher (the teacher without its projectors)."""
    if getattr(model, "kind", None) in ("dual", "single"):  # a teacher: no projectors
        return model(x, needs=set()).logits
    return model(x).logits


def images_per_s(model: nn.Module, size: int, device: torch.device, batch: int = 16,
                 repeats: int = 3) -> float:
    """Measured inference throughput (eval mode, no grad) on ``device``: the best of
    ``repeats`` timed batches after one warm-up batch."""
    import time

    model = model.to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    best = float("inf")
    with torch.no_grad():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            logits_of(model, x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # the first batch warms up
                best = min(best, time.perf_counter() - t0)
    return batch / best


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops(model: nn.Module, size: int) -> float:
    """GFLOPs of one ``size`` x ``size`` image through ``model`` (inference path, logits)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, 3, size, size, device=device)
            analysis = FlopCountAnalysis(_LogitsOnly(model), x)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return analysis.total() / 1e9
    finally:
        model.train(was_training)
