"""The generator table: which generators a detector was trained on (its run folder's protocol,
``runs/<dataset>@train=a+b/...``) against each generator of its test split, with the
in-distribution (ID) and out-of-distribution (OOD) means; compressed children of those runs
(``compressed/runs/...``) likewise, with their change against the parent.

A test generator's cells score its fakes against its reals (a real of no generator, e.g. FF++'s
or Synthbuster's RAISE photographs, counts in every generator's slice), from each run's
``predictions.npz``; a run made before predictions named generators is left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdbench.data.generators import ANY
from kdbench.errors import KdbenchError
from kdbench.report.listing import read_or_skip
from kdbench.report.tables import Cell, Report
from kdbench.train.metrics import auc, average_precision
from kdbench.train.predictions import PREDICTIONS, Predictions, load_predictions

SCORES = {"auc": auc, "ap": average_precision}
OOD_MARK = "°"
MAKE = ("train runs on chosen generators with `kdbench run --train-generators A,B`, or every "
        "leave-one-out set with `kdbench reproduce --protocol logo --dataset synthetic_gen`")


def slice_scores(pred: Predictions, metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{generator: {metric: value}}``: each fake generator of the predictions scored on its
    fakes and its reals (reals of no generator count in every slice)."""
    if pred.generator is None:
        return {}
    gen, label = np.asarray(pred.generator).astype(str), np.asarray(pred.label)
    shared = (label == 0) & np.isin(gen, ANY)
    out: dict[str, dict[str, float]] = {}
    for g in sorted(set(gen[label == 1])):
        keep = (gen == g) | shared
        if len(np.unique(label[keep])) < 2:
            continue  # no reals to score this generator against
        out[g] = {m: SCORES[m](pred.prob[keep], label[keep]) for m in metrics}
    return out


@dataclass
class _Model:
    """The seeds of one trained (or compressed) detector: its per-seed slice scores."""

    dataset: str
    train: tuple[str, ...] | None  # None: every generator
    name: str  # student method[@variant] mode [+ compression tag]
    parent: str | None = None  # a compressed model's parent's name
    seeds: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)


def _parse_protocol(folder: str) -> tuple[str, tuple[str, ...] | None]:
    """(the dataset with its folder's other settings, e.g. ``synthetic_gen@view=dwt``; the
    training generators, None for all) of a run folder's dataset part."""
    dataset, _, protocol = folder.partition("@")
    train, other = None, []
    for part in (p for p in protocol.split(",") if p):
        key, _, value = part.partition("=")
        if key == "train" and value:
            train = tuple(sorted(value.split("+")))
        elif key != "test":
            other.append(part)
    return (f"{dataset}@{','.join(other)}" if other else dataset), train


def _seed(name: str) -> int | None:
    return int(name[4:]) if name.startswith("seed") and name[4:].isdigit() else None


def collect(results: Path, metrics: Sequence[str], dataset: str | None = None) -> list[_Model]:
    """The store's finished runs (and compressed children) with per-generator predictions."""
    models: dict[tuple, _Model] = {}
    for pred_path in sorted(Path(results).glob(f"runs/*/*/*/*/seed*/{PREDICTIONS}")):
        run = pred_path.parent
        ds_folder, student, label, mode = run.relative_to(Path(results) / "runs").parts[:4]
        _add(models, run, ds_folder, f"{student} {label} {mode}", None, metrics, dataset)
    for pred_path in sorted(Path(results).glob(f"compressed/*/*/*/*/seed*/*/{PREDICTIONS}")):
        child = pred_path.parent
        ds_folder, student, label, mode = child.relative_to(
            Path(results) / "compressed").parts[:4]
        parent = f"{student} {label} {mode}"
        _add(models, child, ds_folder, f"{parent} + {child.name}", parent, metrics, dataset,
             seed_folder=child.parent.name)
    return list(models.values())


def _add(models: dict[tuple, _Model], run: Path, ds_folder: str, name: str, parent: str | None,
         metrics: Sequence[str], dataset: str | None, seed_folder: str | None = None) -> None:
    seed = _seed(seed_folder or run.name)
    ds, train = _parse_protocol(ds_folder)
    if seed is None or (dataset and ds.partition("@")[0] != dataset):
        return
    m = read_or_skip(run / "metrics.json") if (run / "metrics.json").is_file() else None
    if not isinstance(m, dict) or m.get("status") != "finished":
        return
    try:
        scores = slice_scores(load_predictions(run / PREDICTIONS), metrics)
    except KdbenchError:
        return
    if len(scores) < 2:  # one generator (or none named): nothing to cross
        return
    seen = (m.get("generators") or {}).get("train")
    if train is None and seen:  # every generator of the split: those it held are the ID ones
        train = tuple(sorted(seen))
    key = (ds, train, name)
    models.setdefault(key, _Model(ds, train, name, parent)).seeds[seed] = scores


def _cell(values: dict[str, list[float]], metrics: Sequence[str], mark: str = "") -> Cell:
    parts = []
    for m in metrics:
        v = [x for x in values.get(m, []) if not math.isnan(x)]
        mean = float(np.mean(v)) if v else math.nan
        std = float(np.std(v, ddof=1)) if len(v) > 1 else math.nan
        parts.append(Cell(mean, std, len(v), metric=m))
    if len(parts) == 1:
        parts[0].mark = mark
        return parts[0]
    return Cell(parts[0].mean, parts[0].std, parts[0].n, mark=mark, parts=parts)


