"""`kdbench bench`: how fast training runs on this machine, as ratios measured in one process.

Every figure comes from the code a run uses (the loader, ``Trainer.train_step`` and the
training loop, the shared teacher cache), on the preset's size and batch, with the
configurations timed in alternation (``rounds`` passes each, medians) so that drift of the
machine hits all of them alike. The teacher has random weights: its cost, not its accuracy,
is measured.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdbench.config import for_device, resolve_config
from kdbench.data.datasets import PreparedData, open_dataset
from kdbench.data.loader import FrameSplit, iterate, to_model_input
from kdbench.errors import KdbenchError
from kdbench.models.students import create_student
from kdbench.models.teacher_build import architecture_teacher
from kdbench.progress import progress_bar
from kdbench.registry import MethodEntry, report_specs
from kdbench.train import teacher_cache
from kdbench.train.trainer import Trainer, on_device, seed_everything

log = logging.getLogger(__name__)


def baseline(registry: dict[str, MethodEntry]) -> MethodEntry:
    """The registry's first teacher-free entry (mode ``none``): what each method's step is
    compared with."""
    for entry in registry.values():
        if "none" in entry.modes:
            return entry
    raise KdbenchError("the registry has no teacher-free method (mode none) to compare with")


class _Setup:
    """The preset's config on this device, a training subset of ``steps`` batches, a random
    teacher and a temporary cache folder."""

    def __init__(self, preset: str, dataset: str, data_root: Path | None, student: str,
                 device: torch.device, steps: int, progress: bool,
                 data: PreparedData | None = None) -> None:
        self.config = for_device(resolve_config(preset, dataset, {}), device.type)
        self.student, self.device, self.steps = student, device, steps
        self.batch = self.config["train"]["batch_size"]
        self.size = self.config["data"]["size"]
        self.data = data or open_dataset(dataset, data_root, self.size,
                                         self.config["data"]["frames"], progress=progress)
        rows = self.data.split("train")
        if len(rows) < self.batch:
            raise ValueError(f"{dataset} has fewer training frames than one batch")
        self.subset = FrameSplit(self.data.frames, rows.iloc[: min(len(rows),
                                                                  steps * self.batch)])
        t = self.config["teacher"]
        seed_everything(0)
        self.teacher = architecture_teacher(t).eval()
        self.tmp = Path(tempfile.mkdtemp(prefix="kdbench-bench-"))
        self.channels_last = on_device(self.config["train"], "channels_last", device)

    def trainer(self, learner, size: int | None = None, split: FrameSplit | None = None):
        size = size or self.size
        splits = {"train": split or self.subset}
        return Trainer(learner, splits, self.config["train"], size, self.tmp / "run",
                       self.device, 0, "bench", self.config["data"]["workers"], progress=False)

    def cache(self, needs: set[str], size: int, split: FrameSplit) -> teacher_cache.TeacherCache:
        budget = int(float(self.config["train"]["teacher_cache_gb"]) * 2**30)
        got = teacher_cache.ensure(self.teacher.to(self.device), needs, split, size,
                                   self.device, self.config["train"]["eval_batch_size"],
                                   self.tmp / f"cache-{size}", budget, self.channels_last)
        return got.cache


class _Loop:
    """One configuration: a learner and its optimizer, timed one pass over the subset."""

    def __init__(self, setup: _Setup, learner, lookup=None, size: int | None = None,
                 split: FrameSplit | None = None) -> None:
        self.trainer = setup.trainer(learner, size, split)
        self.trainer.lookup = lookup
        self.trainer._prepare_models()
        params = [p for p in learner.trainable_modules().parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=setup.config["train"]["lr"])
        if hasattr(learner, "on_fit_start"):
            learner.on_fit_start(setup.config["train"], max(setup.steps, 1))
        self.times: list[float] = []
        self.images = len(self.trainer.splits["train"]) // setup.batch * setup.batch

    def __call__(self) -> float:
        with progress_bar(False) as bar:
            task = bar.add_task("bench", total=len(self.trainer.splits["train"]))
            _sync(self.trainer.device)
            t0 = time.perf_counter()
            self.trainer._train_epoch(len(self.times), self.opt, bar, task)
            _sync(self.trainer.device)
        elapsed = time.perf_counter() - t0
        self.times.append(elapsed)
        return elapsed

    @property
    def median(self) -> float:
        return statistics.median(self.times[1:] or self.times)  # the first pass warms up


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleave(timers: dict[str, Callable[[], float]], rounds: int) -> None:
    """A warm-up pass of each, then ``rounds`` passes of each in turn."""
    for _ in range(rounds + 1):
        for timer in timers.values():
            timer()


def _distiller(entry: MethodEntry, setup: _Setup, mode: str, hparams: dict | None = None):
    seed_everything(0)
    student = create_student(setup.student)
    teacher = None if mode == "none" else setup.teacher
    return entry.resolve()(student, teacher, mode, **entry.hparams("synthetic", hparams))


def _bare_step(setup: _Setup, base: MethodEntry) -> Callable[[], float]:
    """The student's train step alone on one batch already on the device (no loader)."""
    learner = _distiller(base, setup, "none")
    loop = _Loop(setup, learner)
    trainer, opt = loop.trainer, loop.opt
    raw = setup.subset[(np.arange(setup.batch), np.zeros(setup.batch, bool))]
    batch = to_model_input(raw, setup.device, setup.size, trainer.channels_last)
    learner.train()
    times: list[float] = []

    def run() -> float:
        _sync(setup.device)
        t0 = time.perf_counter()
        for step in range(setup.steps):
            trainer.train_step(batch, opt, step)
        _sync(setup.device)
        times.append(time.perf_counter() - t0)
        return times[-1]

    run.times = times  # type: ignore[attr-defined]
    return run


