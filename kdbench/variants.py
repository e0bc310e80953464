"""The runs of a method selection: methods x modes x (default, registry variants, sweeps)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from kdbench.config import variant_tag
from kdbench.errors import KdbenchError
from kdbench.registry import MethodEntry


@dataclass
class Sweep:
    """``--sweep [method.]key=v1,v2,...``: one run per value."""

    method: str | None
    key: str
    values: list[Any]


def parse_sweep(text: str) -> Sweep:
    key, sep, raw = text.partition("=")
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not sep or not key.strip() or not values:
        raise KdbenchError(f"--sweep expects key=v1,v2,... (e.g. d=128,256), got {text!r}")
    method, _, name = key.strip().rpartition(".")
    try:
        parsed = [yaml.safe_load(v) for v in values]
    except yaml.YAMLError as exc:
        raise KdbenchError(f"--sweep {text!r}: a value is not a number, word or true/false") \
            from exc
    return Sweep(method or None, name, parsed)


@dataclass
class PlannedRun:
    entry: MethodEntry
    mode: str
    hparams: dict[str, Any]
    variant: str


def check_plan(pairs: list[tuple[MethodEntry, str]], dataset: str,
               overrides: dict[str, dict[str, Any]], sweeps: list[Sweep]) -> None:
    """The checks of :func:`plan_runs` that import no method: each sweep key known to a
    selected method and given once, and every planned hyper-parameter of the right type and
    within its limits."""
    seen_keys: set[tuple[str | None, str]] = set()
    for sw in sweeps:
        if (sw.method, sw.key) in seen_keys:
            raise KdbenchError(f"--sweep {sw.key} is given twice; list all values in one: "
                               f"--sweep {sw.key}=v1,v2,...")
        seen_keys.add((sw.method, sw.key))
        if not any(_applies(sw, e) for e, _ in pairs):
            names = ", ".join(sorted({e.name for e, _ in pairs}))
            raise KdbenchError(f"--sweep {sw.key}: no selected method ({names}) has a "
                               f"hyper-parameter {sw.key!r}; see `kdbench methods`")
    for entry, mode in pairs:
        for change in _changes(entry, mode, sweeps):
            entry.hparams(dataset, {**overrides.get(entry.name, {}), **change})


def _changes(entry: MethodEntry, mode: str, sweeps: list[Sweep]) -> list[dict[str, Any]]:
    """The registry settings, then each registry variant of ``mode``, then each combination of
    the sweep values that apply to ``entry``."""
    mine = [sw for sw in sweeps if _applies(sw, entry)]
    changes = [{}, *entry.variant_sets(mode)]
    if mine:
        changes += [dict(zip([sw.key for sw in mine], combo))
                    for combo in itertools.product(*(sw.values for sw in mine))]
    return changes


def plan_runs(pairs: list[tuple[MethodEntry, str]], dataset: str,
              overrides: dict[str, dict[str, Any]], sweeps: list[Sweep]) -> list[PlannedRun]:
    """Each (method, mode) runs with its hyper-parameters, then once per registry variant of
    that mode and once per combination of the sweep values that apply to the method. A sweep
    key that no selected method knows is an error. Runs with equal settings are listed once."""
    check_plan(pairs, dataset, overrides, sweeps)
    planned, seen = [], set()
    for entry, mode in pairs:
        base = overrides.get(entry.name, {})
        ignored = entry.resolve().ignored_hparams(mode)
        defaults = entry.hparams(dataset)
        for change in _changes(entry, mode, sweeps):
            hp = entry.hparams(dataset, {**base, **change})
            tag = variant_tag({k: v for k, v in hp.items() if k not in ignored}, defaults)
            if (entry.name, mode, tag) not in seen:
                seen.add((entry.name, mode, tag))
                planned.append(PlannedRun(entry, mode, hp, tag))
    return planned


def _applies(sw: Sweep, entry: MethodEntry) -> bool:
    return (sw.method is None or sw.method == entry.name) and entry.knows(sw.key)


def report_runs(entries: list[MethodEntry], dataset: str,
                overrides: dict[str, dict[str, Any]]) -> list[PlannedRun]:
    """The runs the tables of the methods' registry ``reports`` need beyond the default ones:
    the ablation rows and every value of each declared sweep."""
    planned = []
    for entry in entries:
        ignored = entry.resolve().ignored_hparams
        base = overrides.get(entry.name, {})
        defaults = entry.hparams(dataset)
        changes: list[tuple[str, dict[str, Any]]] = []
        for row in entry.reports.get("ablation", []):
            changes.append((row["mode"], dict(row.get("set") or {})))
        for spec in entry.reports.get("sweeps", {}).values():
            names = list(spec["sweep"])
            changes += [(spec["mode"], dict(zip(names, combo)))
                        for combo in itertools.product(*(spec["sweep"][k] for k in names))]
        for mode, change in changes:
            hp = entry.hparams(dataset, {**base, **change})
            tag = variant_tag({k: v for k, v in hp.items() if k not in ignored(mode)}, defaults)
            planned.append(PlannedRun(entry, mode, hp, tag))
    return planned


def merge(*plans: list[PlannedRun]) -> list[PlannedRun]:
    """Concatenate plans, keeping the first of runs with the same method, mode and variant."""
    seen, out = set(), []
    for plan in plans:
        for p in plan:
            if (p.entry.name, p.mode, p.variant) not in seen:
                seen.add((p.entry.name, p.mode, p.variant))
                out.append(p)
    return out


def default_plan_labels(registry: dict, dataset: str, mode: str) -> set[str]:
    """The run folders `kdbench run` makes by default for ``mode`` (no --set/--sweep): each
    method's plain folder and its registry ``variants``, e.g. {"m", "m@flag=false"}."""
    labels: set[str] = set()
    for entry in registry.values():
        defaults = entry.hparams(dataset)
        labels.add(entry.name)
        for changes in entry.variant_sets(mode):
            labels.add(f"{entry.name}@{variant_tag(entry.hparams(dataset, changes), defaults)}")
    return labels


def in_default_plan(registry: dict) -> Callable[[str, str, str], bool]:
    """``(dataset, mode, label) -> bool``: is the run folder ``label`` (e.g. ``m@k=256``)
    one of :func:`default_plan_labels`; the labels are computed once per (dataset, mode). A
    method the registry does not know (added with another --registry) counts with its plain
    folder, so a store's runs are drawn whatever registry is loaded."""
    labels: dict[tuple[str, str], set[str]] = {}

    def test(dataset: str, mode: str, label: str) -> bool:
        method, _, variant = label.partition("@")
        if method not in registry:
            return not variant
        if (dataset, mode) not in labels:
            labels[(dataset, mode)] = default_plan_labels(registry, dataset, mode)
        return label in labels[(dataset, mode)]

    return test
