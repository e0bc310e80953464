"""`kdbench plot <sweep>|curves`: a metric against a declared swept hyper-parameter (e.g.
Fig. 3, Table 5 as a figure) and the train / validation curves of each run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.registry import report_specs
from kdbench.report.listing import read_or_skip
from kdbench.report.tables import Cell, sweep, sweep_command
from kdbench.variants import in_default_plan


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path) -> None:
    """Write ``fig`` to ``out`` atomically (a temp file in its folder, then renamed)."""
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
    xs: list[str] = []  # every swept value (combination) in table order: one x position each
    for row in report.rows:
        x = ",".join(row[1:n_keys])
        if x not in xs:
            xs.append(x)
    points, longest = 0, 0
    for col in group_cols:
        lines: dict[str, list[tuple[str, Cell]]] = {}
        for row in report.rows:
            c = row[col]
            if isinstance(c, Cell) and c.n > 0:
                lines.setdefault(row[0], []).append((",".join(row[1:n_keys]), c))
        for method, pts in lines.items():
            means = [100 * c.mean for _, c in pts]
            stds = [0.0 if c.std != c.std else 100 * c.std for _, c in pts]
            ax.errorbar([xs.index(x) for x, _ in pts], means, yerr=stds, marker="o", capsize=3,
                        label=f"{method} - {report.columns[col]}")
            points, longest = points + len(pts), max(longest, len(pts))
    ax.set_xticks(range(len(xs)), xs)
    hint = "; ".join(f"`{sweep_command(e, spec)}`"
                     for e, spec in report_specs(registry, "sweeps").get(kind, []))
    if not points:
        plt.close(fig)
        raise KdbenchError(f"no finished runs for the {kind} sweep; train them with {hint}")
    if longest == 1:  # every line is a single point: say what draws a curve
        ax.text(0.5, 0.04, f"one point per line: {hint} draws the curve", fontsize=7,
                ha="center", transform=ax.transAxes, wrap=True, color="dimgray")
    ax.set_xlabel(", ".join(report.columns[1:n_keys]))
    ax.set_ylabel(f"test {metric} (%)")
    ax.set_title(report.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out)
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


MODE_STYLES = {"none": ":", "rgb": "-", "both": "--"}
MARKERS = (None, "o", "s", "^", "v", "D", "x")  # one per (dataset, student), the first plain


def plot_curves(runs: pd.DataFrame, out: Path, registry: dict | None = None) -> tuple[int, int]:
    """Training loss (log scale, top) and validation accuracy (bottom) per epoch, averaged over
    seeds (:func:`seed_mean_curves`): one column per mode (rgb, both) with the teacher-free
    runs and the teacher in each as references, one colour per method and a line style per
    mode, integer epochs. Returns (lines, runs)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    curves = seed_mean_curves(runs, registry)
    if not curves:
        raise KdbenchError("no history.jsonl of a finished run in the selected runs; train "
                           "some with `kdbench run`")
    parsed = {label: (label.rsplit("/", 2)[0], *label.rsplit("/", 2)[1:])  # ds/student, name,
              for label in curves}                                         # mode
    groups = sorted({g for g, n, _ in parsed.values() if n != "teacher"})
    names = sorted({n for _, n, _ in parsed.values()}, key=lambda n: (n != "teacher", n))
    modes = [m for m in ("rgb", "both") if any(m == md and n != "teacher"
                                               for _, n, md in parsed.values())] or ["none"]
    plt = _pyplot()
    references = [n for n in names if n == "teacher" or all(
        md == "none" for _, m, md in parsed.values() if m == n)]
    colors = plt.get_cmap("tab10" if len(names) - len(references) <= 10 else "tab20")
    color = {n: colors(i % colors.N) for i, n in enumerate(x for x in names
                                                             if x not in references)}
    color.update({n: ("black" if n == "teacher" else "dimgray") for n in references})
    fig, axes = plt.subplots(2, len(modes), figsize=(6.2 * len(modes) + 3, 7.5), sharex=True,
                             squeeze=False)
    positive = all((mean["train_loss"] > 0).all() for mean, _ in curves.values())
    for col, mode in enumerate(modes):
        ax_loss, ax_acc = axes[0][col], axes[1][col]
        for label, (mean, _) in curves.items():
            group, name, md = parsed[label]
            reference = md == "none" or name == "teacher"
            if md != mode and not reference:
                continue
            style = {"color": color[name],
                     "ls": "-." if name == "teacher" else MODE_STYLES.get(md, "-"),
                     "lw": 1.3 if reference else 1.6,
                     "marker": MARKERS[groups.index(group) % len(MARKERS)]
                     if group in groups and name != "teacher" else None, "ms": 4}
            ax_loss.plot(mean.index, mean["train_loss"], **style)
            if "val_acc" in mean:
                ax_acc.plot(mean.index, 100 * mean["val_acc"], **style)
        ax_loss.set(title=f"{mode} mode: training loss (seed mean)", ylabel="train loss (sum "
                    "of terms)", yscale="log" if positive else "symlog")
        ax_acc.set(title=f"{mode} mode: validation accuracy (seed mean)", xlabel="epoch",
                   ylabel="val acc (%)")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    seeds = {n: max(c[1] for lab, c in curves.items() if parsed[lab][1] == n) for n in names}
    handles = [Line2D([], [], color=color[n], lw=2,
                      ls="-." if n == "teacher" else ":" if n in references else "-",
                      label=f"{n} ({seeds[n]} seed{'s' * (seeds[n] != 1)})") for n in names]
    handles += [Line2D([], [], color="black", ls=MODE_STYLES[m], label=f"mode {m}")
                for m in MODE_STYLES if any(md == m for _, _, md in parsed.values())]
    if len(groups) > 1:
        handles += [Line2D([], [], color="black", marker=MARKERS[i % len(MARKERS)], label=g)
                    for i, g in enumerate(groups)]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.6 / (6.2 * len(modes) + 3), 1))
    save_figure(fig, out)
    plt.close(fig)
    return len(curves), sum(n for _, n in curves.values())
