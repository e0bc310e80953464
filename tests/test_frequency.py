import torch

from kdbench.models.frequency import FrequencyView, dct_matrix, highpass_mask


def test_dct_matrix_is_orthonormal_and_matches_definition():
    d = dct_matrix(8)
    torch.testing.assert_close(d @ d.T, torch.eye(8, dtype=d.dtype))
    # DC row is constant 1/sqrt(n); row 1 is sqrt(2/n) cos(pi (2i+1) / 2n)
    torch.testing.assert_close(d[0], torch.full((8,), 8 ** -0.5, dtype=d.dtype))
    i = torch.arange(8, dtype=d.dtype)
    torch.testing.assert_close(d[1], (2 / 8) ** 0.5 * torch.cos(torch.pi * (2 * i + 1) / 16))


def test_highpass_mask_zeroes_the_top_left_triangle():
    m = highpass_mask(6, 6, cutoff=0.5)  # zero where u/6 + v/6 < 1, i.e. u + v < 6
    for u in range(6):
        for v in range(6):
            assert m[u, v] == (0.0 if u + v < 6 else 1.0)


def test_low_frequency_image_maps_to_zero():
    n = 16
    d = dct_matrix(n, torch.float32)
    coeffs = torch.zeros(2, 3, n, n)
    coeffs[..., 0, 0] = 5.0
    coeffs[..., 1, 2] = -2.0
    coeffs[..., 3, 0] = 1.5  # all inside u/n + v/n < 0.66
    x = d.T @ coeffs @ d
    assert x.abs().max() > 0.1
    out = FrequencyView(cutoff=0.33)(x)
    assert out.abs().max() < 1e-5


def test_high_frequency_image_passes_unchanged():
    n = 16
    d = dct_matrix(n, torch.float32)
    coeffs = torch.zeros(1, 3, n, n)
    coeffs[..., 12, 13] = 3.0
    x = d.T @ coeffs @ d
    torch.testing.assert_close(FrequencyView(0.33)(x), x, atol=1e-5, rtol=1e-5)


def test_frequency_view_removes_the_triangle_of_a_random_image():
    n = 12
    x = torch.randn(2, 3, n, n)
    out = FrequencyView(0.25)(x)
    d = dct_matrix(n, torch.float32)
    coeffs = d @ out @ d.T
    mask = highpass_mask(n, n, 0.25).bool()
    assert coeffs[..., ~mask].abs().max() < 1e-4
    torch.testing.assert_close(coeffs[..., mask], (d @ x @ d.T)[..., mask], atol=1e-4, rtol=1e-4)


def test_frequency_view_stays_fp32_under_bf16_autocast():
    """autocast would run the DCT's matmuls in bf16 (a percent-level error at 299 px)."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 96, 96) * 2 - 1
    view = FrequencyView(0.33)
    want = view(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = view(x)
        naive = dct_matrix(96, torch.float32) @ x  # what an unguarded matmul gives
    assert got.dtype == torch.float32 and naive.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert torch.get_float32_matmul_precision() == "highest"  # restored, not changed


def test_frequency_view_restores_the_matmul_precision():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        FrequencyView(0.33)(torch.rand(1, 3, 16, 16))
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
