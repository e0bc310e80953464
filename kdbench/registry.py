"""The method registry: registry.yaml (+ user registries) -> Distiller classes."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kdbench.errors import KdbenchError, did_you_mean
from kdbench.values import check_limit_spec, check_limits, coerce, did_you_mean_key


def _built_in() -> Path | None:
    """The built-in registry, shipped inside the package (the repository's registry.yaml,
    installed as kdbench/methods/registry.yaml); None if kdbench.methods is not installed."""
    try:
        return Path(str(resources.files("kdbench.methods").joinpath("registry.yaml")))
    except ModuleNotFoundError:  # an editable install made before methods/ was mapped there
        return None


DEFAULT_REGISTRY = _built_in()
VALID_MODES = ("none", "rgb", "both")
DISTILLER_IMPORT = "from kdbench.methods import Distiller"
# hyper-parameters the engine adds to every method with a ``both`` mode (name -> default,
# limits): both_weighting "sum" keeps each branch's distillation term at the method's weight
# (the paper's L = CE + w (L_rgb + L_fre)); "mean" halves each, so that the total distillation
# weight equals rgb mode's (kdbench.train.branch_terms applies it)
BOTH_HPARAMS: dict[str, tuple[Any, dict[str, Any]]] = {
    "both_weighting": ("sum", {"choices": ["sum", "mean"]}),
}


@dataclass
class MethodEntry:
    """One registry entry; ``source`` is the registry file it came from."""

    name: str
    entry: str
    modes: list[str]
    defaults: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: Path | None = DEFAULT_REGISTRY
    # extra runs whenever the method runs: [{"set": {...}, "modes": [...]}]
    variants: list[dict[str, Any]] = field(default_factory=list)
    # one name setting several hyper-parameters, e.g. a -> [a1, a2]
    aliases: dict[str, list[str]] = field(default_factory=dict)
    # the tables and figures this method's runs fill (see _check_reports)
    reports: dict[str, Any] = field(default_factory=dict)
    # allowed values of hyper-parameters: {name: {min, max, gt, lt, choices}} (kdbench.values)
    limits: dict[str, dict[str, Any]] = field(default_factory=dict)
    # what a stored run that records no value of a hyper-parameter used (one added to the
    # method later with another default than the old behaviour)
    legacy: dict[str, Any] = field(default_factory=dict)

    def knows(self, key: str) -> bool:
        return key in self.defaults or key in self.aliases

    def hparams(self, dataset: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults, then the per-dataset overrides, then ``--set <method>.<key>=...``
        (an alias sets each hyper-parameter it names)."""
        params = {**self.defaults, **self.datasets.get(dataset, {})}
        for key, value in (overrides or {}).items():
            if not self.knows(key):
                names = [*self.defaults, *self.aliases]
                known = ", ".join(f"{self.name}.{k}" for k in names)
                raise KdbenchError(
                    f"unknown hyper-parameter {self.name}.{key}"
                    f"{did_you_mean_key(self.name, key, names)}; known: {known or 'none'}"
                )
            for target in self.aliases.get(key, [key]):
                params[target] = coerce(value, self.defaults[target], f"{self.name}.{key}")
        for key, value in params.items():
            check_limits(value, self.limits.get(key), f"{self.name}.{key}")
        return params

    def variant_sets(self, mode: str) -> list[dict[str, Any]]:
        """The hyper-parameter changes of the extra runs declared for ``mode``."""
        return [dict(v["set"]) for v in self.variants if mode in v.get("modes", [mode])]

    def resolve(self) -> type:
        """Import the entry point (``module:Class`` or ``path/to/file.py:Class``)."""
        from kdbench.methods.base import Distiller

        target, cls_name = self.check_entry()
        try:
            if target.endswith(".py"):
                module = _import_file(self._path(target))
            else:
                module = importlib.import_module(target)
        except KdbenchError:
            raise
        except Exception as exc:  # an import error inside the user's module
            hint = ""
            if isinstance(exc, ModuleNotFoundError) and exc.name == "methods":
                hint = f" (the built-in methods moved: `{DISTILLER_IMPORT}`)"
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise KdbenchError(
                f"{self.source}: cannot import {target!r} for method {self.name!r}: "
                f"{type(exc).__name__}: {first}{hint}"
            ) from exc
        if not hasattr(module, cls_name):
            raise KdbenchError(
                f"{self.source}: {target!r} has no class {cls_name!r} (method {self.name!r}); "
                "fix the entry's class name"
            )
        cls = getattr(module, cls_name)
        if not (isinstance(cls, type) and issubclass(cls, Distiller)):
            raise KdbenchError(
                f"{self.source}: {self.entry!r} (method {self.name!r}) is not a Distiller "
                f"subclass; derive it from Distiller (`{DISTILLER_IMPORT}`)"
            )
        return cls

    def check_entry(self) -> tuple[str, str]:
        """(module or file, class name) of the entry point, checked without importing it: the
        file exists, or the module can be found."""
        target, sep, cls_name = self.entry.rpartition(":")
        if not sep or not target or not cls_name:
            raise KdbenchError(
                f"{self.source}: method {self.name!r} has entry {self.entry!r}; "
                "expected module:Class or path/to/file.py:Class"
            )
        if target.endswith(".py"):
            if not self._path(target).is_file():
                raise KdbenchError(f"{self.source}: method file {self._path(target)} of method "
                                   f"{self.name!r} not found; fix the entry path")
            return target, cls_name
        try:
            found = importlib.util.find_spec(target) is not None
        except (ModuleNotFoundError, ValueError):
            found = False
        except Exception:  # a parent package that fails to import: resolve() reports it
            found = True
        if not found:
            hint = (f"; the built-in methods moved to kdbench.methods (`{DISTILLER_IMPORT}`)"
                    if target.split(".")[0] == "methods" else
                    "; fix the entry, or give a file: path/to/file.py:Class")
            raise KdbenchError(f"{self.source}: module {target!r} of method {self.name!r} not "
                               f"found{hint}")
        return target, cls_name

    def _path(self, target: str) -> Path:
        path = Path(target).expanduser()
        return path if path.is_absolute() else (self.source.parent / path).resolve()


