"""The wavelet view's transform on the CPU: kdbench's built-in Haar (a stride-2 convolution)
against ptwt's wavedec2 with the Haar wavelet, at 64 px, batch 64, 1 and 3 levels, measured in
one process (pytest-benchmark extra_info: ptwt over built-in, medians of interleaved calls).
pytorch_wavelets is not measured: version 1.3 fails to import where setuptools no longer ships
pkg_resources (docs/design.md decision 6).

Run: ``pytest tests/bench/test_wavelet_speed.py --benchmark-only -s``.
"""

from __future__ import annotations

import time

import pytest
import torch

from kdbench.models.wavelet import wavedec

ptwt = pytest.importorskip("ptwt", reason='the wavelet extra is not installed (pip install '
                           '"kdbench[wavelet]")')
pywt = pytest.importorskip("pywt")


def _median_ms(fn, repeats: int = 30) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


@pytest.mark.slow
@pytest.mark.parametrize("levels", [1, 3])
def test_builtin_haar_against_ptwt(benchmark, levels):
    x = torch.rand(64, 3, 64, 64)
    haar = pywt.Wavelet("haar")
    ours = lambda: wavedec(x, levels)  # noqa: E731
    theirs = lambda: ptwt.wavedec2(x, haar, level=levels, mode="zero")  # noqa: E731
    for _ in range(3):  # warm up both
        ours()
        theirs()
    ms_ours, ms_theirs = [], []
    for _ in range(5):  # interleaved, so load on the machine hits both alike
        ms_ours.append(_median_ms(ours, 10))
        ms_theirs.append(_median_ms(theirs, 10))
    low, _ = wavedec(x.double(), levels)
    assert torch.allclose(ptwt.wavedec2(x.double(), haar, level=levels, mode="zero")[0], low)
    benchmark.pedantic(ours, rounds=5, warmup_rounds=1)
    a, b = sorted(ms_ours)[2], sorted(ms_theirs)[2]
    benchmark.extra_info.update({"threads": torch.get_num_threads(), "builtin_ms": a,
                                 "ptwt_ms": b, "ptwt_over_builtin": b / a})
