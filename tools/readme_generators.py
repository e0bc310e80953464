"""The generators section of results/README.md (used by tools/readme_results.py): the table
`kdbench table --kind generators` prints and a paragraph of what it measures, every number
read from the store (the leave-one-generator-out runs on synthetic_gen)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

COMMAND = ("kdbench reproduce --protocol logo --dataset synthetic_gen --preset cpu --seeds 0,1,2 "
           "--compression --results results")
CLAIM = ("compressed detectors hold on the generators they were trained on and drop on unseen "
         "ones (Karathanasis et al. 2025)")


def _mean(cells: list) -> float:
    values = [c.mean for c in cells if hasattr(c, "mean") and not math.isnan(c.mean)]
    return float(np.mean(values)) if values else math.nan


def _delta(text: str) -> float:
    """The number of a ΔID / ΔOOD cell (``-5.00 (3)``), NaN when empty."""
    try:
        return float(str(text).split()[0])
    except (ValueError, IndexError):
        return math.nan


def generators_section(results: Path) -> str:
    """The section, or "" when the store has no run with per-generator predictions."""
    from kdbench.errors import KdbenchError
    from kdbench.report.generators import gap_changes, generators_report

    try:
        report = generators_report(results, "synthetic_gen")
    except KdbenchError:
        return ""
    by_model: dict[str, list] = {}
    for row in report.rows:
        by_model.setdefault(row[2], []).append(row)
    lines = []
    for model, rows in by_model.items():
        ind, ood = _mean([r[-4] for r in rows]), _mean([r[-3] for r in rows])
        line = (f"- {model}: ID mean {100 * ind:.2f}, OOD mean {100 * ood:.2f} (AUC, mean over "
                f"its {len(rows)} training sets): OOD {100 * (ood - ind):+.2f} points")
        lines.append(line)
    claim = []
    for model, diffs in gap_changes(results, "synthetic_gen").items():
        d = 100 * np.asarray(diffs)
        se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.nan
        lo, hi = d.mean() - 2 * se, d.mean() + 2 * se
        verdict = ("the claim holds here (the unseen generators lose more)" if hi < 0 else
                   "the opposite of the claim" if lo > 0 else
                   "no difference this store can tell from 0")
        claim.append(f"- {model}: (ΔOOD - ΔID) = {d.mean():+.2f} ± {2 * se:.2f} AUC points "
                     f"(mean ± 2 standard errors over {len(d)} training sets x seeds): "
                     f"{verdict}")
    return ("## Generators: trained on four, tested on five\n\n"
            f"Made by `{COMMAND}` (leave one generator out: five training sets; the protocol "
            "in [docs/datasets.md](../docs/datasets.md#generator-protocols)); `kdbench table "
            "--kind generators --results results`:\n\n" + report.markdown()
            + "\nWhat it measures, per model:\n\n" + "\n".join(lines)
            + f"\n\nThe claim that {CLAIM}, per compressed model:\n\n"
            + ("\n".join(claim) or "- no compressed model with its parent in this store")
            + "\n")
