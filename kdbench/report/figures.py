"""`kdbench plot alpha|rotation|curves`: accuracy against a swept hyper-parameter (Fig. 3,
Table 5 as a figure) and the train / validation curves of each run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.plan import in_default_plan
from kdbench.report.listing import read_or_skip
from kdbench.report.tables import Cell, sweep, sweep_command


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=120)
    tmp.replace(out)


def plot_sweep(runs: pd.DataFrame, registry: dict, kind: str, out: Path,
               metric: str = "acc") -> int:
    """Mean ± std of ``metric`` against the swept value, one line per method and column
    (dataset / student) of the ``kind`` table; returns the number of points drawn."""
    report = sweep(runs, registry, kind, metric)
    group_cols = [i for i, c in enumerate(report.columns) if " / " in c]
    n_keys = group_cols[0] if group_cols else len(report.columns)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    points = 0
    for col in group_cols:
        lines: dict[str, list[tuple[str, Cell]]] = {}
        for row in report.rows:
            c = row[col]
            if isinstance(c, Cell) and c.n > 0:
                lines.setdefault(row[0], []).append((",".join(row[1:n_keys]), c))
        for method, pts in lines.items():
            xs = list(range(len(pts)))
            means = [100 * c.mean for _, c in pts]
            stds = [0.0 if c.std != c.std else 100 * c.std for _, c in pts]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3,
                        label=f"{method} - {report.columns[col]}")
            ax.set_xticks(xs, [x for x, _ in pts])
            points += len(pts)
    if not points:
        plt.close(fig)
        hint = "; ".join(f"`{sweep_command(e, kind)}`" for e in registry.values()
                         if kind in e.reports)
        raise KdbenchError(f"no finished runs for the {kind} sweep; train them with {hint}")
    ax.set_xlabel(", ".join(report.columns[1:n_keys]))
    ax.set_ylabel(f"test {metric} (%)")
    ax.set_title(report.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return points


def seed_mean_curves(runs: pd.DataFrame, registry: dict | None = None
                     ) -> dict[str, tuple[pd.DataFrame, int]]:
    """Per "dataset/student/method variant/mode": the per-epoch history averaged over its
    finished runs (seeds), and their number. With ``registry``, only the teachers and the
    default plan's runs (no sweep or ablation variants)."""
    curves: dict[str, list[pd.DataFrame]] = {}
    planned = in_default_plan(registry) if registry is not None else None
    for r in runs[runs["status"] == "finished"].itertuples():
        path = Path(r.path) / "history.jsonl"
        name = r.method + (f"@{r.variant}" if r.variant else "")
        if planned is not None and r.method != "teacher" and not planned(r.dataset, r.mode, name):
            continue
        hist = pd.DataFrame((read_or_skip(path, lines=True) or []) if path.is_file() else [])
        if not hist.empty and "epoch" in hist:
            curves.setdefault(f"{r.dataset}/{r.student}/{name}/{r.mode}", []).append(hist)
    return {label: (pd.concat(hists).groupby("epoch").mean(numeric_only=True), len(hists))
            for label, hists in sorted(curves.items())}


def plot_curves(runs: pd.DataFrame, out: Path, registry: dict | None = None) -> tuple[int, int]:
    """Training loss (log scale) and validation accuracy per epoch, one line per group of
    :func:`seed_mean_curves`, averaged over its seeds. Returns (lines, runs)."""
    curves = seed_mean_curves(runs, registry)
    if not curves:
        raise KdbenchError("no history.jsonl of a finished run in the selected runs; train "
                           "some with `kdbench run`")
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(13, 4.5))
    colors = plt.get_cmap("tab20")
    for i, (label, (mean, n)) in enumerate(curves.items()):
        style = {"lw": 1.2, "color": colors(i % 20), "ls": "-" if i < 20 else "--",
                 "label": f"{label} ({n} seed{'s' * (n != 1)})"}
        ax_loss.plot(mean.index, mean["train_loss"], **style)
        if "val_acc" in mean:
            ax_acc.plot(mean.index, 100 * mean["val_acc"], **style)
    positive = all((mean["train_loss"] > 0).all() for mean, _ in curves.values())
    ax_loss.set(xlabel="epoch", ylabel="train loss (sum of terms)", title="training loss",
                yscale="log" if positive else "symlog")  # e.g. a Gaussian NLL term can go below 0
    ax_acc.set(xlabel="epoch", ylabel="val acc (%)", title="validation accuracy (seed mean)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    if len(curves) <= 40:
        ax_acc.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return len(curves), sum(n for _, n in curves.values())
