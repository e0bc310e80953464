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
