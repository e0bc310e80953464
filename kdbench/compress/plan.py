"""`kdbench reproduce --compression`: the compression plan on a store's teacher-free student
runs, its teacher and Table 3's best distillers, then exported and quantized for the
compression table and the Pareto figure."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdbench.compress.settings import Compression, teacher_free
from kdbench.errors import KdbenchError

log = logging.getLogger(__name__)
TARGETS = (0.6, 0.7, 0.8, 0.9)
FINETUNE_EPOCHS = 2  # after every pruning: the review fine-tunes after pruning, so does this
BEST = 3  # Table 3's best distillers, by mean test accuracy over seeds (Table 3's metric)


@dataclass(frozen=True)
class CompressionPlan:
    """The parents (the teacher-free student runs), the compressions of each, and the
    distilled runs quantized beside them."""

    parents: list[Path]
    compressions: list[Compression]
    distilled: list[Path]

    def __len__(self) -> int:
        return len(self.parents) * len(self.compressions)


def compressions(registry: dict) -> list[Compression]:
    """Unstructured (per layer, the review's method) and structured at each of
    :data:`TARGETS`, fine-tuned with cross-entropy; structured 90 % fine-tuned with each
    method whose registry ``reports`` declare ``compression: {mode}``."""
    out = [Compression(p, t, finetune=FINETUNE_EPOCHS)
           for p in ("unstructured", "structured") for t in TARGETS]
    for name, entry in registry.items():
        spec = entry.reports.get("compression")
        if spec:
            out.append(Compression("structured", 0.9, finetune=FINETUNE_EPOCHS,
                                   finetune_with=name, finetune_mode=spec["mode"]))
    return out


def best_distillers(runs: pd.DataFrame, plain: str, k: int = BEST) -> list[tuple[str, str]]:
    """The ``k`` (method, mode) cells of default settings (no variant) with the highest mean
    test accuracy over their finished, uncollapsed seeds; the teacher-free method ``plain``
    and the teacher excluded."""
    done = runs[(runs["status"] == "finished") & (runs["variant"].fillna("") == "")
                & ~runs["method"].isin([plain, "teacher"])
                & (runs["collapsed"].fillna("") == "")]
    if done.empty:
        return []
    means = done.groupby(["method", "mode"])["acc"].mean().sort_values(ascending=False,
                                                                        kind="stable")
    return [tuple(i) for i in means.index[:k]]


def make_plan(results: Path, dataset: str, student: str, seeds: Sequence[int],
              registry: dict) -> CompressionPlan:
    """The plan on ``results``: the teacher-free ``student`` runs of ``seeds`` (each must be
    finished with its best.pt) and the seeds of Table 3's best distillers."""
    from kdbench.report.listing import collect_runs

    plain = teacher_free(registry)
    runs = collect_runs(results, registry)
    runs = runs[(runs["dataset"] == dataset) & (runs["student"] == student)]
    base = Path(results) / "runs" / dataset / student
    parents = [base / plain / "none" / f"seed{s}" for s in seeds]
    missing = [p for p in parents if not (p / "best.pt").is_file()]
    if missing:
        raise KdbenchError(
            f"the compression plan needs the finished {plain} runs with their best.pt; "
            f"{missing[0]} has none; make them with `kdbench run --methods {plain} --seeds "
            f"{','.join(map(str, seeds))} --results {results}` on this machine")
    distilled = [base / m / mode / f"seed{s}" for m, mode in best_distillers(runs, plain)
                 for s in seeds]
    distilled = [d for d in distilled if (d / "best.pt").is_file()]
    return CompressionPlan(parents, compressions(registry), distilled)


def run_plan(results: Path, dataset: str, student: str, seeds: Sequence[int], *,
             registry: Sequence[Path] = (), data_root: Path | None = None,
             device: str | None = None, threads: int | None = None,
             progress: bool = True) -> CompressionPlan:
    """Make every child run of the plan (finished ones are found), then export each model
    (children, parents and the distilled runs) and quantize it to static int8; the parents
    and the structured-90 % children also to dynamic int8 (the review's), so the two are
    compared on the same models."""
    from kdbench.compress.api import compress
    from kdbench.deploy.api import INT8, quantize
    from kdbench.deploy.measure import DEPLOY_DIR, DEPLOY_FILE
    from kdbench.files import read_json
    from kdbench.registry import load_registry

    reg = load_registry(list(registry))
    plan = make_plan(Path(results), dataset, student, seeds, reg)
    log.info(f"compression plan: {len(plan)} compressed runs of {len(plan.parents)} parent "
             f"runs; {len(plan.distilled)} distilled runs quantized beside them")
    children = []
    for parent in plan.parents:
        for c in plan.compressions:
            out, _ = compress(parent, prune=c.prune, target=c.target, scope=c.scope,
                              steps=c.steps, finetune=c.finetune, finetune_with=c.finetune_with,
                              finetune_mode=c.finetune_mode, data_root=data_root,
                              device=device, threads=threads, progress=progress,
                              registry=list(registry))
            children.append((out, c))
    dynamic = set(plan.parents) | {o for o, c in children
                                   if c.prune == "structured" and c.target == 0.9}
    for run in [*plan.parents, *plan.distilled, *(o for o, _ in children)]:
        record = run / DEPLOY_DIR / DEPLOY_FILE
        have = read_json(record).get("formats", {}) if record.is_file() else {}
        for kind in ("static", "dynamic") if run in dynamic else ("static",):
            if INT8[kind][0] not in have:  # exported first when it is not
                quantize(run, int8=kind, data_root=data_root, threads=threads)
    return plan
