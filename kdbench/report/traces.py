"""`kdbench plot <trace>`: the per-step records a method writes to ``<run>/<trace>.jsonl``,
drawn against the training step, one panel per record field its registry entry declares
(``reports.traces.<trace>: {title, mode, panels: {field: title}, ylabel}``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.registry import report_specs
from kdbench.report.figures import save_figure
from kdbench.report.gradcos import collect_gradcos, draw_gradcos, gradcos_summary
from kdbench.report.listing import read_or_skip
from kdbench.variants import in_default_plan


def _spec(registry: dict, name: str) -> tuple[dict, list]:
    """The trace's declaration (the first method's) and the methods that declare it."""
    declared = report_specs(registry, "traces").get(name)
    if not declared:
        raise KdbenchError(f"no registry method declares a trace {name!r}")
    return declared[0][1], [entry for entry, _ in declared]


def collect_trace(results: Path, name: str, registry: dict, dataset: str | None = None,
                  all_runs: bool = False) -> pd.DataFrame:
    """One row per record of ``<run>/<name>.jsonl`` in the finished runs: dataset, student,
    method (with its variant), mode, seed, step and the record's fields. Without
    ``all_runs``, only the runs of the default plan (each method and its registry
    variants), not the sweep or ablation variants."""
    planned = None if all_runs else in_default_plan(registry)
    frames = []
    for path in sorted((Path(results) / "runs").glob(f"*/*/*/*/seed*/{name}.jsonl")):
        ds, student, method, mode, seed = path.parent.relative_to(Path(results) / "runs").parts
        if (dataset is not None and ds != dataset) or (
                planned is not None and not planned(ds, mode, method)):
            continue
        metrics = path.parent / "metrics.json"
        if not metrics.is_file() or (read_or_skip(metrics) or {}).get("status") != "finished":
            continue  # an unfinished or crashed run's trace is partial
        rows = read_or_skip(path, lines=True)
        if rows:
            frames.append(pd.DataFrame(rows).assign(
                dataset=ds, student=student, method=method, mode=mode,
                seed=int(seed[4:]) if seed[4:].isdigit() else seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


KEYS = ["dataset", "student", "method", "mode"]


def _curves(results: Path, name: str, registry: dict, dataset: str | None,
            all_runs: bool) -> tuple[pd.DataFrame, dict, list]:
    spec, entries = _spec(registry, name)
    df = collect_trace(results, name, registry, dataset, all_runs)
    if df.empty:
        hint = "; ".join(f"`kdbench run --methods {e.name} --modes "
                         f"{e.reports['traces'][name]['mode']}`" for e in entries)
        raise KdbenchError(
            f"no {name}.jsonl of a finished run under {results}/runs"
            + ("" if all_runs else " (of the default plan; --all-runs takes sweep variants too)")
            + f"; train a method that writes it: {hint}")
    missing = [f for f in spec["panels"] if f not in df]
    if missing:
        raise KdbenchError(f"the {name} records have no field {missing[0]!r}; the registry "
                           f"declares panels {', '.join(spec['panels'])}")
    return df, spec, [f for f in spec["panels"]]


def trace_summary(results: Path, name: str, registry: dict, dataset: str | None = None,
                  all_runs: bool = False) -> pd.DataFrame:
    """Per curve (dataset, student, method variant, mode): ``mean <field>`` over all its
    records for each panel, and its numbers of seeds and records (with ``with_gradcos``, the
    engine's curves first: ``mean cos``)."""
    spec, _ = _spec(registry, name)
    frames = []
    if spec.get("with_gradcos"):
        engine = collect_gradcos(results, dataset)
        if not engine.empty:
            frames.append(gradcos_summary(engine))
    try:
        df, _, fields = _curves(results, name, registry, dataset, all_runs)
        frames.append(_summary(df, fields))
    except KdbenchError:
        if not frames:
            raise
    return pd.concat(frames, ignore_index=True)


def _summary(df: pd.DataFrame, fields: list[str]) -> pd.DataFrame:
    rows = []
    for key, group in df.groupby(KEYS, sort=True):
        rows.append({"curve": "{}/{}/{}/{}".format(*key), **dict(zip(KEYS, key)),
                     **{f"mean {f}": float(group[f].mean()) for f in fields},
                     "seeds": group["seed"].nunique(), "records": len(group)})
    return pd.DataFrame(rows)


def identical_panels(df: pd.DataFrame, fields: list[str]) -> list[str]:
    """The panels whose field equals an earlier panel's in every record (drawn once)."""
    same = []
    for i, f in enumerate(fields):
        if any(_twin(df, f, g) for g in fields[:i] if g not in same):
            same.append(f)
    return same


def plot_trace(results: Path, name: str, out: Path, registry: dict, dataset: str | None = None,
               all_runs: bool = False, smooth: int = 5) -> pd.DataFrame:
    """One line per curve, averaged over its seeds and smoothed over ``smooth`` records, in
    one panel per declared field (a field equal to an earlier one in every record is not
    drawn again: a note says so); a trace declared ``with_gradcos: true`` first gets the
    engine's panel of every both-mode run (:mod:`kdbench.report.gradcos`). Returns the
    curves' :func:`trace_summary`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec, _ = _spec(registry, name)
    engine = collect_gradcos(results, dataset) if spec.get("with_gradcos") else pd.DataFrame()
    try:
        df, spec, fields = _curves(results, name, registry, dataset, all_runs)
    except KdbenchError:
        if engine.empty:
            raise
        df, fields = pd.DataFrame(), []  # no run of the declaring method: the engine's panel
    same = identical_panels(df, fields) if fields else []
    shown = [f for f in fields if f not in same]
    extra = 0 if engine.empty else 1
    fig, axes = plt.subplots(1, len(shown) + extra, figsize=(6.5 * (len(shown) + extra), 4.2),
                             squeeze=False)
    axes = axes[0]
    if extra:
        draw_gradcos(axes[0], engine)
        axes = axes[1:]
    if not shown:
        fig.tight_layout()
        save_figure(fig, out)
        plt.close(fig)
        return gradcos_summary(engine)
    for ax in axes[1:]:
        ax.sharey(axes[0])
    groups = list(df.groupby(KEYS, sort=True))
    colors = plt.get_cmap("tab10")
    for i, (key, group) in enumerate(groups):
        ds, student, method, mode = key
        per_step = group.groupby("step")[shown].mean()
        seeds = group["seed"].nunique()
        label = f"{method}/{mode} ({seeds} seed{'s' * (seeds != 1)})"
        if spec.get("label"):  # e.g. "d={d}": filled in from the curve's first record
            first = {k: v for k, v in group.iloc[0].items() if v == v}
            label += " " + str(spec["label"]).format_map(_Fields(first))
        if len({k[:2] for k, _ in groups}) > 1:
            label += f" - {student}, {ds}"
        for ax, f in zip(axes, shown):
            ax.plot(per_step.index, per_step[f].rolling(smooth, min_periods=1).mean(),
                    label=label, color=colors(i % 10), lw=1.4)
    for ax, f in zip(axes, shown):
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        title = spec["panels"][f]
        twins = [spec["panels"][g] for g in same if _twin(df, f, g)]
        note = f"\n(= {', '.join(twins)} in every record: drawn once)" if twins else ""
        ax.set_title(f"{spec.get('title', name)}: {title}{note}", fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(spec.get("ylabel", name))
    axes[-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)
    return _summary(df, fields)


class _Fields(dict):
    """Record fields for a label template; a missing one shows as ?."""

    def __missing__(self, key: str) -> str:
        return "?"


def _twin(df: pd.DataFrame, f: str, g: str) -> bool:
    return bool(np.allclose(df[f].to_numpy(float), df[g].to_numpy(float), atol=1e-6,
                            equal_nan=True))
