"""The orthonormal 2-D Haar wavelet transform in plain tensor ops (a stride-2 convolution with
four fixed 2x2 filters per channel, and its transpose), and the wavelet view of the teacher's
frequency branch (``teacher.freq_view: dwt``).

One level maps x [N, C, H, W] (H, W even) to four bands [N, C, H/2, W/2]; with a, b, c, d the
top-left, top-right, bottom-left and bottom-right pixels of each 2x2 block:

    LL = (a + b + c + d) / 2      LH = (a + b - c - d) / 2
    HL = (a - b + c - d) / 2      HH = (a - b - c + d) / 2

(LH: the difference between rows, horizontal edges; HL: between columns, vertical edges.) The
four filters are orthonormal, so the transform keeps the energy (sum of squares) and its
transpose is its inverse. Plain convolutions: differentiable, on any device, and exported to
ONNX as standard ops. Other wavelets (``teacher.wavelet``) come from PyWavelets' filters through
ptwt, when installed (kdbench.models.wavelet_library).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_HAAR = torch.tensor([[[1.0, 1.0], [1.0, 1.0]],      # LL
                      [[1.0, 1.0], [-1.0, -1.0]],    # LH
                      [[1.0, -1.0], [1.0, -1.0]],    # HL
                      [[1.0, -1.0], [-1.0, 1.0]]]) / 2  # HH


def _filters(channels: int, like: Tensor) -> Tensor:
    """The four Haar filters for each of ``channels`` (grouped convolution weight [4C, 1, 2, 2])."""
    return _HAAR.to(like.device, like.dtype).unsqueeze(1).repeat(channels, 1, 1, 1)


def haar_dwt(x: Tensor) -> tuple[Tensor, Tensor]:
    """One level of the Haar DWT: (LL [N, C, H/2, W/2], highs [N, C, 3, H/2, W/2] as LH, HL,
    HH). H and W must be even."""
    n, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"the Haar DWT needs an even height and width, got {h} x {w}")
    bands = F.conv2d(x, _filters(c, x), stride=2, groups=c).view(n, c, 4, h // 2, w // 2)
    return bands[:, :, 0], bands[:, :, 1:]


def haar_idwt(low: Tensor, highs: Tensor) -> Tensor:
    """The inverse of :func:`haar_dwt`."""
    n, c, h, w = low.shape
    bands = torch.cat([low.unsqueeze(2), highs], dim=2).view(n, 4 * c, h, w)
    return F.conv_transpose2d(bands, _filters(c, low), stride=2, groups=c)


def wavedec(x: Tensor, levels: int) -> tuple[Tensor, list[Tensor]]:
    """``levels`` levels of the Haar DWT: (the coarsest LL, [highs of level 1 (finest), ...,
    level ``levels``])."""
    highs = []
    for _ in range(levels):
        x, h = haar_dwt(x)
        highs.append(h)
    return x, highs


def waverec(low: Tensor, highs: list[Tensor]) -> Tensor:
    """The inverse of :func:`wavedec`."""
    for h in reversed(highs):
        low = haar_idwt(low, h)
    return low


class WaveletView(nn.Module):
    """x -> the stacked wavelet bands of each colour channel at the input's size: the coarsest
    LL, then LH, HL, HH of each level from the finest (each band's colour channels together),
    each band enlarged back to H x W by
    nearest-neighbour repetition (x 2^level), so the frequency branch's maps keep the RGB
    branch's sizes. 3 (1 + 3 levels) channels for an RGB input; a side that is not a multiple
    of 2^levels is padded (reflected) at the right and bottom, and cropped back."""

    def __init__(self, wavelet: str = "haar", levels: int = 1) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        self.wavelet, self.levels = wavelet, levels
        self._other = None
        if wavelet != "haar":
            from kdbench.models.wavelet_library import transform

            self._other = transform(wavelet, levels)

    def channels(self, cin: int = 3) -> int:
        """The channels of the view of a ``cin``-channel input."""
        return cin * (1 + 3 * self.levels)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        step = 2 ** self.levels
        ph, pw = (-h) % step, (-w) % step
        padded = F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
        dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        with torch.autocast(x.device.type, enabled=False):
            low, highs = (self._other(padded.to(dtype)) if self._other is not None
                          else wavedec(padded.to(dtype), self.levels))
        bands = [_up(low, step)] + [_up(hi.transpose(1, 2).flatten(1, 2), 2 ** (j + 1))
                                    for j, hi in enumerate(highs)]  # band-major, RGB inside
        out = torch.cat([b[..., :h, :w] for b in bands], dim=1)
        return out.to(x.dtype)


def _up(x: Tensor, factor: int) -> Tensor:
    return x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
