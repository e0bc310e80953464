"""`kdbench plot alpha|rotation|curves`: accuracy against a swept hyper-parameter (Fig. 3,
Table 5 as a figure) and the train / validation curves of each run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.report.tables import Cell, sweep, sweep_command
from kdbench.train.store import read_jsonl


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


def plot_curves(runs: pd.DataFrame, out: Path) -> int:
    """Training loss and validation accuracy per epoch, one line per run with a history."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4))
    drawn = 0
    for r in runs.itertuples():
        path = Path(r.path) / "history.jsonl"
        if not path.is_file():
            continue
        hist = pd.DataFrame(read_jsonl(path))
        if hist.empty or "epoch" not in hist:
            continue
        name = r.method + (f"@{r.variant}" if r.variant else "")
        label = f"{r.dataset}/{r.student}/{name}/{r.mode}/seed{r.seed}"
        ax_loss.plot(hist["epoch"], hist["train_loss"], lw=1, label=label)
        if "val_acc" in hist:
            ax_acc.plot(hist["epoch"], 100 * hist["val_acc"], lw=1, label=label)
        drawn += 1
    if not drawn:
        raise KdbenchError("no history.jsonl in the selected runs; train some with `kdbench run`")
    ax_loss.set(xlabel="epoch", ylabel="train loss (sum of terms)", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="val acc (%)", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    if drawn <= 20:
        ax_acc.legend(fontsize=6)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return drawn
