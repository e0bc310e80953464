"""`kdbench table`: the finished (and unfinished) runs of a result store as a table."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from kdbench.config import METRIC_NAMES
from kdbench.files import StoreError, read_json, read_jsonl
from kdbench.report.marks import collapse_reason

log = logging.getLogger(__name__)


def read_or_skip(path: Path, lines: bool = False) -> dict | list | None:
    """A JSON (``lines``: JSON-lines) file of the store, or None with a warning when it is
    damaged (a report skips it instead of failing)."""
    try:
        return read_jsonl(path) if lines else read_json(path)
    except StoreError as exc:
        log.warning(f"skipped: {exc}")
        return None

COLUMNS = ["dataset", "student", "method", "mode", "seed", "status", "best_epoch", "acc", "auc",
           "ap", "eer", "video_auc", "wall_s"]
EXTRA = ["variant", "params", "gflops", "run_info", "finished_at", "path", "teacher_sha256",
         "other_teacher", "fake_fraction",  # fake_fraction: of the test frames
         "teacher_label",  # a teacher's kind and backbone: "dual resnet18_thin"
         "collapsed"]  # why a finished student run collapsed ("" when it did not)


def teacher_label(kind: str | None, backbone: str, freq_backbone: str | None = None) -> str:
    """How every table names a teacher: ``2 x B`` (dual, both branches B), ``B + F`` (dual
    with frequency branch F), ``single B``; a record made before teacher kinds is dual."""
    if kind == "single":
        return f"single {backbone}"
    backbone, _, named = backbone.partition("+")  # a dual teacher's name: B or B+F
    freq = freq_backbone or named or backbone
    return f"2 x {backbone}" if freq == backbone else f"{backbone} + {freq}"


def collect_runs(results: Path, registry: dict | None = None) -> pd.DataFrame:
    """One row per run folder (students and teachers), finished or not. A run that recorded
    no value of a hyper-parameter whose registry ``legacy`` value differs from today's default
    is listed under that value's variant (``m@key=old value``), so it is not
    taken for a run of the default."""
    from kdbench.registry import load_registry

    registry = load_registry() if registry is None else registry
    rows = []
    for kind in ("teachers", "runs"):
        for folder in sorted({p.parent for p in (Path(results) / kind).rglob("*")
                              if p.name in ("metrics.json", "last.pt", "history.jsonl")}):
            rows.append(_row(folder, kind, Path(results), registry))
    teachers = {r["path"]: r["teacher_sha256"] for r in rows if r["method"] == "teacher"}
    for r in rows:  # distilled from other weights than the stored teacher's (it was retrained)
        stored = teachers.get(r.pop("teacher_path", None))
        r["other_teacher"] = bool(r["teacher_sha256"] and stored and r["teacher_sha256"] != stored)
    return pd.DataFrame(rows, columns=COLUMNS + EXTRA)


def _legacy_variant(variant: str, entry, recorded: dict) -> str:
    """``variant`` plus ``key=value`` for each ``legacy`` hyper-parameter the run did not
    record and whose legacy value is not today's default."""
    extra = {k: v for k, v in entry.legacy.items()
             if k not in recorded and entry.defaults.get(k) != v}
    if not extra:
        return variant
    tags = dict(t.split("=", 1) for t in variant.split(",") if "=" in t)
    tags.update({k: str(v) for k, v in extra.items()})
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


def _row(folder: Path, kind: str, results: Path, registry: dict) -> dict:
    metrics_path = folder / "metrics.json"
    m = read_or_skip(metrics_path) if metrics_path.is_file() else {}
    damaged = m is None
    m = m or {}
    parts = folder.relative_to(results / kind).parts
    if kind == "teachers":
        base = {"dataset": parts[0], "student": parts[-1], "method": "teacher", "variant": "",
                "mode": "both", "seed": m.get("seed")}
    else:
        dataset, student, label, mode, seed = (list(parts) + [None] * 5)[:5]
        method, _, variant = (label or "").partition("@")
        if method in registry and isinstance((m or {}).get("hparams"), dict):
            variant = _legacy_variant(variant, registry[method], m["hparams"])
        number = seed[4:] if seed and seed.startswith("seed") else ""
        base = {"dataset": dataset, "student": student, "method": method, "variant": variant,
                "mode": mode, "seed": int(number) if number.isdigit() else seed}
    test = m.get("test") if isinstance(m.get("test"), dict) else {}
    status = "damaged metrics.json" if damaged else m.get("status", "unfinished")
    if kind == "teachers":
        sha, teacher_path = m.get("weights_sha256"), None
    else:  # the teacher folder of this store (the recorded path may be another machine's)
        sha, recorded = m.get("teacher_sha256"), m.get("teacher")
        dataset = m.get("dataset") or str(base["dataset"]).partition("@")[0]
        teacher_path = (str(results / "teachers" / dataset / Path(recorded).name)
                        if recorded else None)
    return {**base, "status": status, "best_epoch": m.get("best_epoch"),
            **{k: test.get(k) for k in METRIC_NAMES},
            "wall_s": m.get("wall_time_s"), "params": m.get("params"), "gflops": m.get("gflops"),
            "run_info": m.get("run_info") or {}, "finished_at": m.get("finished_at"),
            "path": str(folder), "teacher_sha256": sha, "teacher_path": teacher_path,
            "fake_fraction": test.get("fake_fraction"),
            "collapsed": (collapse_reason(folder, m) if kind == "runs" and status == "finished"
                          else ""),
            "teacher_label": (teacher_label(m.get("kind"), m.get("backbone")
                                            or parts[-1].rsplit("-", 1)[0])
                              if kind == "teachers" else None)}