def _import_file(path: Path):
    if not path.is_file():
        raise KdbenchError(f"method file {path} not found; fix the entry path in the registry")
    name = f"kdbench_user_{abs(hash(str(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _entry(name: str, raw: Any, source: Path) -> MethodEntry:
    if not isinstance(raw, dict) or not isinstance(raw.get("entry"), str):
        raise KdbenchError(
            f"{source}: method {name!r} needs an 'entry: module:Class' (or file.py:Class) mapping"
        )
    modes = raw.get("modes", ["rgb", "both"])
    if not isinstance(modes, list) or not modes or any(m not in VALID_MODES for m in modes):
        raise KdbenchError(
            f"{source}: method {name!r} has modes {modes!r}; use a list of {', '.join(VALID_MODES)}"
        )
    defaults = raw.get("defaults") or {}
    datasets = raw.get("datasets") or {}
    if not isinstance(defaults, dict) or not isinstance(datasets, dict):
        raise KdbenchError(f"{source}: method {name!r}: 'defaults' and 'datasets' must be mappings")
    aliases = raw.get("aliases") or {}
    if not isinstance(aliases, dict) or any(
            not isinstance(v, list) or any(t not in defaults for t in v) for v in aliases.values()):
        raise KdbenchError(f"{source}: method {name!r}: 'aliases' must map a name to a list of "
                           "hyper-parameters from 'defaults'")
    variants = raw.get("variants") or []
    if not isinstance(variants, list) or any(
            not isinstance(v, dict) or not isinstance(v.get("set"), dict)
            or any(k not in defaults for k in v["set"]) for v in variants):
        raise KdbenchError(f"{source}: method {name!r}: 'variants' must be a list of "
                           "{set: {hyper-parameter: value}, modes: [...]} mappings")
    defaults = dict(defaults)
    if "both" in modes:  # the engine's both-mode hyper-parameters, before the checks use them
        for key, (default, _) in BOTH_HPARAMS.items():
            defaults.setdefault(key, default)
    reports = raw.get("reports") or {}
    _check_reports(name, reports, defaults, aliases, modes, source)
    limits = raw.get("limits") or {}
    if not isinstance(limits, dict):
        raise KdbenchError(f"{source}: method {name!r}: 'limits' must map a hyper-parameter to "
                           "{min, max, gt, lt, choices}")
    for key, spec in limits.items():
        why = ("not in 'defaults'" if key not in defaults
               else check_limit_spec(spec, defaults[key]))
        if why:
            raise KdbenchError(f"{source}: method {name!r}: limits of {key!r}: {why}")
    limits = dict(limits)
    if "both" in modes:
        for key, (_, spec) in BOTH_HPARAMS.items():
            limits.setdefault(key, spec)
    legacy = raw.get("legacy") or {}
    if not isinstance(legacy, dict) or any(k not in defaults for k in legacy):
        raise KdbenchError(f"{source}: method {name!r}: 'legacy' must map a hyper-parameter "
                           "from 'defaults' to the value runs recorded without it used")
    return MethodEntry(name, raw["entry"], list(modes), dict(defaults),
                       {k: dict(v or {}) for k, v in datasets.items()}, source,
                       [dict(v) for v in variants], {k: list(v) for k, v in aliases.items()},
                       dict(reports), {k: dict(v) for k, v in limits.items()}, dict(legacy))


