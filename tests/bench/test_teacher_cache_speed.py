"""A distillation epoch with the teacher cache against the live teacher, in one run.

Run: ``pytest tests/bench/test_teacher_cache_speed.py --benchmark-only -s``; extra_info holds
``live_over_cached`` (epoch time with the live teacher / with cached outputs; the one-off
cache build is reported separately as ``build_s``).
"""

from __future__ import annotations

import time

import torch

from kdbench.config import resolve_config
from kdbench.data.datasets import load_prepared
from kdbench.data.loader import FrameSplit
from kdbench.methods.at import AT
from kdbench.models.students import create_student
from kdbench.models.teacher import DualBranchTeacher
from kdbench.progress import progress_bar
from kdbench.train.teacher_cache import TeacherCache
from kdbench.train.trainer import Trainer
from tests.conftest import write_prepared

SIZE, BATCH = 32, 32


def test_cached_vs_live_teacher_epoch(benchmark, tmp_path):
    data = load_prepared(write_prepared(tmp_path / "p", videos_per_split=(32, 2, 2), frames=4,
                                        size=SIZE), "synthetic")
    splits = {s: FrameSplit(data.frames, data.split(s)) for s in ("train", "val", "test")}
    cfg = resolve_config("quick", "synthetic", {"train": {"batch_size": BATCH}})
    torch.manual_seed(0)
    teacher = DualBranchTeacher("resnet18_thin", proj_dim=64).eval()
    learner = AT(create_student("resnet18_thin"), teacher, "both", beta=1000.0)
    trainer = Trainer(learner, splits, cfg["train"], SIZE, tmp_path / "r", torch.device("cpu"),
                      0, progress=False)
    opt = torch.optim.Adam(learner.trainable_modules().parameters(), lr=1e-3)

    def epoch() -> float:
        with progress_bar(False) as bar:
            task = bar.add_task("bench", total=len(splits["train"]))
            t0 = time.perf_counter()
            trainer._train_epoch(0, opt, bar, task)
            return time.perf_counter() - t0

    epoch()  # warm-up
    t0 = time.perf_counter()
    cache = TeacherCache.build(teacher, learner.teacher_needs(), splits["train"], SIZE,
                               torch.device("cpu"), 256, 1 << 32)
    build = time.perf_counter() - t0

    def both() -> tuple[float, float]:
        learner.teacher_cache = None
        live = epoch()
        learner.teacher_cache = cache
        return live, epoch()

    live, cached = benchmark.pedantic(both, rounds=1, iterations=1)
    ratio = live / cached
    benchmark.extra_info.update({"live_s": live, "cached_s": cached, "build_s": build,
                                 "live_over_cached": ratio})
    print(f"\nAT/both epoch: live teacher {live:.2f} s, cached {cached:.2f} s "
          f"({ratio:.2f}x), cache build {build:.2f} s")
    assert live > 0 and cached > 0
