"""`kdbench bench` on a tiny dataset: the figures it reports, as pytest-benchmark extra_info.

Run: ``pytest tests/bench --benchmark-only -s``; the full measurement is ``kdbench bench``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from kdbench.bench import bench_table, run_bench
from kdbench.data.datasets import load_prepared
from kdbench.registry import load_registry
from tests.conftest import write_prepared


@pytest.mark.slow
def test_bench_reports_every_figure(benchmark, tmp_path):
    root = write_prepared(tmp_path / "p", videos_per_split=(16, 2, 2), frames=4, size=32)
    reg = load_registry()
    entries = [reg["vanilla"], reg["pkt"], reg["tokd"]]
    figures = benchmark.pedantic(  # the benchmark: one quick `kdbench bench` of three methods
        run_bench, args=("quick", "resnet18_thin", torch.device("cpu"), entries, reg),
        kwargs={"steps": 1, "rounds": 1, "threads_check": False, "progress": False,
                "data": load_prepared(root, "synthetic")}, rounds=1, iterations=1)
    benchmark.extra_info.update(json.loads(json.dumps(figures)))
    assert figures["device"].startswith("cpu") and figures["preset"] == "quick"
    assert (figures["steps"], figures["rounds"], figures["student"]) == (1, 1, "resnet18_thin")
    assert figures["amp"] is False and figures["channels_last"] is True  # auto, on the CPU
    for key in ("loader_images_per_s", "bare_images_per_s", "loop_images_per_s",
                "loop_over_bare", "peak_memory_mb", "cache_build_s"):
        assert math.isfinite(figures[key]) and figures[key] > 0, key
    assert figures["loop_over_bare"] == pytest.approx(
        figures["loop_images_per_s"] / figures["bare_images_per_s"])
    assert "processes" not in figures  # threads_check=False: no side-by-side processes
    # vanilla is the teacher-free baseline; every teacher mode of the others is timed against it
    assert set(figures["kd_over_vanilla"]) == {"pkt/rgb", "pkt/both", "tokd/rgb", "tokd/both"}
    assert all(math.isfinite(r["live"]) and math.isfinite(r["cached"])
               for r in figures["kd_over_vanilla"].values())
    rot = figures["rotation_over_none"]  # declared by tokd's registry entry
    assert set(rot) == {"1024", "2048", "size"} and rot["size"] == 96
    table = bench_table(figures)
    assert table.row_count >= 10
    labels = list(table.columns[0].cells)
    assert "tokd/both over the baseline (live / cached)" in labels
    assert "rotation_over_none 2048 (96 px)" in labels


@pytest.mark.slow
def test_side_by_side_processes_take_their_share_of_the_cores():
    from kdbench.bench import side_by_side
    from kdbench.threads import busy_elsewhere

    if busy_elsewhere() > 0:  # by design a process then takes fewer than every core
        pytest.skip("other programs keep this machine's cores busy; the shares assume an "
                    "idle machine")
    got = side_by_side("resnet18_thin", 16, 8, seconds=1.0)
    cores = len(__import__("os").sched_getaffinity(0))
    assert got["alone"]["threads"] == cores
    assert [p["threads"] for p in got["pair"]] == [max(1, cores // 2)] * 2
    assert all(p["images_per_s"] > 0 for p in got["pair"] + got["pair_default_threads"])