BUILT_IN_KINDS = ("runs", "comparison", "weighting", "ablation", "teacher", "cross", "cost",
                  "curves", "deploy", "students", "claims", "gradcos", "compression", "pareto",
                  "shortcut", "generators", "transfer", "resolution", "views")


SWEEP_KEYS = ("title", "mode", "sweep")
TRACE_KEYS = ("title", "mode", "panels", "ylabel", "label", "with_gradcos")
BENCH_KEYS = ("mode", "min_size", "against", "sweep")


def _check_reports(name: str, reports: Any, defaults: dict, aliases: dict, modes: list[str],
                   source: Path) -> None:
    """``reports: {ablation: [{label, mode, set}], teacher: {mode},
    sweeps: {NAME: {title, mode, sweep: {key: [values]}}},
    traces: {NAME: {title, mode, panels: {field: title}, ylabel, label}},
    bench: {NAME: {mode, min_size, against: {key: value}, sweep: {key: [values]}}}``: the
    tables and figures a method's runs fill (`kdbench table --kind NAME`, `kdbench plot
    NAME`), and the step-time ratios `kdbench bench` reports as NAME (each sweep value's step
    over the ``against`` setting's, at ``min_size`` px or the preset's size if larger)."""
    def bad(why: str) -> KdbenchError:
        return KdbenchError(f"{source}: method {name!r}: reports: {why}")

    if not isinstance(reports, dict):
        raise bad("must be a mapping of report kind -> rows")
    known = set(defaults) | set(aliases)
    for kind, spec in reports.items():
        if kind == "ablation":
            if not isinstance(spec, list) or any(
                    not isinstance(r, dict) or "label" not in r or r.get("mode") not in VALID_MODES
                    or any(k not in known for k in (r.get("set") or {})) for r in spec):
                raise bad("ablation must be a list of {label, mode, set: {...}} rows")
        elif kind == "teacher":
            if not isinstance(spec, dict) or spec.get("mode") not in VALID_MODES:
                raise bad("teacher must be {mode: rgb|both}")
        elif kind in ("sweeps", "traces", "bench"):
            keys = {"sweeps": SWEEP_KEYS, "traces": TRACE_KEYS, "bench": BENCH_KEYS}[kind]
            if not isinstance(spec, dict):
                raise bad(f"{kind} must map a name to {{{', '.join(keys)}}}")
            for sname, s in spec.items():
                where = f"{kind}.{sname}"
                if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", str(sname)):
                    raise bad(f"{where}: a name is a word (letters, digits, _ and -): it names "
                              "a file and a command")
                if sname in BUILT_IN_KINDS:
                    raise bad(f"{where} is a built-in report's name; choose another")
                if not isinstance(s, dict) or set(s) - set(keys):
                    extra = sorted(set(s) - set(keys)) if isinstance(s, dict) else []
                    raise bad(f"{where}: unknown key {extra[0]!r}; use {', '.join(keys)}"
                              if extra else f"{where} must be {{{', '.join(keys)}}}")
                if s.get("mode") not in modes or s.get("mode") == "none":
                    raise bad(f"{where}: mode {s.get('mode')!r} is not a teacher mode of the "
                              f"method ({', '.join(m for m in modes if m != 'none')})")
                if kind == "bench" and (not isinstance(s.get("against"), dict) or any(
                        k not in known for k in s["against"]) or not isinstance(
                        s.get("min_size", 8), int)):
                    raise bad(f"{where} needs against: {{hyper-parameter: value}} and an "
                              "integer min_size")
                if kind in ("sweeps", "bench"):
                    sweep = s.get("sweep")
                    if not isinstance(sweep, dict) or not sweep or any(
                            k not in known or not isinstance(v, list) or not v
                            for k, v in sweep.items()):
                        raise bad(f"{where} needs sweep: {{hyper-parameter: [values]}}")
                elif not isinstance(s.get("panels"), dict) or not s["panels"]:
                    raise bad(f"{where} needs panels: {{record field: title}}")
        elif kind == "diagnose":
            if not isinstance(spec, dict) or spec.get("mode") != "both" or any(
                    k not in known for k in (spec.get("set") or {})):
                raise bad("diagnose must be {mode: both, set: {hyper-parameter: value}}")
        elif kind == "claims":
            _check_claims(spec, known, bad)
        elif kind == "compression":
            if not isinstance(spec, dict) or set(spec) != {"mode"} or spec["mode"] not in modes \
                    or spec["mode"] == "none":
                raise bad("compression must be {mode: rgb|both}: the compression plan "
                          "fine-tunes its structured 90 % models with this method in that mode")
        elif kind == "generators":
            if not isinstance(spec, dict) or set(spec) != {"mode"} or spec["mode"] not in modes \
                    or spec["mode"] == "none":
                raise bad("generators must be {mode: rgb|both}: `reproduce --protocol` trains "
                          "this method in that mode on each protocol's generators")
        else:
            hint = (f" (a sweep is declared as sweeps: {{{kind}: {{title, mode, sweep}}}})"
                    if isinstance(spec, dict) and "sweep" in spec else "")
            raise bad(f"unknown report kind {kind!r}; use ablation, teacher, sweeps, traces, "
                      f"bench, diagnose, claims or compression{hint}")
    both = set(reports.get("sweeps") or {}) & set(reports.get("traces") or {})
    if both:
        raise bad(f"{sorted(both)[0]!r} is both a sweep and a trace; rename one")


