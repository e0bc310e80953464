"""RGB-Frequency Attention Module (Chen et al., AAAI 2021; docs/design.md decision 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RFAM(nn.Module):
    """concat(2C) -> 1x1 conv(2C->C)+BN+ReLU -> 3x3 conv(C->2) -> sigmoid; the two maps
    multiply the RGB and the frequency features.

    Branches of different backbones: concat(Cr + Cf) -> 1x1 conv(-> Cr); a frequency map of
    another spatial size is resized (bilinear) to the RGB map's for the concat, and its
    attention map back to its own size."""

    def __init__(self, channels: int, freq_channels: int | None = None) -> None:
        super().__init__()
        cf = channels if freq_channels is None else freq_channels
        self.fuse = nn.Sequential(
            nn.Conv2d(channels + cf, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, 2, 3, padding=1),
        )

    def forward(self, rgb: Tensor, freq: Tensor) -> tuple[Tensor, Tensor]:
        size = freq.shape[-2:]
        same = size == rgb.shape[-2:]
        f = freq if same else F.interpolate(freq, rgb.shape[-2:], mode="bilinear")
        att = torch.sigmoid(self.fuse(torch.cat([rgb, f], dim=1)))
        att_f = att[:, 1:] if same else F.interpolate(att[:, 1:], size, mode="bilinear")
        return rgb * att[:, :1], freq * att_f
