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
    if iv.hi < 0:
        held = "does not hold here (the whole interval is a loss)"
    else:
        held = "holds here (no loss the interval can tell from 0, or a gain)"
    n = len(entry["seeds"])
    return (f"- {entry['technique']} at {100 * entry['achieved']:.1f} % ({n} "
            f"seed{'s' * (n != 1)}): AUC {100 * entry['auc']:.2f}, ΔAUC {comparison.text()} "
            f"against the uncompressed parent: the claim {held}")


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