CLAIM_TESTS = ("others_both_below_rgb", "above", "best", "above_teacher", "best_ablation",
               "peak", "flat", "trace_negative", "trace_near_zero", "cross_above")


def _check_claims(spec: Any, known: set[str], bad: Any) -> None:
    """``claims: [{claim, test, paper, a: {method?, mode, set?}, b: {...}, sweep, value,
    trace, field, tolerance}]`` (kdbench.report.claims tests each)."""
    if not isinstance(spec, list):
        raise bad("claims must be a list of {claim, test, paper, ...} rows")
    for row in spec:
        if not isinstance(row, dict) or not isinstance(row.get("claim"), str):
            raise bad("each claim needs a claim: text")
        if row.get("test") not in CLAIM_TESTS:
            raise bad(f"claim {row['claim']!r}: test must be one of {', '.join(CLAIM_TESTS)}")
        for side in ("a", "b"):
            cell = row.get(side)
            if cell is not None and (not isinstance(cell, dict)
                                     or cell.get("mode") not in VALID_MODES):
                raise bad(f"claim {row['claim']!r}: {side} must be {{method, mode, set}}")
            if cell is not None and "method" not in cell and any(
                    k not in known for k in (cell.get("set") or {})):
                raise bad(f"claim {row['claim']!r}: {side}.set names an unknown "
                          "hyper-parameter")


def report_specs(registry: dict[str, MethodEntry], kind: str) -> dict[str, list]:
    """``kind`` ("sweeps" or "traces") -> {report name: [(entry, spec), ...]} over the
    registry's methods, in registry order."""
    found: dict[str, list] = {}
    for entry in registry.values():
        for name, spec in entry.reports.get(kind, {}).items():
            found.setdefault(name, []).append((entry, spec))
    return found


def read_registry(path: Path) -> dict[str, MethodEntry]:
    """Parse one registry file; every problem is reported as a one-line KdbenchError."""
    path = Path(path)
    if not path.is_file():
        raise KdbenchError(f"registry file {path} not found; check the --registry path")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise KdbenchError(f"{path}: not a UTF-8 text file; give a YAML registry") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise KdbenchError(f"{path}: malformed YAML{line}; fix the file's syntax") from exc
    if not isinstance(raw, dict):
        raise KdbenchError(f"{path}: expected a mapping of method name -> entry")
    return {str(name): _entry(str(name), value, path.resolve()) for name, value in raw.items()}


def load_registry(extra: list[Path] | None = None) -> dict[str, MethodEntry]:
    """The built-in registry, then each user registry adding or overriding entries."""
    if DEFAULT_REGISTRY is None:
        raise KdbenchError("the built-in methods (kdbench.methods) are not installed; in a "
                           "checkout, run `pip install -e .` again")
    entries = read_registry(DEFAULT_REGISTRY)
    for path in extra or []:
        entries.update(read_registry(path))
    return entries


def select_methods(registry: dict[str, MethodEntry], spec: str) -> list[MethodEntry]:
    """``all`` or a comma-separated list of names; unknown names raise with the known ones."""
    if spec.strip() == "all":
        return list(registry.values())
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = list(dict.fromkeys(n for n in names if n not in registry))
    if unknown:
        named = ", ".join(f"{n!r}{did_you_mean(n, registry)}" for n in unknown)
        raise KdbenchError(
            f"unknown method{'s' * (len(unknown) > 1)} {named}; known: "
            f"{', '.join(registry)} (add one with --registry FILE)"
        )
    return [registry[n] for n in names]
