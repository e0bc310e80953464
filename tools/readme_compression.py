"""The compression section of results/README.md (used by tools/readme_results.py): the table
`kdbench table --kind compression` prints, the Pareto figure, and the review's claim tested
on the store's 90 % models, every number read from the store."""

from __future__ import annotations

import math
from pathlib import Path

# Karathanasis et al. (2025): in-distribution performance holds at 90 % compression
CLAIM = ("in-distribution performance holds at 90 % compression (Karathanasis et al. 2025, "
         "\"A Brief Review for Compression and Transfer Learning Techniques in DeepFake "
         "Detection\")")


def _verdict(entry: dict, comparison) -> str:
    """One line: a 90 % model's AUC change against its parent and what it says of the claim."""
    if comparison is None:
        return f"- {entry['technique']}: no paired predictions, untestable"
    iv = comparison.interval()
    held = "holds" if iv.lo <= 0 <= iv.hi or comparison.diff >= 0 else "does not hold"
    return (f"- {entry['technique']} at {100 * entry['achieved']:.1f} % "
            f"({len(entry['seeds'])} seeds): AUC {100 * entry['auc']:.2f}, "
            f"ΔAUC {comparison.text()} against the uncompressed parent: the claim {held} "
            "(an interval that holds 0, or a gain)")


def compression_section(results: Path) -> str:
    """The section, or "" when the store has no compressed runs yet."""
    from kdbench.report.compression import auc_delta, compression_models, compression_report
    from kdbench.report.intervals import holm

    models = [m for m in compression_models(results) if m["target"] is not None]
    if not models:
        return ""
    report = compression_report(results)
    at90 = [m for m in models if m["target"] == 0.9 and m["format"] == "fp32"]
    tests = [(m, auc_delta(m, 1000)) for m in at90]
    holm([c for _, c in tests if c is not None])
    lines = [_verdict(m, c) for m, c in tests
             if m.get("auc") is not None and not math.isnan(m["auc"])]
    figure = "\n![pareto](pareto.png)\n" if (results / "pareto.png").is_file() else ""
    return (
        "## Compression: pruning, distillation and quantization on one front\n\n"
        "Made by `kdbench reproduce --preset cpu --compression` (the plan in "
        "[docs/compression.md](../docs/compression.md)); `kdbench table --kind compression "
        "--results results`:\n\n" + report.markdown() + figure
        + f"\nThe review's claim, {CLAIM}, tested on each 90 % model of this store (Holm "
        "across these models):\n\n" + "\n".join(lines) + "\n")
