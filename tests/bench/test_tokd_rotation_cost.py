"""Cost of TOKD's rotation step: TOKD (both branches) step time over vanilla's at d = 256,
1024, 2048, and with the rotation off, on the same batch.

The teacher's outputs come from a fixed lookup, as with the trainer's teacher cache, so the
ratio is the method's own cost. Run: ``pytest tests/bench/test_tokd_rotation_cost.py
--benchmark-only -s``; extra_info holds ``step_over_vanilla``.
"""

from __future__ import annotations

import pytest

from tests.bench.test_method_step import _interleaved, _stepper, make_setup

SIZE = 96  # S_B(x) of resnet18_thin: 256 x 3 x 3 = 2304 values >= 2048 (batch 32)


@pytest.fixture(scope="module")
def setup():
    return make_setup(SIZE, needs={"rgb_proj", "freq_proj"})


@pytest.mark.parametrize("rotation", ["off", 256, 1024, 2048])
def test_tokd_step_time_over_vanilla(benchmark, setup, rotation):
    teacher, batch, fixed = setup
    hp = {"rotation": rotation != "off"}
    if rotation != "off":
        hp["d"] = rotation
    method = _stepper("tokd", "both", teacher, batch, hp, fixed)
    vanilla = _stepper("vanilla", "none", teacher, batch)
    t, v = benchmark.pedantic(lambda: _interleaved(method, vanilla), rounds=1, iterations=1)
    benchmark.extra_info.update({"d": rotation, "step_s": t, "vanilla_step_s": v,
                                 "step_over_vanilla": t / v})
    print(f"\ntokd both, rotation {rotation}: {t * 1000:.0f} ms/step, "
          f"vanilla {v * 1000:.0f} ms, {t / v:.2f}x")
    assert t > 0 and v > 0