def _loader(setup: _Setup) -> Callable[[], float]:
    times: list[float] = []

    def run() -> float:
        t0 = time.perf_counter()
        for b in iterate(setup.subset, setup.batch, shuffle=True, seed=len(times),
                         workers=setup.config["data"]["workers"],
                         pin_memory=setup.device.type == "cuda"):
            to_model_input(b, setup.device, setup.size, setup.channels_last)
        _sync(setup.device)
        times.append(time.perf_counter() - t0)
        return times[-1]

    run.times = times  # type: ignore[attr-defined]
    return run


def _median(timer: Callable[[], float]) -> float:
    times = timer.times  # type: ignore[attr-defined]
    return statistics.median(times[1:] or times)


def run_bench(preset: str, student: str, device: torch.device, entries: list[MethodEntry],
              registry: dict[str, MethodEntry], *, dataset: str = "synthetic",
              data_root: Path | None = None, steps: int = 10, rounds: int = 3,
              threads_check: bool = True, progress: bool = True,
              data: PreparedData | None = None) -> dict[str, Any]:
    """Measure and return the figures of `kdbench bench` (see the README for each key);
    ``data`` replaces the dataset (tests)."""
    setup = _Setup(preset, dataset, data_root, student, device, steps, progress, data)
    try:
        return _measure(setup, preset, student, device, entries, registry, steps, rounds,
                        threads_check, progress)
    finally:
        shutil.rmtree(setup.tmp, ignore_errors=True)


