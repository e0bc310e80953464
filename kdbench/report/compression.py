"""The compression table: each compressed model (pruned, fine-tuned, quantized) against its
uncompressed parent, accuracy against cost, from the store's ``compressed/`` child runs, the
parents' ``runs/`` and the ``deploy/deploy.json`` files of both.

A MODEL is the seeds of one (dataset, student, parent method[@variant], parent mode, technique,
scope, target, steps, fine-tune epochs, fine-tune method and mode, format), grouped; its numbers are
means over the seeds that have them. Technique names (the table's ``technique`` column):

- ``teacher``: the dataset's teacher, a reference row (no Δ);
- ``none``: an uncompressed teacher-free parent (mode none); ``distilled (<method>)``: an
  uncompressed distilled parent;
- ``<technique>[ (<scope>)][ + <distiller>]``: a compressed child, e.g. ``structured``,
  ``unstructured (layer)``, ``structured + <distiller>`` (fine-tuned with that registry
  distiller against the teacher; fine-tuning with a teacher-free method, cross-entropy, adds
  nothing);
- ``<fp32 model's technique> + int8 static`` / ``+ int8 dynamic``: the ONNX int8 file of that
  model (static: calibrated, ``onnx_int8``; dynamic: ``onnx_int8_dynamic``), e.g.
  ``structured + int8 static``; an uncompressed teacher-free parent's reads ``int8 static``;
- where two models of one parent would read the same, `` (<steps> steps, ft <e> ep[ with
  <method> <mode>])`` follows the compression part.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.report.intervals import Comparison, holm, procedure_note, two_level_bootstrap
from kdbench.report.listing import read_or_skip, teacher_label
from kdbench.report.tables import Report
from kdbench.train.predictions import PREDICTIONS, load_predictions

INT8 = {"onnx_int8": "int8 static", "onnx_int8_dynamic": "int8 dynamic"}
COLUMNS = ["model", "technique", "target", "seeds", "params (M)", "GFLOPs", "MB fp32", "MB int8",
           "MB gzip", "ms b1", "ms b32", "acc", "AUC", "AP", "ΔAUC vs parent"]
MAKE = ("make compressed runs with `kdbench compress RUN --prune structured --target 0.9` "
        "(and measure them with `kdbench export RUN --format onnx`)")
NUMBERS = ("params", "gflops", "mb_fp32", "mb_int8", "mb_gzip", "mb_file", "ms_b1", "ms_b32",
           "acc", "auc", "ap", "achieved")


def _json(path: Path) -> dict | None:
    rec = read_or_skip(path) if path.is_file() else None
    return rec if isinstance(rec, dict) else None


def _finished(m: dict | None) -> bool:
    return m is not None and m.get("status", "finished") == "finished"


def _seed(name: str) -> int | None:
    return int(name[4:]) if name.startswith("seed") and name[4:].isdigit() else None


def _deploy(folder: Path) -> dict:
    """The formats of ``folder``'s deploy.json ({} when it has none)."""
    rec = _json(folder / "deploy" / "deploy.json")
    return rec if rec and isinstance(rec.get("formats"), dict) else {}


def _seed_numbers(folder: Path, m: dict, dep: dict, parent_preds: Path | None
                  ) -> dict[str, Any]:
    """One seed of an fp32 model: its numbers and prediction files."""
    formats = dep.get("formats", {})
    onnx = formats.get("onnx_fp32") or {}
    int8 = formats.get("onnx_int8") or formats.get("onnx_int8_dynamic") or {}
    test = m.get("test") or {}
    params = m.get("nonzero_params") or onnx.get("params") or m.get("params")
    return {"params": params, "gflops": m.get("gflops"), "mb_fp32": onnx.get("file_mb"),
            "mb_int8": int8.get("file_mb"), "mb_gzip": m.get("gzip_mb"),
            "mb_file": onnx.get("file_mb"), "ms_b1": onnx.get("latency_ms_b1"),
            "ms_b32": onnx.get("latency_ms_b32"), "acc": test.get("acc"),
            "auc": test.get("auc"), "ap": test.get("ap"),
            "achieved": (m.get("compression") or {}).get("achieved"),
            "pred": folder / PREDICTIONS, "parent_pred": parent_preds,
            "where": (dep.get("cpu"), dep.get("threads"), dep.get("size")) if onnx else None,
            "int8": {key: (folder, formats[key]) for key in INT8 if formats.get(key)}}


