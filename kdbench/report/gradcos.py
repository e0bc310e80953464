"""The engine's gradient-cosine trace of every both-mode run (``<run>/gradcos.jsonl``, written by
:class:`kdbench.train.branch_terms.BranchCosine`), per epoch: `kdbench plot gradcos`, and the
first panel of a registry trace that declares ``with_gradcos: true`` (`kdbench plot gradsim`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.config import GRADCOS_TRACE as TRACE
from kdbench.errors import KdbenchError
from kdbench.report.listing import read_or_skip

TITLE = ("any method: cos(grad L_rgb, grad L_fre) at the student's last shared stage,\n"
         "per epoch (mean ± std over seeds)")


def collect_gradcos(results: Path, dataset: str | None = None) -> pd.DataFrame:
    """One row per (run, epoch) of the finished runs' gradcos records: dataset, student,
    method (with its variant), seed, epoch, stage, the epoch's mean cos and norm_ratio."""
    frames = []
    root = Path(results) / "runs"
    for path in sorted(root.glob(f"*/*/*/both/seed*/{TRACE}.jsonl")):
        ds, student, method, _, seed = path.parent.relative_to(root).parts
        if dataset is not None and ds != dataset:
            continue
        metrics = read_or_skip(path.parent / "metrics.json") if (
            path.parent / "metrics.json").is_file() else None
        rows = read_or_skip(path, lines=True) if (metrics or {}).get("status") == "finished" \
            else None
        if not rows:
            continue
        df = pd.DataFrame(rows)
        per_epoch = df.groupby("epoch").agg(cos=("cos", "mean"),
                                            norm_ratio=("norm_ratio", "mean"),
                                            stage=("stage", "max")).reset_index()
        frames.append(per_epoch.assign(dataset=ds, student=student, method=method,
                                       seed=int(seed[4:]) if seed[4:].isdigit() else seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def gradcos_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per curve (dataset, student, method): the mean cos over all its epochs and seeds, the
    std over seeds of each seed's mean, the seeds, the (epoch) records and the stage it was
    taken at."""
    rows: list[dict] = []
    if df.empty:
        return pd.DataFrame(rows)
    for (ds, student, method), g in df.groupby(["dataset", "student", "method"], sort=True):
        per_seed = g.groupby("seed")["cos"].mean()
        rows.append({"curve": f"{ds}/{student}/{method}/both", "mean cos": float(per_seed.mean()),
                     "std over seeds": float(per_seed.std(ddof=1)) if len(per_seed) > 1
                     else float("nan"), "seeds": len(per_seed), "records": len(g),
                     "stage": int(g["stage"].max())})
    return pd.DataFrame(rows)


def draw_gradcos(ax: Any, df: pd.DataFrame) -> int:
    """One line per (dataset, student, method) on ``ax``: the per-epoch mean over seeds, a band
    of ± the std over seeds; returns the number of lines."""
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab20")
    groups = list(df.groupby(["dataset", "student", "method"], sort=True))
    several = len({k[:2] for k, _ in groups}) > 1
    for i, ((ds, student, method), g) in enumerate(groups):
        by_epoch = g.groupby("epoch")["cos"]
        mean, std = by_epoch.mean(), by_epoch.std(ddof=1).fillna(0.0)
        seeds = g["seed"].nunique()
        label = f"{method} ({seeds} seed{'s' * (seeds != 1)})" + (
            f" - {student}, {ds}" if several else "")
        ax.plot(mean.index, mean.values, label=label, color=colors(i % 20), lw=1.4)
        ax.fill_between(mean.index, mean - std, mean + std, color=colors(i % 20), alpha=0.15)
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_title(TITLE, fontsize=9)
    ax.set_xlabel("epoch")
    ax.set_ylabel("per-sample cosine, batch mean")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return len(groups)


def plot_gradcos(results: Path, out: Path, dataset: str | None = None) -> pd.DataFrame:
    """`kdbench plot gradcos`: the gradcos panel alone; returns its summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kdbench.report.figures import save_figure

    df = collect_gradcos(results, dataset)
    if df.empty:
        raise KdbenchError(f"no {TRACE}.jsonl of a finished both-mode run under {results}/runs; "
                           "train any method in both mode (kdbench records it every "
                           "train.gradcos_every steps), or measure it without a run: "
                           "`kdbench diagnose --dataset D`")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    draw_gradcos(ax, df)
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)
    return gradcos_summary(df)