def _measure(setup: _Setup, preset: str, student: str, device: torch.device,
             entries: list[MethodEntry], registry: dict[str, MethodEntry], steps: int,
             rounds: int, threads_check: bool, progress: bool) -> dict[str, Any]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = baseline(registry)
    images = len(setup.subset) // setup.batch * setup.batch
    out: dict[str, Any] = {
        "device": _device_name(device), "preset": preset, "student": student,
        "size": setup.size, "batch": setup.batch, "steps": steps, "rounds": rounds,
        "threads": torch.get_num_threads(), "amp": setup.config["train"]["amp"],
        "channels_last": setup.config["train"]["channels_last"],
        "compile": setup.config["train"]["compile"]}

    log.info(f"bench: {student} at {setup.size} px, batch {setup.batch}, {steps} steps x "
             f"{rounds} rounds on {out['device']}")
    loader, bare = _loader(setup), _bare_step(setup, base)
    loop = _Loop(setup, _distiller(base, setup, "none"))
    _interleave({"loader": loader, "bare": bare, "loop": loop}, rounds)
    out["loader_images_per_s"] = images / _median(loader)
    out["bare_images_per_s"] = setup.steps * setup.batch / _median(bare)
    out["loop_images_per_s"] = images / loop.median
    out["loop_over_bare"] = out["loop_images_per_s"] / out["bare_images_per_s"]

    # each method's loop over the baseline's, with the live teacher and with the shared cache
    cases, needs, out["skipped"] = _runnable(setup, entries, base)
    t0 = time.perf_counter()
    cache = setup.cache(needs, setup.size, setup.subset) if cases else None
    out["cache_build_s"] = time.perf_counter() - t0 if cases else None
    ratios: dict[str, dict[str, float | None]] = {}
    with progress_bar(progress) as bar:
        task = bar.add_task("methods", total=len(cases))
        for entry, mode in cases:
            timers = {"base": _Loop(setup, _distiller(base, setup, "none")),
                      "live": _Loop(setup, _distiller(entry, setup, mode))}
            if cache is not None:
                timers["cached"] = _Loop(setup, _distiller(entry, setup, mode), cache.read)
            _interleave(timers, rounds)
            base_s = timers["base"].median
            ratios[f"{entry.name}/{mode}"] = {
                "live": timers["live"].median / base_s,
                "cached": timers["cached"].median / base_s if "cached" in timers else None}
            bar.update(task, advance=1)
    out["kd_over_vanilla"] = ratios

    for name, specs in report_specs(registry, "bench").items():
        for entry, spec in specs:
            if entry not in entries or f"{entry.name}/{spec['mode']}" in out["skipped"]:
                continue
            out[name] = _declared(setup, entry, spec, rounds)
    out["peak_memory_mb"] = _peak_memory_mb(device)
    if threads_check and device.type == "cpu":
        out["processes"] = side_by_side(student, setup.size, setup.batch)
    return out


def _runnable(setup: _Setup, entries: list[MethodEntry], base: MethodEntry
              ) -> tuple[list[tuple[MethodEntry, str]], set[str], dict[str, str]]:
    """The (method, mode) pairs timed against the baseline, the teacher outputs they need, and
    the pairs that cannot distil into this student (e.g. a method reading pre-activation maps
    of a backbone that gives none), each with its one-line reason: skipped, with a warning."""
    cases: list[tuple[MethodEntry, str]] = []
    needs: set[str] = set()
    skipped: dict[str, str] = {}
    for entry in entries:
        for mode in entry.modes:
            if entry is base or mode == "none":
                continue
            try:
                needs |= _distiller(entry, setup, mode).teacher_needs()
            except KdbenchError as exc:
                skipped[f"{entry.name}/{mode}"] = str(exc)
                log.warning(f"bench: {entry.name}/{mode} skipped: {exc}")
                continue
            cases.append((entry, mode))
    return cases, needs, skipped


def _declared(setup: _Setup, entry: MethodEntry, spec: dict[str, Any],
              rounds: int) -> dict[str, float]:
    """A registry ``bench`` spec: each sweep value's loop over the ``against`` setting's,
    teacher outputs from the cache."""
    size = max(setup.size, int(spec.get("min_size", setup.size)))
    mode = spec["mode"]
    probe = _distiller(entry, setup, mode)
    cache = setup.cache(probe.teacher_needs(), size, setup.subset)
    lookup = cache.read if cache is not None else None
    key, values = next(iter(spec["sweep"].items()))
    timers = {"against": _Loop(setup, _distiller(entry, setup, mode, dict(spec["against"])),
                               lookup, size)}
    for v in values:
        timers[str(v)] = _Loop(setup, _distiller(entry, setup, mode, {key: v}), lookup, size)
    _interleave(timers, rounds)
    against_s = timers["against"].median
    result = {k: t.median / against_s for k, t in timers.items() if k != "against"}
    result["size"] = size
    return result


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------ processes side by side

