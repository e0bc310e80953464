"""Frequency-aware view x^F = IDCT(HP(DCT(x))) (paper Eq. 1), computed on the device."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Orthonormal DCT-II matrix D (n x n): X = D @ x @ D.T is the 2-D DCT of x."""
    k = torch.arange(n, dtype=dtype).unsqueeze(1)
    i = torch.arange(n, dtype=dtype).unsqueeze(0)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def highpass_mask(h: int, w: int, cutoff: float) -> Tensor:
    """1 outside, 0 inside the top-left (low-frequency) triangle u/h + v/w < 2 * cutoff."""
    u = torch.arange(h, dtype=torch.float64).unsqueeze(1) / h
    v = torch.arange(w, dtype=torch.float64).unsqueeze(0) / w
    return ((u + v) >= 2 * cutoff).to(torch.float64)


class FrequencyView(nn.Module):
    """Per-channel 2-D DCT, zero the low-frequency triangle, inverse DCT.

    ``cutoff`` is the triangle's leg as a fraction of the side (0.33 zeroes the coefficients
    with u/H + v/W < 0.66). The DCT matrices are fixed buffers built for the input size on first
    use, so the loader supplies RGB only.
    """

    def __init__(self, cutoff: float = 0.33) -> None:
        super().__init__()
        if not 0.0 < cutoff < 1.0:
            raise ValueError(f"frequency cutoff must be in (0, 1), got {cutoff}")
        self.cutoff = cutoff
        self._cache: dict[tuple[int, int, torch.device, torch.dtype], tuple[Tensor, ...]] = {}

    def _mats(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
        key = (h, w, device, dtype)
        if key not in self._cache:
            dh, dw = dct_matrix(h), dct_matrix(w)
            mask = highpass_mask(h, w, self.cutoff)
            self._cache[key] = tuple(t.to(device=device, dtype=dtype) for t in (dh, dw, mask))
        return self._cache[key]

    def forward(self, x: Tensor) -> Tensor:
        """x^F of ``x``, computed in full fp32 (not bf16 under autocast, not TF32), returned
        in ``x``'s dtype."""
        dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        with torch.autocast(x.device.type, enabled=False), _full_fp32_matmul():
            dh, dw, mask = self._mats(x.shape[-2], x.shape[-1], x.device, dtype)
            coeffs = dh @ x.to(dtype) @ dw.T
            out = dh.T @ (coeffs * mask) @ dw
        return out.to(x.dtype)


@contextlib.contextmanager
def _full_fp32_matmul() -> Iterator[None]:
    """fp32 matmuls in full precision inside (TF32, allowed for the models on CUDA, keeps 10
    mantissa bits: a 1e-3 relative error)."""
    before = torch.get_float32_matmul_precision()
    if before == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
