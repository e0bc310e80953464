"""Wavelets other than Haar for ``teacher.freq_view: dwt``: PyWavelets' filters applied by
ptwt (the ``wavelet`` extra, PyTorch-Wavelet-Toolbox) in its symmetric padding mode, so a
band is a little larger than half its input (the view crops the enlarged bands to the input's
size). Haar is built in (kdbench.models.wavelet): orthonormal, exact halves, exported to ONNX
as plain convolutions.

Why ptwt and not pytorch_wavelets: pytorch_wavelets 1.3.0 imports ``pkg_resources`` when it is
imported, which current setuptools no longer ships, so it fails in a fresh environment; ptwt
1.0 imports and exports to ONNX (torch.onnx, dynamo) here."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kdbench.errors import KdbenchError, did_you_mean

if TYPE_CHECKING:
    from torch import Tensor

INSTALL = 'pip install "kdbench[wavelet]"'


def known_wavelets() -> list[str]:
    """The discrete wavelets PyWavelets knows (["haar"] without it)."""
    try:
        import pywt
    except ImportError:
        return ["haar"]
    return pywt.wavelist(kind="discrete")


def check_wavelet(name: str) -> None:
    """One line unless ``name`` is haar (built in) or a discrete wavelet of PyWavelets with
    ptwt installed."""
    if name == "haar":
        return
    names = known_wavelets()
    if names == ["haar"]:
        if name.startswith(("db", "sym", "coif", "bior", "rbio", "dmey")):
            raise KdbenchError(f"teacher.wavelet={name}: wavelets other than haar need ptwt "
                               f"({INSTALL}); haar is built in")
        raise KdbenchError(f"unknown teacher.wavelet {name!r}; use haar (built in), or a "
                           f"discrete wavelet of PyWavelets such as db2 ({INSTALL})")
    if name not in names:
        raise KdbenchError(f"unknown teacher.wavelet {name!r}{did_you_mean(name, names)}; use "
                           "haar or a discrete wavelet of PyWavelets (pywt.wavelist("
                           "kind='discrete'), e.g. db2, sym4)")
    try:
        import ptwt  # noqa: F401
    except ImportError:
        raise KdbenchError(f"teacher.wavelet={name} needs ptwt ({INSTALL})") from None


def max_levels(name: str, size: int) -> int:
    """The most levels a side of ``size`` px allows: Haar halves it down to 2 px; another
    wavelet as PyWavelets counts them for its filter length (dwt_max_level)."""
    if name != "haar":
        import pywt

        return int(pywt.dwt_max_level(size, pywt.Wavelet(name).dec_len))
    most = 0
    while size >= 4:
        size, most = (size + 1) // 2, most + 1
    return most


def transform(name: str, levels: int) -> Callable[[Tensor], tuple[Tensor, list[Tensor]]]:
    """x -> (the coarsest LL, [highs [N, C, 3, h, w] of level 1 (finest), ..., ``levels``])."""
    check_wavelet(name)
    import ptwt
    import pywt
    import torch

    wavelet = pywt.Wavelet(name)

    def apply(x: Tensor) -> tuple[Tensor, list[Tensor]]:
        coeffs = ptwt.wavedec2(x, wavelet, level=levels, mode="symmetric")
        highs = [torch.stack(list(level), dim=2) for level in reversed(coeffs[1:])]
        return coeffs[0], highs

    return apply
