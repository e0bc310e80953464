"""Cost of TOKD's rotation step: TOKD (both branches) step time over vanilla's at d = 256,
1024, 2048, and with the rotation off, on the same batch.

The teacher's outputs come from a fixed lookup, as with the trainer's teacher cache, so the
ratio is the method's own cost. Run: ``pytest tests/bench/test_tokd_rotation_cost.py
--benchmark-only -s``; extra_info holds ``step_over_vanilla``.
"""

from __future__ import annotations

import pytest
import torch

from kdbench.models.students import create_student
from kdbench.models.teacher import DualBranchTeacher
from kdbench.registry import load_registry
from tests.bench.test_method_step import _interleaved

SIZE, BATCH = 96, 32  # S_B(x) of resnet18_thin is 256 x 3 x 3 = 2304 values >= 2048
TRAIN_CFG = {"lr": 1e-3, "step_size": 8, "gamma": 0.1}


class _FixedTeacherOutputs:
    def __init__(self, out) -> None:
        self.out = out

    def lookup(self, keys):
        return self.out


def _stepper(hp: dict, teacher, batch, fixed):
    entry = load_registry()[hp.pop("method")]
    torch.manual_seed(0)
    mode = hp.pop("mode")
    d = entry.resolve()(create_student("resnet18_thin"), teacher if mode != "none" else None,
                        mode, **entry.hparams("synthetic", hp))
    d.teacher_cache = _FixedTeacherOutputs(fixed) if mode != "none" else None
    d.on_fit_start(TRAIN_CFG, steps_per_epoch=50)
    opt = torch.optim.Adam(d.trainable_modules().parameters(), lr=1e-3)
    d.train()

    def step():
        import time

        t0 = time.perf_counter()
        _, losses = d.forward_train(batch)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        d.after_backward(1)
        opt.step()
        return time.perf_counter() - t0

    step()
    return step


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    teacher = DualBranchTeacher("resnet18_thin", proj_dim=128).eval()
    batch = {"image": torch.randn(BATCH, 3, SIZE, SIZE), "label": torch.randint(0, 2, (BATCH,)),
             "key": torch.arange(BATCH)}
    with torch.no_grad():
        fixed = teacher(batch["image"], needs={"rgb_proj", "freq_proj"})
    return teacher, batch, fixed


@pytest.mark.parametrize("rotation", ["off", 256, 1024, 2048])
def test_tokd_step_time_over_vanilla(benchmark, setup, rotation):
    teacher, batch, fixed = setup
    hp = {"method": "tokd", "mode": "both", "rotation": rotation != "off"}
    if rotation != "off":
        hp["d"] = rotation
    method = _stepper(hp, teacher, batch, fixed)
    vanilla = _stepper({"method": "vanilla", "mode": "none"}, teacher, batch, fixed)
    t, v = benchmark.pedantic(lambda: _interleaved(method, vanilla), rounds=1, iterations=1)
    benchmark.extra_info.update({"d": rotation, "step_s": t, "vanilla_step_s": v,
                                 "step_over_vanilla": t / v})
    print(f"\ntokd both, rotation {rotation}: {t * 1000:.0f} ms/step, "
          f"vanilla {v * 1000:.0f} ms, {t / v:.2f}x")
    assert t > 0 and v > 0
