"""`kdbench bench` on a tiny dataset: the figures it reports, as pytest-benchmark extra_info.

Run: ``pytest tests/bench --benchmark-only -s``; the full measurement is ``kdbench bench``.
"""

from __future__ import annotations

import json

import pytest
import torch

from kdbench.bench import bench_table, run_bench
from kdbench.data.datasets import load_prepared
from kdbench.registry import load_registry
from tests.conftest import write_prepared


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    root = write_prepared(tmp_path_factory.mktemp("p") / "p", videos_per_split=(16, 2, 2),
                          frames=4, size=32)
    reg = load_registry()
    entries = [reg["vanilla"], reg["pkt"], reg["tokd"]]
    return run_bench("quick", "resnet18_thin", torch.device("cpu"), entries, reg, steps=1,
                     rounds=1, threads_check=False, progress=False,
                     data=load_prepared(root, "synthetic"))


def test_bench_reports_every_figure(benchmark, figures):
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(json.loads(json.dumps(figures)))
    assert figures["device"].startswith("cpu") and figures["preset"] == "quick"
    assert figures["amp"] is False and figures["channels_last"] is True  # auto, on the CPU
    for key in ("loader_images_per_s", "bare_images_per_s", "loop_images_per_s",
                "loop_over_bare", "peak_memory_mb", "cache_build_s"):
        assert figures[key] > 0
    assert set(figures["kd_over_vanilla"]) == {"pkt/rgb", "pkt/both", "tokd/rgb", "tokd/both"}
    assert all(r["live"] > 0 and r["cached"] > 0 for r in figures["kd_over_vanilla"].values())
    rot = figures["rotation_over_none"]  # declared by tokd's registry entry
    assert set(rot) == {"1024", "2048", "size"} and rot["size"] == 96
    json.dumps(figures)  # the --json file's content
    assert bench_table(figures).row_count >= 10


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
