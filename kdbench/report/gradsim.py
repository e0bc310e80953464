"""`kdbench plot gradsim`: the RGB-vs-frequency distillation gradient cosine over training
(paper Fig. 4), from the ``gradsim.jsonl`` traces of the result store."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.plan import in_default_plan
from kdbench.report.listing import read_or_skip

PANELS = {"cos_full": "full S_B(x) gradient", "cos_sub": "rotated subspace (first d)"}


def collect_gradsim(results: Path, dataset: str | None = None,
                    registry: dict | None = None) -> pd.DataFrame:
    """One row per trace record of the finished runs: dataset, student, method (with variant),
    mode, seed, step, cos_full, cos_sub, rotation, d. With ``registry``, only the runs of the
    default plan (:func:`kdbench.plan.default_plan_labels`), not the sweep or ablation
    variants."""
    frames = []
    planned = in_default_plan(registry) if registry is not None else None
    for path in sorted((Path(results) / "runs").glob("*/*/*/*/seed*/gradsim.jsonl")):
        ds, student, method, mode, seed = path.parent.relative_to(Path(results) / "runs").parts
        if dataset is not None and ds != dataset:
            continue
        if planned is not None and not planned(ds, mode, method):
            continue
        metrics = path.parent / "metrics.json"
        if not metrics.is_file() or (read_or_skip(metrics) or {}).get("status") != "finished":
            continue  # an unfinished or crashed run's trace is partial
        rows = read_or_skip(path, lines=True)
        if rows:
            df = pd.DataFrame(rows)
            df = df.assign(dataset=ds, student=student, method=method, mode=mode,
                           seed=int(seed[4:]))
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def curve_label(method: str, rotation: bool, d: int | None) -> str:
    """"rotation d=1024" / "no rotation", plus any other setting of the method's variant."""
    name, _, variant = method.partition("@")
    settings = dict(kv.split("=", 1) for kv in variant.split(",") if "=" in kv)
    rest = [f"{k}={v}" for k, v in settings.items() if k not in ("rotation", "d")]
    asked = settings.get("d")
    effective = f"rotation d={asked} (effective {d})" if asked and str(d) != asked else None
    base = (effective or f"rotation d={d}") if rotation else "no rotation"
    return f"{base} ({name} {','.join(rest)})" if rest else base


def plot_gradsim(results: Path, out: Path, dataset: str | None = None,
                 smooth: int = 5, registry: dict | None = None) -> pd.DataFrame:
    """Draw one line per (dataset, student, method variant), averaged over seeds and smoothed
    over ``smooth`` records; returns the per-curve summary (mean cosine of each panel). With
    ``registry``, only the default plan's runs are drawn (Fig. 4: rotation on and off)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = collect_gradsim(results, dataset, registry)
    if df.empty:
        raise KdbenchError(
            f"no gradsim.jsonl of a finished run under {results}/runs"
            + (" (of the default plan; --all-runs takes sweep variants too)" if registry else "")
            + "; train a method that writes one, e.g. `kdbench run --methods tokd --modes both`"
        )
    keys = ["dataset", "student", "method", "mode", "rotation", "d"]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(6 * len(PANELS), 4), sharey=True)
    summary = []
    for key, group in df.groupby(keys, dropna=False, sort=True):
        ds, student, method, mode, rotation, d = key
        label = f"{curve_label(method, bool(rotation), d)} - {student}, {ds}"
        per_step = group.groupby("step")[list(PANELS)].mean()
        for ax, col in zip(axes, PANELS):
            ax.plot(per_step.index, per_step[col].rolling(smooth, min_periods=1).mean(),
                    label=label)
        summary.append({**dict(zip(keys, key)), "seeds": group["seed"].nunique(),
                        "records": len(group),
                        **{col: float(group[col].mean()) for col in PANELS}})
    for ax, title in zip(axes, PANELS.values()):
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"cos(grad L_KD_RGB, grad L_KD_Fre): {title}")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("per-sample cosine, batch mean")
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
    return pd.DataFrame(summary)
