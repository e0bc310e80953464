"""The degradation model of cross-resolution distillation: the student's input made from the
teacher's (an image in [-1, 1] at ``data.size``): resized to ``student.size`` (bilinear with
antialiasing), then optionally blurred (a Gaussian of ``student.blur`` px), JPEG-compressed at
quality ``student.jpeg`` (1-100; 0: off) and given Gaussian noise of ``student.noise`` 8-bit
levels (0: off), in that order. The same at training, test and prediction time; the noise is
drawn afresh for each image while training, and outside training it is one pattern drawn from
a fixed seed and added to every image, so a test is repeatable and an image's input does not
depend on the batch it comes in."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.models.students import WrappedStudent

NOISE_SEED = 0  # the noise of evaluation and prediction


@dataclass(frozen=True)
class Degradation:
    """``size`` px (None: unchanged), ``blur`` sigma in px, ``jpeg`` quality (0: none),
    ``noise`` std in 8-bit levels."""

    size: int | None = None
    blur: float = 0.0
    jpeg: int = 0
    noise: float = 0.0

    @classmethod
    def of(cls, student_cfg: dict, data_size: int) -> Degradation:
        """The degradation of a config's ``student`` section (None size: ``data_size``)."""
        size = student_cfg.get("size")
        return cls(None if size in (None, data_size) else int(size),
                   float(student_cfg.get("blur") or 0.0), int(student_cfg.get("jpeg") or 0),
                   float(student_cfg.get("noise") or 0.0))

    @property
    def active(self) -> bool:
        return self.size is not None or bool(self.blur or self.jpeg or self.noise)


def gaussian_kernel(sigma: float) -> Tensor:
    """A normalised 1-D Gaussian of ``sigma`` px over +-3 sigma (at least 3 taps)."""
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


class Degrade(nn.Module):
    """The degradation model as a module (no parameters; see the module doc)."""

    def __init__(self, d: Degradation) -> None:
        super().__init__()
        self.d = d

    def forward(self, x: Tensor) -> Tensor:
        d = self.d
        if d.size is not None and x.shape[-2:] != (d.size, d.size):
            x = F.interpolate(x, size=(d.size, d.size), mode="bilinear", antialias=True,
                              align_corners=False)
        if d.blur:
            x = _blur(x, d.blur)
        if d.jpeg:
            x = _jpeg(x, d.jpeg)
        if d.noise:  # training: fresh noise per image; otherwise one fixed pattern for all,
            # so an image's input does not depend on its batch
            if self.training:
                noise = torch.randn(x.shape, device=x.device, dtype=x.dtype)
            else:  # drawn on the CPU: the same numbers whatever the device
                gen = torch.Generator().manual_seed(NOISE_SEED)
                noise = torch.randn((1, *x.shape[1:]), generator=gen).to(x.device, x.dtype)
            x = x + noise * (d.noise / 127.5)
        return x


def _blur(x: Tensor, sigma: float) -> Tensor:
    k = gaussian_kernel(sigma).to(x.device, x.dtype)
    c, r = x.shape[1], (len(k) - 1) // 2
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _jpeg(x: Tensor, quality: int) -> Tensor:
    """Each image through JPEG at ``quality`` (8-bit, on the CPU: torchvision's codec)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    images = ((x.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()
    coded = encode_jpeg(list(images), quality=quality)
    decoded = torch.stack(decode_jpeg(coded)).to(x.device, x.dtype)
    return decoded / 127.5 - 1


class DegradedStudent(WrappedStudent):
    """A student that reads the degraded image (the student interface: ``stage_channels``,
    ``backbone``, ``fc``, ``pool``, ``forward(x, preact)``); ``student`` is the model that is
    exported, taking the small image."""

    def __init__(self, student: nn.Module, d: Degradation) -> None:
        super().__init__(student)
        self.degrade = Degrade(d)

    def forward(self, x: Tensor, preact: bool = False):
        return self.student(self.degrade(x), preact=preact)


def degraded(student: nn.Module, config: dict) -> nn.Module:
    """``student`` reading the degraded image of ``config`` (its ``student`` section against
    ``data.size``), or ``student`` itself when nothing is degraded."""
    d = Degradation.of(config.get("student") or {}, int(config["data"]["size"]))
    return DegradedStudent(student, d) if d.active else student
