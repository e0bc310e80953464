"""Training-loop throughput against the bare model step on the same batch.

Run: ``pytest tests/bench --benchmark-only``; the ratio (loop / bare) shows the overhead of the
loader, the device transfer and the logging. Figures are in the benchmark's extra_info.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from kdbench.config import resolve_config
from kdbench.data.loader import FrameSplit, iterate, to_model_input
from kdbench.methods.vanilla import Vanilla
from kdbench.models.students import create_student
from kdbench.progress import progress_bar
from kdbench.train.trainer import Trainer
from tests.conftest import write_prepared

SIZE, BATCH = 32, 32


def _bare_steps(learner, batch, steps: int) -> float:
    opt = torch.optim.Adam(learner.trainable_modules().parameters(), lr=1e-3)
    learner.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        _, losses = learner.forward_train(batch)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
    return steps * BATCH / (time.perf_counter() - t0)


def test_loop_vs_bare_step(benchmark, tmp_path):
    from kdbench.data.datasets import load_prepared

    data = load_prepared(write_prepared(tmp_path / "p", videos_per_split=(48, 4, 4), frames=4,
                                        size=SIZE), "synthetic")
    splits = {s: FrameSplit(data.frames, data.split(s)) for s in ("train", "val", "test")}
    cfg = resolve_config("quick", "synthetic", {"train": {"batch_size": BATCH}})
    learner = Vanilla(create_student("resnet18_thin"), None, "none")
    trainer = Trainer(learner, splits, cfg["train"], SIZE, tmp_path / "run",
                      torch.device("cpu"), seed=0, progress=False)
    opt = torch.optim.Adam(learner.trainable_modules().parameters(), lr=1e-3)
    batch = to_model_input(next(iterate(splits["train"], BATCH, shuffle=True)),
                           torch.device("cpu"), SIZE)
    steps = len(splits["train"]) // BATCH
    _bare_steps(learner, batch, 1)  # warm-up

    def loop():
        with progress_bar(False) as bar:
            task = bar.add_task("bench", total=len(splits["train"]))
            return trainer._train_epoch(0, opt, bar, task)

    stats = benchmark.pedantic(loop, rounds=3, iterations=1)
    bare = _bare_steps(learner, batch, steps)
    loop_rate = float(np.median([len(splits["train"]) // BATCH * BATCH / t
                                 for t in benchmark.stats.stats.data]))
    ratio = loop_rate / bare
    benchmark.extra_info.update({"loop_images_per_s": loop_rate, "bare_images_per_s": bare,
                                 "loop_over_bare": ratio})
    print(f"\nloop {loop_rate:.0f} img/s, bare step {bare:.0f} img/s, ratio {ratio:.2f}")
    assert stats["train_images_per_s"] > 0 and bare > 0
