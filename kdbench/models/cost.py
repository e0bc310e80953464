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
        return self.model(x).logits


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
