"""`kdbench plot <sweep>|curves`: a metric against a declared swept hyper-parameter (e.g.
Fig. 3, Table 5 as a figure) and the train / validation curves of each run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
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


# ------------------------------------------------ shared helpers: log ticks, labels in the axes


def log_ticks(axis) -> None:
    """Readable ticks on a log-scaled ``axis`` (e.g. ``ax.xaxis``), for its current limits:
    major ticks at 1, 2, 5 x 10^k (1 x 10^k over more than 4 decades, 1..9 x 10^k within
    less than 0.7 of one), labelled plainly ("0.5", "1", "20"); minor ticks without labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = sorted(axis.get_view_interval())
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    subs = ((1.0,) if decades > 4 else (1.0, 2.0, 5.0) if decades > 0.7
            else tuple(float(s) for s in range(1, 10)))
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(float(s) for s in range(2, 10)),
                                      numticks=12))
    axis.set_minor_formatter(NullFormatter())


def label_points(ax, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str],
                 fontsize: float = 7, flip: float = 0.7, pad: float = 4.0,
                 margin: float = 0.05) -> list:
    """Annotate each point with its text, every label inside the axes: the limits are set to
    the points plus ``margin`` of their span on each side (in the axis' scale: log-space
    margins on a log axis); a label goes to the right of its point, or to its left when the
    point lies in the right ``1 - flip`` of the axes, and above it (below it in the top tenth,
    or where above would cover an earlier label more); then :func:`fit_labels`. Set the axes'
    scales first; returns the annotations."""
    for which, values in (("x", xs), ("y", ys)):
        _set_limits(ax, which, [float(v) for v in values], margin)
    to_axes = ax.transData + ax.transAxes.inverted()
    anns = []
    for x, y, text in zip(xs, ys, texts):
        fx, fy = to_axes.transform((x, y))
        left, below = fx > flip, fy > 0.9
        anns.append(ax.annotate(text, (x, y), xytext=(-pad if left else pad,
                                                      -pad if below else pad / 2),
                                textcoords="offset points", fontsize=fontsize,
                                ha="right" if left else "left",
                                va="top" if below else "bottom",
                                annotation_clip=True, clip_on=False))
    _declutter(ax, anns, pad)
    fit_labels(ax, anns)
    return anns


def _declutter(ax, anns: list, pad: float) -> None:
    """Move a label to the other side of its point vertically where it covers the labels
    before it less there."""
    if len(anns) < 2:
        return
    renderer = ax.figure.canvas.get_renderer()

    def covered(box, boxes) -> float:
        return sum(max(0.0, min(box.x1, b.x1) - max(box.x0, b.x0))
                   * max(0.0, min(box.y1, b.y1) - max(box.y0, b.y0)) for b in boxes)

    placed = [anns[0].get_window_extent(renderer)]
    for a in anns[1:]:
        box = a.get_window_extent(renderer)
        here = covered(box, placed)
        if here > 0:
            dx, dy = a.xyann
            a.xyann, va = (dx, -pad if dy > 0 else pad / 2), a.get_va()
            a.set_va("top" if va == "bottom" else "bottom")
            other = a.get_window_extent(renderer)
            if covered(other, placed) < here:
                box = other
            else:
                a.xyann = (dx, dy)
                a.set_va(va)
        placed.append(box)


def fit_labels(ax, anns: list, tries: int = 6, pad_px: float = 3.0) -> None:
    """Widen the axes' limits (in their scales) until every annotation of ``anns`` is drawn
    inside the axes (at most ``tries`` draws; call it again after a layout change)."""
    if not anns:
        return
    for _ in range(tries):
        ax.figure.canvas.draw()
        box = ax.get_window_extent()
        ext = [a.get_window_extent() for a in anns]
        over = {"left": max(box.x0 - e.x0 for e in ext), "right": max(e.x1 - box.x1 for e in ext),
                "bottom": max(box.y0 - e.y0 for e in ext), "top": max(e.y1 - box.y1 for e in ext)}
        if max(over.values()) <= 0:
            return
        px = {k: v + pad_px if v > 0 else 0.0 for k, v in over.items()}
        _widen(ax, "x", px["left"], px["right"], box.width)
        _widen(ax, "y", px["bottom"], px["top"], box.height)


def _set_limits(ax, which: str, values: list[float], margin: float) -> None:
    """``which`` axis' limits: the values' range plus ``margin`` of it each side, in its scale."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    values = [v for v in values if math.isfinite(v) and (axis.get_scale() != "log" or v > 0)]
    if not values:
        return
    tf = axis.get_transform()
    t = tf.transform(np.array([min(values), max(values)], float))
    span = (t[1] - t[0]) or 1.0
    lo, hi = tf.inverted().transform(np.array([t[0] - margin * span, t[1] + margin * span]))
    (ax.set_xlim if which == "x" else ax.set_ylim)(float(lo), float(hi))


def _widen(ax, which: str, lo_px: float, hi_px: float, size_px: float) -> None:
    """Move ``which`` axis' limits out so its content shrinks by ``lo_px`` / ``hi_px`` pixels
    at the low / high end (together at most 80 % of the axes)."""
    if lo_px + hi_px <= 0 or size_px <= 0:
        return
    lo, hi = lo_px / size_px, hi_px / size_px
    if lo + hi > 0.8:
        lo, hi = 0.8 * lo / (lo + hi), 0.8 * hi / (lo + hi)
    axis = ax.xaxis if which == "x" else ax.yaxis
    get, put = (ax.get_xlim, ax.set_xlim) if which == "x" else (ax.get_ylim, ax.set_ylim)
    tf = axis.get_transform()
    t0, t1 = tf.transform(np.array(get(), float))
    span = (t1 - t0) / (1 - lo - hi)
    new = tf.inverted().transform(np.array([t0 - lo * span, t1 + hi * span]))
    put(float(new[0]), float(new[1]))


def save_labelled(fig, ax, labels: list, out: Path) -> None:
    """A labelled log-x figure's end: 1-2-5 ticks, the layout, every label inside the shrunk
    axes again (:func:`fit_labels`), written to ``out`` and closed."""
    log_ticks(ax.xaxis)
    fig.tight_layout()
    fit_labels(ax, labels)
    save_figure(fig, out)
    _pyplot().close(fig)