def _train_label(train: tuple[str, ...] | None, columns: list[str]) -> str:
    if train is None:
        return "all"
    rest = [g for g in columns if g not in train]
    if len(rest) == 1 and len(train) > 1 and set(train) <= set(columns):
        return f"all but {rest[0]}"
    return "+".join(train)


def _group_mean(scores: dict[str, dict[str, float]], names: list[str], metric: str) -> float:
    v = [scores[g][metric] for g in names if g in scores]
    return float(np.mean(v)) if v else math.nan


def generators_report(results: Path, dataset: str | None = None,
                      metrics: Sequence[str] = ("auc", "ap")) -> Report:
    """The train x test generator matrix of the store (see the module doc)."""
    metrics = [m for m in metrics if m in SCORES] or ["auc", "ap"]
    models = collect(Path(results), metrics, dataset)
    if not models:
        raise KdbenchError(f"{results} has no finished run with test predictions by generator; "
                           + MAKE)
    columns = sorted({g for mdl in models for s in mdl.seeds.values() for g in s})
    by_key = {(mdl.dataset, mdl.train, mdl.name): mdl for mdl in models}
    rows = []
    models.sort(key=lambda m: (m.dataset, m.name.split(" + ")[0], m.parent is not None,
                               _train_label(m.train, columns), m.name))
    for mdl in models:
        gens = sorted({g for s in mdl.seeds.values() for g in s})
        ood = [g for g in gens if mdl.train is not None and g not in mdl.train]
        ind = [g for g in gens if g not in ood]
        row: list = [mdl.dataset, _train_label(mdl.train, columns), mdl.name]
        for g in columns:
            vals = {m: [s[g][m] for s in mdl.seeds.values() if g in s] for m in metrics}
            row.append(_cell(vals, metrics, OOD_MARK if g in ood else ""))
        for names in (ind, ood):
            vals = {m: [_group_mean(s, names, m) for s in mdl.seeds.values()] for m in metrics}
            row.append(_cell(vals, metrics) if names else "-")
        row += _deltas(mdl, by_key.get((mdl.dataset, mdl.train, mdl.parent)), ind, ood,
                       metrics[0])
        rows.append(row)
    label = " / ".join(m.upper() for m in metrics)
    notes = [f"cells: test {label} in % on each test generator's fakes against its reals (reals "
             "tied to no generator count in every column), mean ± std over seeds (number of "
             "seeds)",
             f"{OOD_MARK}: a generator the detector was not trained on (out of distribution); "
             "ID mean / OOD mean: the mean over the trained / held-out generators, per seed",
             f"ΔID, ΔOOD ({metrics[0].upper()} points): a compressed model's ID and OOD means "
             "minus its parent's, mean over the seeds both have; the review's claim is ΔOOD "
             "below ΔID"]
    return Report(f"Generators: trained on (rows) x tested on (columns), {label}",
                  ["dataset", "trained on", "model", *columns, "ID mean", "OOD mean", "ΔID",
                   "ΔOOD"], rows, notes)


def _deltas(mdl: _Model, parent: _Model | None, ind: list[str], ood: list[str],
            metric: str) -> list[str]:
    if mdl.parent is None or parent is None:
        return ["", ""]
    out = []
    for names in (ind, ood):
        diffs = [_group_mean(s, names, metric) - _group_mean(parent.seeds[k], names, metric)
                 for k, s in mdl.seeds.items() if k in parent.seeds and names]
        diffs = [d for d in diffs if not math.isnan(d)]
        out.append(f"{np.mean(diffs) * 100:+.2f} ({len(diffs)})" if diffs else "-")
    return out


def gap_changes(results: Path, dataset: str | None = None,
                metric: str = "auc") -> dict[str, list[float]]:
    """Per compressed model (the name its rows share, training sets pooled): ΔOOD - ΔID
    against its parent for each (training set, seed) both have, the quantity the review's
    claim makes negative."""
    models = collect(Path(results), [metric], dataset)
    by_key = {(m.dataset, m.train, m.name): m for m in models}
    out: dict[str, list[float]] = {}
    for mdl in models:
        parent = by_key.get((mdl.dataset, mdl.train, mdl.parent))
        if mdl.parent is None or parent is None or mdl.train is None:
            continue
        gens = sorted({g for s in mdl.seeds.values() for g in s})
        ood = [g for g in gens if g not in mdl.train]
        ind = [g for g in gens if g in mdl.train]
        name = mdl.name.replace(mdl.parent, "", 1).lstrip(" +") or mdl.name
        for k, s in mdl.seeds.items():
            if k in parent.seeds and ood and ind:
                p = parent.seeds[k]
                d = ((_group_mean(s, ood, metric) - _group_mean(p, ood, metric))
                     - (_group_mean(s, ind, metric) - _group_mean(p, ind, metric)))
                if not math.isnan(d):
                    out.setdefault(f"{mdl.parent.split()[1]} + {name}", []).append(d)
    return out
