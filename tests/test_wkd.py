"""wkd: the wavelet similarity loss equals an independent computation (numpy 2x2 block sums,
no convolution) on unequal widths and sizes; w_high = 1 is the mean squared error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdbench.methods.wkd import WKD, wavelet_similarity
from kdbench.models.outputs import StudentOut, TeacherOut


def _haar_np(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Haar level by 2x2 blocks: LL and the three high bands stacked."""
    if x.shape[-2] % 2:
        x = np.concatenate([x, x[..., -1:, :]], axis=-2)  # repeat the last row
    if x.shape[-1] % 2:
        x = np.concatenate([x, x[..., :, -1:]], axis=-1)
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    low = (a + b + c + d) / 2
    high = np.stack([(a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2])
    return low, high


def _reference(s: np.ndarray, t: np.ndarray, w_high: float) -> float:
    ls, hs = _haar_np(s)
    lt, ht = _haar_np(t)
    return float((((ls - lt) ** 2).sum() + w_high * ((hs - ht) ** 2).sum()) / t.size)


class _Teacher(torch.nn.Module):
    stage_channels = [8, 12, 16, 24]


class _Student(torch.nn.Module):
    stage_channels = [4, 6, 10, 14]


@pytest.mark.parametrize("w_high", [0.0, 0.5])
def test_wkd_equals_an_independent_computation_on_unequal_widths_and_sizes(w_high):
    torch.manual_seed(0)
    wkd = WKD(_Student(), _Teacher(), "rgb", beta=1.0, w_high=w_high).eval()
    s_feats = [torch.randn(2, c, n, n) for c, n in zip(_Student.stage_channels, (8, 4, 3, 2))]
    t_feats = [torch.randn(2, c, n, n) for c, n in zip(_Teacher.stage_channels, (16, 8, 5, 2))]
    s = StudentOut(logits=torch.zeros(2, 2), feats=s_feats, pooled=torch.zeros(2, 14))
    t = TeacherOut(logits=torch.zeros(2, 2))
    t.rgb = t_feats
    with torch.no_grad():
        got = wkd.branch_loss(s, t, "rgb").item()
        expected = []
        for sm, tm, adaptor in zip(s_feats, t_feats, wkd.adaptors["rgb"]):
            x = adaptor(sm)  # the method's adaptor (1x1 conv + BN), then its interpolation
            x = F.interpolate(x, size=tm.shape[-2:], mode="bilinear", align_corners=False)
            expected.append(_reference(x.double().numpy(), tm.double().numpy(), w_high))
    assert got == pytest.approx(float(np.mean(expected)), rel=1e-4, abs=1e-6)


def test_with_all_bands_weighted_it_is_the_mean_squared_error():
    s, t = torch.randn(2, 5, 6, 6), torch.randn(2, 5, 6, 6)
    assert wavelet_similarity(s, t, 1.0).item() == pytest.approx(F.mse_loss(s, t).item(),
                                                                  rel=1e-5)
    assert wavelet_similarity(s, t, 0.0).item() < F.mse_loss(s, t).item()


def test_a_1x1_map_is_padded_by_repetition():
    s, t = torch.randn(2, 3, 1, 1), torch.randn(2, 3, 1, 1)
    expected = _reference(s.double().numpy(), t.double().numpy(), 0.0)
    assert wavelet_similarity(s, t, 0.0).item() == pytest.approx(expected, rel=1e-5)


def test_wkd_trains_both_branches_with_an_adaptor_each():
    wkd = WKD(_Student(), _Teacher(), "both", beta=100.0, w_high=0.0)
    assert set(wkd.adaptors) == {"rgb", "freq"} and len(wkd.adaptors["freq"]) == 4
    assert set(wkd.teacher_needs()) == {"rgb", "freq"}
