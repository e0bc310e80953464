"""The transfer table: each strategy of `kdbench transfer` against ``full`` fine-tuning of the
same parent runs on the same target (same epochs, shots and learning rate), with the trained
parameters, the training time and a paired interval of the AUC difference, from the store's
``transferred/`` runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from kdbench.errors import KdbenchError
from kdbench.report.intervals import Comparison, holm, procedure_note, two_level_bootstrap
from kdbench.report.listing import read_or_skip
from kdbench.report.tables import Cell, Report
from kdbench.train.predictions import PREDICTIONS, load_predictions

ORDER = ("linear", "partial", "adapter", "lora", "full")
MAKE = ("make transferred runs with `kdbench transfer RUN --to DATASET --strategy full` (and "
        "the other strategies on the same RUN and target)")


def _records(results: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(Path(results).glob("transferred/**/metrics.json")):
        m = read_or_skip(path)
        if not isinstance(m, dict) or m.get("role") != "transferred" \
                or m.get("status") != "finished":
            continue
        parent = Path(m["parent"]["path"])
        tr = m["transfer"]
        target = path.parent.parent.name
        # a run's seeds share a row; a teacher (teachers/<dataset>/<folder>) is its own row
        over = parent if parent.parts[0] == "teachers" else parent.parent
        group = (str(over), target, tr["epochs"], tr.get("shots"), tr.get("lr"))
        out.append({"group": group, "seed": int(m["seed"]), "strategy": tr["strategy"],
                    "kind": tr["kind"], "m": m, "preds": path.parent / PREDICTIONS})
    return out


def _cell(values: list[float]) -> Cell:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return Cell(math.nan, math.nan, 0)
    return Cell(float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan, len(v))


def _compare(rows: list[dict], full: list[dict], label: str) -> Comparison | None:
    a = {r["seed"]: r["preds"] for r in rows if r["preds"].is_file()}
    b = {r["seed"]: r["preds"] for r in full if r["preds"].is_file()}
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return two_level_bootstrap({s: load_predictions(a[s]) for s in seeds},
                               {s: load_predictions(b[s]) for s in seeds}, "auc", label=label)


def transfer_report(results: Path) -> Report:
    """The transfer table of ``results`` (see the module doc)."""
    records = _records(results)
    if not records:
        raise KdbenchError(f"{results} has no finished transferred run; " + MAKE)
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in records:
        groups.setdefault(r["group"], {}).setdefault(r["strategy"], []).append(r)
    rows, comparisons, where = [], [], []
    for group in sorted(groups, key=str):
        parent, target, epochs, shots, lr = group
        strategies = groups[group]
        full = strategies.get("full", [])
        full_params = np.mean([r["m"]["transfer"]["trainable_params"] for r in full]) \
            if full else math.nan
        for name in sorted(strategies, key=lambda s: (ORDER.index(s.split(":")[0])
                                                      if s.split(":")[0] in ORDER else 99, s)):
            rs = strategies[name]
            tr = [r["m"]["transfer"] for r in rs]
            params = float(np.mean([t["trainable_params"] for t in tr]))
            share = f"{100 * params / full_params:.2f}" if full_params == full_params else "-"
            row: list = [parent, target, name, f"{epochs}", str(shots or "all"),
                         f"{params / 1e3:.1f}", share,
                         f"{np.mean([t['train_time_s'] for t in tr]):.0f}",
                         _cell([r["m"]["test"].get("acc") for r in rs]),
                         _cell([r["m"]["test"].get("auc") for r in rs]),
                         _cell([r["m"]["test"].get("ap") for r in rs])]
            c = None if name == "full" or not full else _compare(rs, full, f"{target} {name}")
            if c is not None:
                comparisons.append(c)
                where.append((len(rows), c))
            row.append("" if name == "full" else "-")
            rows.append(row)
    holm(comparisons)
    for i, c in where:
        rows[i][-1] = f"{c.text()}{c.mark}"
    notes = ["each row: one strategy's runs (one per parent seed) on the target; trained "
             "parameters (K) and their share of full's; training time in s (the epochs' wall "
             "time); acc / AUC / AP on the target's test split in %, mean ± std over seeds",
             "ΔAUC vs full: the strategy's AUC minus full fine-tuning's on the same test frames "
             "(points) [interval]"]
    note = procedure_note(comparisons, "the strategy against full")
    if note:
        notes.append(note)
    return Report("Transfer: strategies against full fine-tuning",
                  ["parent", "target", "strategy", "epochs", "shots", "trained (K)",
                   "% of full", "train s", "acc", "AUC", "AP", "ΔAUC vs full"], rows, notes)
