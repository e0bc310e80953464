"""Mixed precision: what must stay fp32 under bf16 autocast does."""

import pytest
import torch

from kdbench.methods.at import at_loss
from kdbench.methods.base import full_precision
from kdbench.methods.fitnet import fitnet_loss
from kdbench.methods.pkt import pkt_loss
from kdbench.methods.sp import sp_loss
from kdbench.methods.tokd import tokd_kd_loss
from kdbench.methods.vid import vid_loss


def _cases():
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    maps = [r(8, 16, 8, 8), r(8, 32, 4, 4)]
    return {
        "at": (at_loss, ([m.abs() for m in maps], [m.abs() + 0.1 for m in maps])),
        "pkt": (pkt_loss, (r(8, 64), r(8, 64))),
        "sp": (sp_loss, (r(8, 16, 4, 4), r(8, 32, 4, 4))),
        "fitnet": (fitnet_loss, (r(8, 16, 4, 4), r(8, 16, 4, 4))),
        "vid": (vid_loss, (r(8, 16, 4, 4), r(16, 1, 1).abs() + 0.5, r(8, 16, 4, 4))),
        "tokd": (tokd_kd_loss, (r(8, 16, 2, 2), r(8, 16, 2, 2))),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_losses_stay_fp32_under_bf16_autocast(name):
    loss, args = _cases()[name]
    want = loss(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(*args)
        bf16_args = [[a.bfloat16() for a in x] if isinstance(x, list) else x.bfloat16()
                     for x in args]
        from_bf16 = loss(*bf16_args)  # bf16 features (a bf16 model's output) are widened
    assert got.dtype == torch.float32 and from_bf16.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_full_precision_changes_what_autocast_would_do():
    def gram(x):
        return (x @ x.T).sum()

    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, guarded = gram(x), full_precision(gram)(x)
    assert plain.dtype == torch.bfloat16 and guarded.dtype == torch.float32
    torch.testing.assert_close(guarded, gram(x))
