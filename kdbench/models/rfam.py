"""RGB-Frequency Attention Module (Chen et al., AAAI 2021; docs/design.md decision 5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RFAM(nn.Module):
    """concat(2C) -> 1x1 conv(2C->C)+BN+ReLU -> 3x3 conv(C->2) -> sigmoid; the two maps
    multiply the RGB and the frequency features."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, 2, 3, padding=1),
        )

    def forward(self, rgb: Tensor, freq: Tensor) -> tuple[Tensor, Tensor]:
        att = torch.sigmoid(self.fuse(torch.cat([rgb, freq], dim=1)))
        return rgb * att[:, :1], freq * att[:, 1:]
