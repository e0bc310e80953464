"""Cost of TOKD's rotation: a TOKD ``both`` training step with the rotation at d = 1024 and
2048 over the same step with ``rotation=false`` (resnet18_thin, 96 px, batch 64).

The rotation step is a Cayley retraction whose gradient has rank <= the batch size, taken in
O(d^2 B) through the Woodbury identity (``methods/tokd.py``), so the ratio grows with d far
more slowly than with a d x d solve. The teacher's outputs are fixed, precomputed ones (as the
trainer's teacher cache gives them), so the ratio is the method's own cost. Run: ``pytest
tests/bench/test_tokd_rotation_cost.py --benchmark-only -s``; extra_info holds
``rotation_over_off``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
import torch

from kdbench.methods import Distiller
from kdbench.models.students import create_student
from kdbench.models.teacher import DualBranchTeacher
from kdbench.registry import load_registry

SIZE, BATCH = 96, 64  # S_B(x) of resnet18_thin: 256 x 3 x 3 = 2304 values >= 2048
ROUNDS = 5


@pytest.fixture(scope="module")
def setup():
    """A random teacher, one batch and the teacher's projected outputs for it."""
    torch.manual_seed(0)
    teacher = DualBranchTeacher("resnet18_thin", proj_dim=128).eval()
    batch = {"image": torch.randn(BATCH, 3, SIZE, SIZE), "label": torch.randint(0, 2, (BATCH,))}
    with torch.no_grad():
        fixed = teacher(batch["image"], needs={"rgb_proj", "freq_proj"})
    return teacher, batch, fixed


def _tokd_step(teacher, batch, fixed, hp: dict) -> tuple[Callable[[], float], Distiller]:
    """One training step of a fresh TOKD (both) as the trainer takes it: forward, backward,
    ``after_backward`` (the rotation step), Adam; returns a function timing one more, and the
    method."""
    entry = load_registry()["tokd"]
    torch.manual_seed(0)
    method = entry.resolve()(create_student("resnet18_thin"), teacher, "both",
                             **entry.hparams("synthetic", hp))
    method.teacher_forward = lambda _batch: fixed  # the teacher cache's lookup
    opt = torch.optim.Adam(method.trainable_modules().parameters(), lr=1e-3)
    method.on_fit_start({"lr": 1e-3, "step_size": 8, "gamma": 0.1}, steps_per_epoch=50)
    method.train()
    steps = iter(range(1, 10**6))

    def step() -> float:
        t0 = time.perf_counter()
        _, losses = method.forward_train(batch)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        method.after_backward(next(steps))  # gradsim records on every 10th step, as in training
        opt.step()
        return time.perf_counter() - t0

    step()  # warm-up
    return step, method


@pytest.mark.slow
@pytest.mark.parametrize("d", [1024, 2048])
def test_tokd_rotation_step_over_no_rotation(benchmark, setup, d):
    rotated, with_r = _tokd_step(*setup, {"d": d})
    plain, without_r = _tokd_step(*setup, {"d": d, "rotation": False})

    def interleaved() -> tuple[float, float]:  # alternated, so drift hits both alike
        times = [(rotated(), plain()) for _ in range(ROUNDS)]
        return tuple(statistics.median(t) for t in zip(*times))

    t, off = benchmark.pedantic(interleaved, rounds=1, iterations=1)
    benchmark.extra_info.update({"d": d, "step_s": t, "no_rotation_step_s": off,
                                 "rotation_over_off": t / off})
    print(f"\ntokd both, d={d}: rotation {t * 1000:.0f} ms/step, rotation=false "
          f"{off * 1000:.0f} ms, {t / off:.2f}x")
    # what was timed: steps that move each R in SO(d) off the identity, against no rotation
    assert set(with_r.rotations) == {"rgb", "freq"} and len(without_r.rotations) == 0
    for rotation in with_r.rotations.values():
        r = rotation.matrix().double()
        assert r.shape == (d, d)
        assert (r - torch.eye(d, dtype=r.dtype)).abs().max() > 1e-6  # it moved
        assert (r.T @ r - torch.eye(d, dtype=r.dtype)).abs().max() < 1e-4  # and is orthogonal