WORKER = """
import json
import torch
from kdbench.bench import step_worker
print(json.dumps(step_worker({args})), flush=True)
"""


def step_worker(student: str, size: int, batch: int, seconds: float,
                share: bool) -> dict[str, float]:
    """A bare student train step repeated for ``seconds``; ``share``: this process takes its
    share of the cores as a kdbench worker (else torch's default threads)."""
    from kdbench import threads

    if share:
        mine = threads.CpuShare(None).register()
        mine.rebalance()
        time.sleep(0.5)  # let the other worker register before the threads are counted
        mine.rebalance()
    seed_everything(0)
    model = create_student(student)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 2, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return {"images_per_s": n * batch / (time.perf_counter() - t0),
            "threads": torch.get_num_threads()}


def side_by_side(student: str, size: int, batch: int, seconds: float = 8.0) -> dict[str, Any]:
    """The bare step's images/s of one kdbench process alone, of two side by side as kdbench
    runs them now (each its share of the cores), and of two with torch's default threads
    (every core each, as kdbench 0.2 ran them)."""
    def launch(n: int, share: bool) -> list[dict[str, float]]:
        env = dict(os.environ)
        env.pop("OMP_NUM_THREADS", None)
        env["KDBENCH_WORKERS_DIR"] = tempfile.mkdtemp(prefix="kdbench-workers-")
        args = f"{student!r}, {size}, {batch}, {seconds}, {share}"
        script = WORKER.format(args=args)
        procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                  text=True, env=env) for _ in range(n)]
        return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]

    alone = launch(1, True)[0]
    pair = launch(2, True)
    default = launch(2, False)
    return {"alone": alone, "pair": pair, "pair_default_threads": default,
            "pair_over_alone": sum(p["images_per_s"] for p in pair) / alone["images_per_s"],
            "default_over_alone": (sum(p["images_per_s"] for p in default)
                                   / alone["images_per_s"])}


def bench_table(result: dict[str, Any]):
    """The figures of :func:`run_bench` as a rich table."""
    from rich.table import Table

    student = result["student"]
    table = Table(title=f"kdbench bench: {student} at {result['size']} px, batch "
                  f"{result['batch']}, {result['device']}, {result['threads']} threads, amp "
                  f"{result['amp']}, channels_last {result['channels_last']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key in ("loader_images_per_s", "bare_images_per_s", "loop_images_per_s"):
        table.add_row(key, f"{result[key]:.0f}")
    table.add_row("loop_over_bare", f"{result['loop_over_bare']:.3f}")
    if result.get("cache_build_s") is not None:
        table.add_row("cache_build_s", f"{result['cache_build_s']:.1f}")
    for label, r in result["kd_over_vanilla"].items():
        cached = "-" if r["cached"] is None else f"{r['cached']:.2f}"
        table.add_row(f"{label} over the baseline (live / cached)", f"{r['live']:.2f} / {cached}")
    for label in result.get("skipped", {}):
        table.add_row(f"{label} over the baseline", f"skipped: cannot distil into {student}")
    for key, value in result.items():
        if isinstance(value, dict) and "size" in value and key != "kd_over_vanilla":
            for v, ratio in value.items():
                if v != "size":
                    table.add_row(f"{key} {v} ({value['size']} px)", f"{ratio:.2f}")
    table.add_row("peak_memory_mb", f"{result['peak_memory_mb']:.0f}")
    procs = result.get("processes")
    if procs:
        pair = " + ".join(f"{p['images_per_s']:.0f}" for p in procs["pair"])
        default = " + ".join(f"{p['images_per_s']:.0f}" for p in procs["pair_default_threads"])
        table.add_row("one process alone (bare step img/s)",
                      f"{procs['alone']['images_per_s']:.0f}")
        table.add_row("two side by side, shared threads", pair)
        table.add_row("two side by side, torch default threads", default)
    return table
