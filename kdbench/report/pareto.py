"""The compression figure: test AUC against a cost (GFLOPs, ONNX latency or file size, log
scale) of every model of :func:`kdbench.report.compression.compression_models`, one marker per
technique family, and the Pareto front (highest AUC for its cost) as a step line."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError

AXES = {"gflops": "GFLOPs per image",
        "latency": "ONNX CPU latency at batch 32 (ms / image)",
        "size": "model file (MB: ONNX fp32 or int8; gzip where not exported)"}
TITLES = {"gflops": "GFLOPs", "latency": "CPU latency", "size": "file size"}
FAMILIES = {"teacher": ("teacher", "s"), "uncompressed": ("none / distilled", "o"),
            "unstructured": ("unstructured", "v"), "structured": ("structured", "^"),
            "structured + distiller": ("structured + distiller", "P"), "int8": ("int8", "D"),
            "resolution": ("smaller input", "<")}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """The indices of the non-dominated ``(cost, score)`` points (minimise cost, maximise
    score), by increasing cost: a point is dominated by another at most as costly and at
    least as good, and better in one (equal points are both kept)."""
    front = [i for i, (x, y) in enumerate(points)
             if not any(u <= x and v >= y and (u < x or v > y) for u, v in points)]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def _cost(e: dict[str, Any], x: str) -> float:
    value = {"gflops": e["gflops"], "latency": e["ms_b32"]}.get(x)
    if x == "size":
        value = e["mb_file"] if math.isfinite(e["mb_file"]) else e["mb_gzip"]
    return value if value is not None and math.isfinite(value) and value > 0 else math.nan


def pareto_points(results: Path, x: str = "gflops") -> list[dict[str, Any]]:
    """The models of the store with a test AUC and a positive ``x``: ``{"x", "auc" (%),
    "family", "name", "entry"}`` (against GFLOPs the int8 files are left out: they count the
    multiply-adds of their fp32 model; latency and size show them)."""
    if x not in AXES:
        raise KdbenchError(f"unknown x {x!r} for the Pareto figure; choose one of "
                           f"{', '.join(AXES)}")
    from kdbench.report.compression import compression_models

    entries = compression_models(Path(results))
    parents = {e["parent"] for e in entries if e["family"] != "teacher"}
    points = []
    for e in entries:
        cost = _cost(e, x)
        if math.isnan(cost) or not math.isfinite(e["auc"]):
            continue
        if x == "gflops" and e["family"] == "int8":  # int8 counts the same multiply-adds
            continue
        name = e["technique"] + (f" {100 * e['target']:g} %" if e["target"] else "")
        if e["family"] == "teacher":
            name = e["label"]
        elif len(parents) > 1:  # which parent: its method/mode, or the whole label
            students = {p.split("/")[-3] for p in parents}
            short = e["parent"] if len(students) > 1 else "/".join(e["parent"].split("/")[-2:])
            name = f"{short}: {name}"
        points.append({"x": cost, "auc": 100 * e["auc"], "family": e["family"], "name": name,
                       "entry": e})
    return points + resolution_points(Path(results), x)


def resolution_points(results: Path, x: str) -> list[dict[str, Any]]:
    """The students at smaller inputs (run folders ``<student>@<side>px``), one point per
    student, method and mode: mean test AUC over seeds against their mean GFLOPs, or the ONNX
    latency / file of their exported model (``kdbench export``) where it was measured."""
    import numpy as np

    from kdbench.report.listing import read_or_skip

    groups: dict[str, list[dict[str, float]]] = {}
    for path in sorted(Path(results).glob("runs/*/*@*px*/*/*/seed*/metrics.json")):
        m = read_or_skip(path)
        if not isinstance(m, dict) or m.get("status") != "finished" or not m.get("test"):
            continue
        run = path.parent
        deploy = read_or_skip(run / "deploy" / "deploy.json") \
            if (run / "deploy" / "deploy.json").is_file() else None
        onnx = ((deploy or {}).get("formats") or {}).get("onnx_fp32") or {}
        groups.setdefault("/".join(run.relative_to(Path(results) / "runs").parts[:4]),
                          []).append({"auc": m["test"]["auc"], "gflops": m.get("gflops"),
                                      "ms_b32": onnx.get("latency_ms_b32"),
                                      "mb_file": onnx.get("file_mb")})
    points = []
    for name, runs in groups.items():
        values = [r[{"gflops": "gflops", "latency": "ms_b32", "size": "mb_file"}[x]]
                  for r in runs]
        values = [v for v in values if v is not None and math.isfinite(v) and v > 0]
        if values:
            points.append({"x": float(np.mean(values)),
                           "auc": 100 * float(np.mean([r["auc"] for r in runs])),
                           "family": "resolution", "name": name, "entry": {}})
    return points


def plot_pareto(results: Path, out: Path, x: str = "gflops") -> int:
    """Test AUC (%) against ``x`` ("gflops", "latency": ONNX ms / image at batch 32, "size":
    MB of the model's file) on a log axis, one marker shape per technique family, the Pareto
    front as a step line with its points and the teacher labelled inside the axes (the table
    names every point); writes ``out`` and returns the number of points."""
    from kdbench.report.figures import _pyplot, label_points, save_labelled

    points = pareto_points(results, x)
    if not points:
        raise KdbenchError(f"no model with a test AUC and a {x} in {results}; make compressed "
                           "runs with `kdbench compress RUN --prune structured --target 0.9`"
                           + (" and measure them with `kdbench export RUN --format onnx`"
                              if x != "gflops" else ""))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for family, (legend, marker) in FAMILIES.items():
        pts = [p for p in points if p["family"] == family]
        if pts:
            ax.scatter([p["x"] for p in pts], [p["auc"] for p in pts], marker=marker, s=50,
                       label=legend, zorder=3)
    others = [p for p in points if p["family"] not in FAMILIES]
    if others:
        ax.scatter([p["x"] for p in others], [p["auc"] for p in others], marker="x", s=50,
                   label="other", zorder=3)
    front = [points[i] for i in pareto_front([(p["x"], p["auc"]) for p in points])]
    ax.step([p["x"] for p in front], [p["auc"] for p in front], where="post", color="gray",
            ls="--", lw=1.2, label="Pareto front", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel(f"{AXES[x]}, log scale")
    ax.set_ylabel("test AUC (%)")
    ax.set_title(f"Compression: test AUC against {TITLES[x]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    named = [p in front or p["family"] == "teacher" for p in points]  # the table names all
    labels = label_points(ax, [p["x"] for p in points], [p["auc"] for p in points],
                          [p["name"] if k else "" for p, k in zip(points, named)])
    save_labelled(fig, ax, labels, out)
    return len(points)
