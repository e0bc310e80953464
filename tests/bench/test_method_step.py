"""Training-step time of every registered method relative to vanilla, on the same batch, with
the teacher's outputs looked up as the trainer's teacher cache does (so the ratio is the
method's own cost: its extra forward/backward through adaptors, projectors, rotations).

Run: ``pytest tests/bench/test_method_step.py --benchmark-only -s``; each method's extra_info
holds ``step_over_vanilla`` (its step time / vanilla's step time, measured in this run).
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from kdbench.models.students import create_student
from kdbench.models.teacher import DualBranchTeacher
from kdbench.registry import load_registry

SIZE, BATCH = 64, 32
_REGISTRY = load_registry()
_CASES = [(name, mode) for name, e in _REGISTRY.items() for mode in e.modes]


class FixedTeacherOutputs:
    """Stands in for the trainer's teacher cache: the same precomputed outputs every step."""

    def __init__(self, out) -> None:
        self.out = out

    def lookup(self, keys):
        return self.out


def _stepper(name: str, mode: str, teacher, batch, hp: dict | None = None, fixed=None):
    """One optimizer step of a fresh distiller for ``name``/``mode`` (as the trainer does);
    ``fixed`` teacher outputs replace the live teacher, as the teacher cache does."""
    entry = _REGISTRY[name]
    torch.manual_seed(0)
    d = entry.resolve()(create_student("resnet18_thin"), None if mode == "none" else teacher,
                        mode, **entry.hparams("synthetic", hp))
    if fixed is not None and mode != "none":
        d.teacher_cache = FixedTeacherOutputs(fixed)
    opt = torch.optim.Adam(d.trainable_modules().parameters(), lr=1e-3)
    d.on_fit_start({"lr": 1e-3, "step_size": 8, "gamma": 0.1}, steps_per_epoch=50)
    d.train()

    def step():
        t0 = time.perf_counter()
        _, losses = d.forward_train(batch)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        d.after_backward(0)
        opt.step()
        return time.perf_counter() - t0

    step()  # warm-up
    return step


def _interleaved(method, vanilla, rounds: int = 5) -> tuple[float, float]:
    """Median step times of a method and of vanilla, alternated so drift hits both alike."""
    a, b = [], []
    for _ in range(rounds):
        a.append(method())
        b.append(vanilla())
    return statistics.median(a), statistics.median(b)


def make_setup(size: int, needs: set[str] | None = None):
    """A random teacher, one batch at ``size`` and the teacher's outputs for it (the fields in
    ``needs``, every field by default), as the teacher cache would give them."""
    torch.manual_seed(0)
    teacher = DualBranchTeacher("resnet18_thin", proj_dim=128).eval()
    batch = {"image": torch.randn(BATCH, 3, size, size), "label": torch.randint(0, 2, (BATCH,)),
             "key": torch.arange(BATCH)}
    with torch.no_grad():
        fixed = teacher(batch["image"], needs=needs)
    return teacher, batch, fixed


@pytest.fixture(scope="module")
def setup():
    return make_setup(SIZE)


@pytest.mark.parametrize(("name", "mode"), _CASES)
def test_step_time_over_vanilla(benchmark, setup, name, mode):
    teacher, batch, fixed = setup
    method = _stepper(name, mode, teacher, batch, fixed=fixed)
    vanilla = _stepper("vanilla", "none", teacher, batch)
    t, v = benchmark.pedantic(lambda: _interleaved(method, vanilla), rounds=1, iterations=1)
    ratio = t / v
    benchmark.extra_info.update({"step_s": t, "vanilla_step_s": v, "step_over_vanilla": ratio})
    print(f"\n{name}/{mode}: {t * 1000:.0f} ms/step, vanilla {v * 1000:.0f} ms, {ratio:.2f}x")
    assert t > 0 and v > 0