def _int8_numbers(fp32: dict[str, Any], folder: Path, entry: dict, key: str) -> dict[str, Any]:
    """One seed of the ``key`` int8 file of an fp32 model (whose seed numbers are ``fp32``)."""
    test = entry.get("test") or {}
    return {**{k: fp32[k] for k in ("params", "gflops", "mb_fp32", "achieved", "where")},
            "mb_int8": entry.get("file_mb"), "mb_file": entry.get("file_mb"), "mb_gzip": None,
            "ms_b1": entry.get("latency_ms_b1"), "ms_b32": entry.get("latency_ms_b32"),
            "acc": test.get("acc"), "auc": test.get("auc"), "ap": test.get("ap"),
            "pred": folder / "deploy" / f"predictions_{key}.npz",
            # against the fp32 ONNX file's predictions (the same runtime) where export kept them
            "parent_pred": next((p for p in (folder / "deploy" / "predictions_onnx_fp32.npz",)
                                 if p.is_file()), fp32["pred"])}


def _mean(values: Iterable[Any]) -> float:
    xs = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return sum(xs) / len(xs) if xs else math.nan


def _entry(meta: dict[str, Any], seeds: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A model's entry: ``meta`` plus the means over ``seeds`` and their prediction files."""
    return {**meta, "seeds": sorted(seeds),
            **{k: _mean(s[k] for s in seeds.values()) for k in NUMBERS},
            "preds": {k: s["pred"] for k, s in seeds.items()},
            "parent_preds": {k: s["parent_pred"] for k, s in seeds.items()
                             if s["parent_pred"] is not None},
            "where": sorted({s["where"] for s in seeds.values() if s["where"]}, key=str)}


def _name(method: str, variant: str) -> str:
    return method + (f"@{variant}" if variant else "")


def _parents(results: Path) -> dict[tuple, dict[int, tuple[Path, dict]]]:
    """The finished student runs, by (dataset, student, method[@variant], mode): {seed: run}."""
    out: dict[tuple, dict[int, tuple[Path, dict]]] = {}
    for path in sorted((results / "runs").glob("*/*/*/*/seed*/metrics.json")):
        m, seed = _json(path), _seed(path.parent.name)
        key = path.relative_to(results / "runs").parts[:4]
        if "@" in key[1]:  # a student at a smaller input: the resolution table's and figure's
            continue
        if _finished(m) and seed is not None and m.get("role", "student") == "student":
            out.setdefault(key, {})[seed] = (path.parent, m)
    return out


def _children(results: Path) -> dict[tuple, dict[int, tuple[Path, dict]]]:
    """The finished compressed runs, by (parent key, technique, scope, target, steps,
    fine-tune epochs, fine-tune method, fine-tune mode): {seed: run}."""
    out: dict[tuple, dict[int, tuple[Path, dict]]] = {}
    for path in sorted((results / "compressed").glob("*/*/*/*/seed*/*/metrics.json")):
        m, seed = _json(path), _seed(path.parent.parent.name)
        if not _finished(m) or seed is None or not isinstance(m.get("compression"), dict):
            continue
        c = m["compression"]
        parent = path.relative_to(results / "compressed").parts[:4]
        key = (parent, c.get("technique", "?"), c.get("scope"), c.get("target"),
               c.get("steps"), c.get("finetune_epochs"), c.get("finetune_with"),
               c.get("finetune_mode"))
        out.setdefault(key, {})[seed] = (path.parent, m)
    return out


def _parent_predictions(results: Path, parent: tuple, seed: int, m: dict) -> Path:
    recorded = (m.get("parent") or {}).get("path")
    folder = results / recorded if recorded else results.joinpath("runs", *parent,
                                                                   f"seed{seed}")
    return folder / PREDICTIONS


def _distiller(c: dict[str, Any]) -> str | None:
    """The distiller a child was fine-tuned with (None: not fine-tuned, or with cross-entropy
    alone), by its recorded fine-tuning mode (``Compression.record``: None without one)."""
    name = c.get("finetune_with")
    if not name or c.get("finetune_epochs") == 0:
        return None
    return name if c.get("finetune_mode") not in (None, "none") else None


def _technique(technique: str, scope: str | None, distiller: str | None) -> str:
    return technique + (f" ({scope})" if scope else "") + (f" + {distiller}" if distiller else "")


def _family(technique: str, distiller: str | None) -> str:
    """The figure's marker group of a compressed fp32 model."""
    return "structured + distiller" if technique == "structured" and distiller else technique


def _with_int8(fp32: dict[str, Any], seeds: dict[int, dict[str, Any]]) -> list[dict]:
    """The fp32 model's entry, then one per int8 format its seeds' deploy.json hold."""
    out = [fp32]
    for key, fmt in INT8.items():
        per_seed = {s: _int8_numbers(n, *n["int8"][key], key)
                    for s, n in seeds.items() if key in n["int8"]}
        if per_seed:
            base = fp32["technique"]
            out.append(_entry({**fp32, "format": fmt, "family": "int8",
                               "technique": fmt if base == "none" else f"{base} + {fmt}"},
                              per_seed))
    return out


def _teachers(results: Path, datasets: set[str], several: bool) -> list[dict[str, Any]]:
    """The teachers of ``datasets``, with their PyTorch cost from any deploy.json."""
    from kdbench.report.deploy import deploy_records

    measured: dict[tuple[str, str], dict] = {}
    for rec in deploy_records(results):
        entry = rec["formats"].get("teacher_pytorch_fp32") or {}
        if entry.get("teacher"):
            key = (rec.get("dataset"), Path(entry["teacher"]).name)
            measured.setdefault(key, {**entry, "where": (rec.get("cpu"), rec.get("threads"),
                                                         rec.get("size"))})
    out = []
    for path in sorted((results / "teachers").glob("*/*/metrics.json")):
        m, dataset, name = _json(path), path.parent.parent.name, path.parent.name
        if dataset not in datasets or not _finished(m):
            continue
        dep, test = measured.get((dataset, name), {}), m.get("test") or {}
        seed = {"params": m.get("params") or dep.get("params"), "gflops": m.get("gflops"),
                "mb_fp32": dep.get("file_mb"), "mb_int8": None, "mb_gzip": None,
                "mb_file": dep.get("file_mb"), "ms_b1": dep.get("latency_ms_b1"),
                "ms_b32": dep.get("latency_ms_b32"), "acc": test.get("acc"),
                "auc": test.get("auc"), "ap": test.get("ap"), "achieved": None,
                "pred": path.parent / PREDICTIONS, "parent_pred": None,
                "where": dep.get("where")}
        label = teacher_label(m.get("kind"), m.get("backbone") or name.rsplit("-", 1)[0])
        label = f"{dataset}/teacher ({label})" if several else f"teacher ({label})"
        out.append(_entry({"label": label, "dataset": dataset, "student": "",
                           "parent": "", "method": "teacher", "technique": "teacher",
                           "family": "teacher", "format": "fp32", "target": None,
                           "scope": None, "steps": None, "finetune_epochs": None,
                           "finetune_with": None, "finetune_mode": None},
                          {m.get("seed") or 0: seed}))
    return out


def compression_models(results: Path) -> list[dict[str, Any]]:
    """One entry per model of the store ``results`` (see the module docstring), in table order:
    per dataset its teacher, then per parent (teacher-free first) the parent, its compressed
    children and, after each fp32 model, its int8 files.

    An entry: ``label`` (the parent, ``student/method[@variant]/mode``, led by the dataset
    when the store has several), ``technique``, ``family`` (the figure's marker group),
    ``format`` (fp32, int8 static, int8 dynamic), ``target`` / ``achieved`` (fractions; None
    / NaN for uncompressed models), ``scope``, ``steps``, ``finetune_epochs``,
    ``finetune_with``, ``finetune_mode``, ``seeds``; the means over seeds (NaN where none has
    it) of ``params`` (non-zero ones where recorded), ``gflops``, ``mb_fp32`` (ONNX fp32
    file), ``mb_int8``
    (the model's ONNX int8 file: static, else dynamic; an int8 entry's own), ``mb_gzip``,
    ``mb_file`` (the entry's own file), ``ms_b1``, ``ms_b32`` (ONNX latency of the entry's own
    file), ``acc``, ``auc``, ``ap``; ``preds`` and ``parent_preds`` ({seed: predictions
    file}: an fp32 child's parent is the uncompressed run, an int8 entry's its fp32 model;
    an uncompressed fp32 model has none); ``where`` (the (cpu, threads, size) measured on).
    """
    results = Path(results)
    parents, children = _parents(results), _children(results)
    wanted = {key for key, runs in parents.items()
              if any(_deploy(folder) for folder, _ in runs.values())}
    wanted |= {key[0] for key in children if key[0] in parents}
    datasets = {k[0] for k in wanted} | {k[0][0] for k in children}
    several = len(datasets) > 1
    entries: list[tuple[tuple, dict[str, Any]]] = []
    for key in wanted | {k[0] for k in children}:
        dataset, student, name, mode = key
        method, _, variant = name.partition("@")
        label = "/".join([dataset] * several + [student, name, mode])
        meta = {"label": label, "dataset": dataset, "student": student, "parent": label,
                "method": method, "variant": variant, "mode": mode, "format": "fp32",
                "target": None, "scope": None, "steps": None, "finetune_epochs": None,
                "finetune_with": None, "finetune_mode": None}
        order = (dataset, 1, mode != "none", label)
        if key in wanted:
            seeds = {s: _seed_numbers(f, m, _deploy(f), None)
                     for s, (f, m) in parents[key].items()}
            technique = "none" if mode == "none" else f"distilled ({method})"
            fp32 = _entry({**meta, "technique": technique, "family": "uncompressed"}, seeds)
            entries += [((*order, ("",)), e) for e in _with_int8(fp32, seeds)]
        for ckey, runs in children.items():
            if ckey[0] != key:
                continue
            _, technique, scope, target, steps, epochs, finetune_with, ft_mode = ckey
            distiller = _distiller(next(iter(runs.values()))[1]["compression"])
            seeds = {s: _seed_numbers(f, m, _deploy(f), _parent_predictions(results, key, s, m))
                     for s, (f, m) in runs.items()}
            fp32 = _entry({**meta, "technique": _technique(technique, scope, distiller),
                           "family": _family(technique, distiller), "target": target,
                           "scope": scope, "steps": steps, "finetune_epochs": epochs,
                           "finetune_with": finetune_with, "finetune_mode": ft_mode}, seeds)
            rank = ("~", technique, str(scope), float(target or 0), str(distiller),
                    int(steps or 0), int(epochs or 0), str(finetune_with), str(ft_mode))
            entries += [((*order, rank), e) for e in _with_int8(fp32, seeds)]
    entries.sort(key=lambda pair: pair[0])  # stable: an fp32 model before its int8 files
    # stable: per dataset its teachers, then the models in their order
    ordered = sorted(_teachers(results, datasets, several) + [e for _, e in entries],
                     key=lambda e: (e["dataset"], e["technique"] != "teacher"))
    _disambiguate(ordered)
    return ordered


def _disambiguate(entries: list[dict[str, Any]]) -> None:
    """Name the steps and fine-tuning of models that would otherwise read the same."""
    seen: dict[tuple, int] = {}
    for e in entries:
        k = (e["label"], e["technique"], e["target"], e["format"])
        seen[k] = seen.get(k, 0) + 1
    for e in entries:
        if seen[(e["label"], e["technique"], e["target"], e["format"])] > 1:
            fmt = next((f" + {f}" for f in INT8.values()
                        if e["technique"].endswith(f" + {f}")), "")
            base = e["technique"][:len(e["technique"]) - len(fmt)]
            how = " ".join(f"{e[k]}" for k in ("finetune_with", "finetune_mode") if e[k])
            how = f" with {how}" if how else ""
            e["technique"] = (f"{base} ({e['steps']} steps, ft {e['finetune_epochs']} ep{how})"
                              f"{fmt}")


def auc_delta(e: dict[str, Any], n_boot: int) -> Comparison | None:
    """AUC(entry) - AUC(parent), paired by seed, over the seeds with both predictions."""
    seeds = [s for s in e["seeds"] if s in e["parent_preds"]
             and e["preds"][s].is_file() and e["parent_preds"][s].is_file()]
    if not seeds:
        return None
    a = {s: load_predictions(e["preds"][s]) for s in seeds}
    b = {s: load_predictions(e["parent_preds"][s]) for s in seeds}
    return two_level_bootstrap(a, b, "auc", n_boot=n_boot,
                               label=f"{e['label']} {e['technique']}")


def _num(value: float | None, fmt: str = "{:.2f}", scale: float = 1.0) -> str:
    return "-" if value is None or not math.isfinite(value) else fmt.format(scale * value)


def _target(e: dict[str, Any]) -> str:
    if e["target"] is None:
        return "-"
    achieved = f" ({100 * e['achieved']:.2f})" if math.isfinite(e["achieved"]) else ""
    return f"{100 * e['target']:g}{achieved}"


def compression_report(results: Path, n_boot: int = 1000) -> Report:
    """The table "Compression: accuracy against cost" of :func:`compression_models`, ΔAUC of
    each model against its uncompressed parent (an int8 file's: against its fp32 model) by the
    two-level bootstrap, Holm-corrected across the table."""
    entries = compression_models(Path(results))
    rows, tests, notes = [], [], []
    for e in entries:
        delta = "-"
        if e["parent_preds"]:
            try:
                c = auc_delta(e, n_boot)
            except KdbenchError as exc:
                c = None
                notes.append(f"ΔAUC of {e['label']} {e['technique']} left out: {exc}")
            if c is None:
                delta = "n/a"
            else:
                tests.append(c)
                delta = c
        rows.append([e["label"], e["technique"], _target(e), str(len(e["seeds"])),
                     _num(e["params"], scale=1e-6), _num(e["gflops"], "{:.3g}"),
                     *(_num(e[k]) for k in ("mb_fp32", "mb_int8", "mb_gzip")),
                     *(_num(e[k], "{:.3f}") for k in ("ms_b1", "ms_b32")),
                     *(_num(e[k], scale=100) for k in ("acc", "auc", "ap")), delta])
    holm(tests)
    for row in rows:
        if isinstance(row[-1], Comparison):
            row[-1] = f"{row[-1].text()} {row[-1].mark}".rstrip()
    if not entries:
        notes.append(f"no compressed or deployed model in this store yet: {MAKE}")
    return Report("Compression: accuracy against cost", COLUMNS, rows,
                  notes + _notes(entries, tests))


def _notes(entries: list[dict[str, Any]], tests: list[Comparison]) -> list[str]:
    notes = ["acc (threshold 0.5), AUC, AP in % on the test split, means over each model's "
             "seeds (seeds: an int8 row's are the seeds with that file, an uncompressed row's "
             "all its finished seeds); params (non-zero) in millions; "
             "GFLOPs per image; MB: the ONNX fp32 and int8 files (int8: the calibrated static "
             "file, else the dynamic one; an int8 row's own file), MB gzip: the pruned "
             "weights gzip-compressed, as `kdbench compress` recorded them; '-': not measured"
             " or no parent"] if entries else []
    if tests:
        notes.append(procedure_note(tests, "ΔAUC against the uncompressed parent"))
        notes.append("ΔAUC vs parent: the difference in AUC points and its interval at its "
                     "Holm level; a compressed fp32 model against the uncompressed run it was "
                     "made from, an int8 row against its own fp32 model (the quantization's "
                     "effect); n/a: the per-frame predictions of a seed pair are missing")
    if any(e["target"] is not None for e in entries):
        notes.append("target: the requested fraction in %, the achieved one (mean over seeds) "
                      "in parentheses. structured: the measured fraction of parameters "
                      "removed (channels cut, so GFLOPs, file and latency shrink); unstructured:"
                      " the fraction of weights zeroed (layer: in each layer; global: across "
                      "the network); the dense GFLOPs, ONNX file and latency do not change with "
                      "unstructured pruning: its gain is the gzip-compressed file (MB gzip)")
    where = sorted({w for e in entries for w in e["where"]}, key=str)
    notes += [f"latency: ms per image at batch 1 and 32 (median of timed batches after warm-up)"
              f" with onnxruntime's CPU provider on {cpu}, {threads} thread"
              f"{'s' * (threads != 1)}, {size} x {size} input" for cpu, threads, size in where]
    if any(e["technique"] == "teacher" and math.isfinite(e["ms_b32"]) for e in entries):
        notes.append("teacher: a reference (no Δ); its MB and latency are PyTorch fp32's (its "
                     "state dict, eager), not ONNX's")
    notes.append("made by `kdbench reproduce --compression`; this table: `kdbench table --kind "
                 "compression`")
    return notes
