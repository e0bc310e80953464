"""A request's plan, resolved once: preset, device, students, seeds and the run list.

Every executor (in process, print, local workers, SLURM) takes the same :class:`Plan`, so all
of them run exactly the same runs; a launched job carries ``plan.request.job(name)``, which
names the resolved preset and device, and plans that one run again where it starts.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from kdbench.config import BACKBONES, RunSpec, default_preset, preset_students, resolve_config
from kdbench.errors import KdbenchError, did_you_mean
from kdbench.registry import MethodEntry
from kdbench.request import RunRequest

TEACHER = "teacher"  # the --only name of the plan's teacher
log = logging.getLogger(__name__)


def run_name(spec: RunSpec) -> str:
    """A run's name in a plan (``--only``): ``<student>/<label>/<mode>/seed<k>``."""
    return f"{spec.student}/{spec.label}/{spec.mode}/seed{spec.seed}"


@dataclass(frozen=True)
class PlannedRun:
    """One run of a plan: its spec, registry entry, name and folder."""

    spec: RunSpec
    entry: MethodEntry
    name: str
    run_dir: Path

    @property
    def distils(self) -> bool:
        return self.spec.mode != "none"


@dataclass
class Plan:
    """A checked request with everything resolved (``request.preset``, ``.device`` and
    ``.students`` are set) and its runs, in the order they run."""

    request: RunRequest
    runs: list[PlannedRun]
    overrides: dict[str, Any]
    registry: dict[str, MethodEntry]
    cross: tuple[str, Path | None] | None = None

    @property
    def selected(self) -> list[PlannedRun]:
        """The runs this request trains: all, or ``--only`` one (none for the teacher)."""
        only = self.request.only
        if only is None:
            return list(self.runs)
        return [] if only == TEACHER else [r for r in self.runs if r.name == only]

    @property
    def config(self) -> dict[str, Any]:
        """The resolved settings (not yet adapted to the device: see config.for_device)."""
        return resolved_config(self.request, self.overrides)


def plan(request: RunRequest) -> Plan:
    """Check ``request`` (no torch import unless the device must be looked up) and resolve it
    into a :class:`Plan`; bad input is a one-line :class:`KdbenchError`."""
    _check_launch(request)
    checked = _check(request, request.preset or "cpu")
    device = _device(request)
    if request.launcher == "print" and request.device in (None, "auto"):
        log.warning(f"the commands name --device {device}, as resolved on this machine; give "
                    "--device cuda (or cpu) for the machines that will run them")
    preset = request.preset or default_preset(device)
    if preset != (request.preset or "cpu"):  # the GPU default: check its settings, students
        checked = _check(request, preset)
    overrides, reg, students, modes = checked
    resolved = replace(request, preset=preset, device=device, students=tuple(students),
                       modes=modes, lock_dir=request.lock_folder())
    cross = _cross(resolved)
    resolved = replace(resolved, cross_dataset=cross[0] if cross else None,
                       cross_data_root=cross[1] if cross else None)
    runs = _runs(resolved, reg, overrides, resolved_config(resolved, overrides))
    if request.only is not None and request.only != TEACHER \
            and not any(r.name == request.only for r in runs):
        names = [r.name for r in runs]
        raise KdbenchError(f"--only {request.only!r} is not a run of this plan"
                           f"{did_you_mean(request.only, names)}; `--launcher print` lists them")
    return Plan(resolved, runs, overrides, reg, cross)


def _check_launch(r: RunRequest) -> None:
    """The launcher options fit together."""
    if r.launcher != "local" and (r.workers is not None or r.gpus):
        raise KdbenchError("--workers and --gpus go with --launcher local")
    if r.gpus and r.device not in (None, "auto", "cuda"):
        raise KdbenchError(f"--device {r.device} with --gpus: each worker sees its one GPU as "
                           "cuda:0; drop --device (or give --device cuda)")
    slurm = [f.name for f in fields(r) if f.name.startswith("slurm_")
             and getattr(r, f.name) != f.default]
    if r.launcher != "slurm" and slurm:
        raise KdbenchError("--slurm-* options go with --launcher slurm")
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1") and r.launcher != "inprocess":
        raise KdbenchError(f"under torchrun each run is trained data-parallel by all ranks; "
                           f"drop --launcher {r.launcher}")
    if r.launcher != "inprocess" and r.restart:
        raise KdbenchError(f"--launcher {r.launcher} runs each run of the plan as it stands; "
                           "drop --restart (or restart the runs with --launcher inprocess)")


def _check(r: RunRequest, preset: str
           ) -> tuple[dict[str, Any], dict[str, MethodEntry], list[str], tuple[str, ...]]:
    """Every check that needs no torch: registry, methods and their hyper-parameters,
    settings, students, modes, sweeps, device name, dataset, results folder and pretrained
    weights (timm is imported only for a backbone not built in); returns (settings overrides,
    registry, students, modes)."""
    from kdbench.config import check_device_name, parse_set
    from kdbench.data.datasets import check_dataset
    from kdbench.files import check_writable
    from kdbench.registry import load_registry, select_methods
    from kdbench.variants import check_plan, parse_sweep

    reg = load_registry(list(r.registry))
    if not r.methods:
        raise KdbenchError("no method given; name registry methods (see `kdbench methods`) or "
                           "all")
    entries = select_methods(reg, ",".join(r.methods))
    overrides = parse_set(list(r.settings))
    _generator_options(r, overrides)
    targets = ["data", "train", "teacher", "student", *reg]
    unknown = sorted(set(overrides) - set(targets))
    if unknown:  # a bare key (lrr=0.1) is most likely a section's key without its section
        base = resolve_config("cpu", r.dataset, {})
        keys = [*targets, *(f"{sec}.{k}" for sec in targets[:4] for k in base[sec])]
        short = {k.partition(".")[2]: k for k in keys if "." in k}
        near = difflib.get_close_matches(unknown[0], list(short), n=1, cutoff=0.6)
        close = did_you_mean(unknown[0], targets) or (
            f" (did you mean {short[near[0]]!r}?)" if near else "")
        raise KdbenchError(f"unknown setting target {unknown[0]!r}{close}; use data.*, "
                           "train.*, teacher.*, student.* or <method>.<hyper-parameter>")
    for name in set(overrides) & set(reg):
        if not isinstance(overrides[name], dict):
            raise KdbenchError(f"setting {name}=... needs a hyper-parameter: {name}.<name>=value "
                               "(see `kdbench methods`)")
    if r.device is not None:
        check_device_name(r.device)
    config = resolve_config(preset, r.dataset, overrides)
    for section in ("teacher", "student"):
        weights = config[section]["pretrained"]
        if weights and weights != "imagenet" and not Path(weights).expanduser().is_file():
            raise KdbenchError(f"{section}.pretrained: weights file {weights} not found; give a "
                               "local .pth/.pt path, imagenet (timm's weights) or none")
    students = list(r.students) or preset_students(preset)
    t = config["teacher"]
    if t["checkpoint"] and not Path(t["checkpoint"]).expanduser().is_file():
        raise KdbenchError(f"teacher.checkpoint: file {t['checkpoint']} not found; give the "
                           "trained detector's local weights file")
    branches = [("teacher.backbone", t["backbone"])] + \
        [("teacher.freq_backbone", t["freq_backbone"])] * bool(t["freq_backbone"])
    facts = _check_backbones([("--students", s) for s in students] + branches,
                             config["data"]["size"])
    if t["kind"] == "dual":
        for option, name in branches:
            stages, sequential = facts[name]
            if stages < 4 or not sequential:
                why = "gives fewer than four stage maps" if sequential else \
                    "runs its stages inside timm's feature hooks"
                raise KdbenchError(
                    f"{option}={name}: the backbone {why}, but a dual teacher's RFAMs couple "
                    "the branches after stages 1-3; use another backbone or teacher.kind=single")
    _check_freq_view(t, int(config["data"]["size"]))
    small = config["student"].get("size")
    if small is not None and small > config["data"]["size"]:
        raise KdbenchError(f"student.size={small} is larger than data.size="
                           f"{config['data']['size']}: the student's input is made from the "
                           "teacher's by shrinking it; give student.size <= data.size")
    blur, side = config["student"].get("blur") or 0, small or config["data"]["size"]
    if blur and max(1, round(3 * blur)) >= side:
        raise KdbenchError(f"student.blur={blur:g}: the blur's reach (3 sigma) is as large as "
                           f"the student's {side} px input; give student.blur below "
                           f"{(side - 0.5) / 3:.2f}")
    bad_modes = [m for m in r.modes if m not in ("rgb", "both")]
    if bad_modes:
        raise KdbenchError(f"unknown mode {(bad_modes or [''])[0]!r}; modes are rgb, both or "
                           "rgb,both")
    modes = _modes(r, t["kind"])
    pairs = [(e, m) for e in entries for m in e.modes if m == "none" or m in modes]
    if not pairs:
        raise KdbenchError(f"no method of {','.join(r.methods)!r} runs in modes "
                           f"{','.join(modes)!r}")
    for e, _ in pairs:  # entry points found (not imported yet)
        e.check_entry()
    _check_stage_maps(pairs, students, facts, t)
    check_plan(pairs, r.dataset, overrides, [parse_sweep(sw) for sw in r.sweeps])
    check_dataset(r.dataset, r.data_root)
    check_writable(r.results)
    backbones = {"teacher": [] if t["checkpoint"] else
                 [t["backbone"], *([t["freq_backbone"]] if t["freq_backbone"] else [])],
                 "student": students}
    for section, names in backbones.items():  # before hours of data preparation
        if config[section]["pretrained"] == "imagenet":
            from kdbench.models.backbones import check_imagenet

            for name in names:
                check_imagenet(name, f"{section}.pretrained")
    return overrides, reg, students, modes


def _check_freq_view(t: dict[str, Any], size: int) -> None:
    """teacher.freq_view=dwt: a known wavelet, and no more levels than ``size`` px allow (each
    level halves the side, down to 2 px)."""
    view = t.get("freq_view", "dct")
    if view == "dct" and (t.get("wavelet", "haar") != "haar" or t.get("levels", 1) != 1):
        raise KdbenchError("teacher.wavelet and teacher.levels shape the wavelet view: give "
                           "them with teacher.freq_view=dwt (the DCT view ignores them)")
    if view != "dwt":
        return
    if t["kind"] != "dual":
        raise KdbenchError("teacher.freq_view=dwt is the frequency branch's input; "
                           "teacher.kind=single has no frequency branch: leave it out, or use "
                           "teacher.kind=dual")
    from kdbench.models.wavelet_library import check_wavelet, max_levels

    check_wavelet(t["wavelet"])
    most = max_levels(t["wavelet"], size)
    if t["levels"] > most:
        raise KdbenchError(f"teacher.levels={t['levels']}: {size} px allow at most {most} "
                           f"wavelet levels (each halves the side); give teacher.levels={most} "
                           "or less, or a larger data.size")


def _generator_options(r: RunRequest, overrides: dict[str, Any]) -> None:
    """``--train-generators`` / ``--test-generators`` as their ``data.*`` settings."""
    from kdbench.config import GENERATOR_SETTINGS

    for key in GENERATOR_SETTINGS:
        names = getattr(r, key)
        if not names:
            continue
        data = overrides.setdefault("data", {})
        if not isinstance(data, dict) or key in data:
            raise KdbenchError(f"--{key.replace('_', '-')} and --set data.{key} name the same "
                               "setting; give one of them")
        data[key] = ",".join(names)


def _check_backbones(named: list[tuple[str, str]], size: int) -> dict[str, tuple[int, bool]]:
    """Each (option, name) is a built-in backbone or a timm CNN with features_only that runs at
    ``size`` px (one line with the closest timm names otherwise); returns each name's (stage
    maps, stages run in turn). timm is imported only for a name not built in."""
    facts = {name: (4, True) for _, name in named if name in BACKBONES}
    others = [(option, name) for option, name in named if name not in BACKBONES]
    if others:
        from kdbench.models.backbones import check_backbone

        for option, name in others:
            facts[name] = check_backbone(name, option, size)
    return facts


def _check_stage_maps(pairs: list[tuple[MethodEntry, str]], students: list[str],
                      facts: dict[str, tuple[int, bool]], t: dict[str, Any]) -> None:
    """A method that reads more stage maps (its ``stage_maps``) than a student or the teacher
    gives is one line now, not after the data is prepared (the methods are imported only when
    some backbone gives fewer than four)."""
    sides = [("--students", s) for s in students] + [("teacher.backbone", t["backbone"])]
    short = [(option, name) for option, name in sides if facts[name][0] < 4]
    for entry, mode in pairs if short else []:
        need = getattr(entry.resolve(), "stage_maps", 0)
        for option, name in short:
            if mode != "none" and facts[name][0] < need:
                raise KdbenchError(
                    f"{entry.name} reads {need} stage maps, but {option} {name} gives "
                    f"{facts[name][0]}; pick another backbone, or a method that reads the "
                    "pooled vector or logits")


def _modes(r: RunRequest, kind: str) -> tuple[str, ...]:
    """The distillation modes: ``--modes``, by default rgb,both; a single-branch teacher has
    no frequency branch, so its default is rgb and an asked-for ``both`` is an error."""
    if not r.modes:
        return ("rgb",) if kind == "single" else ("rgb", "both")
    if kind != "single" or "both" not in r.modes:
        return tuple(r.modes)
    raise KdbenchError("--modes both needs the frequency branch of a dual teacher; "
                       "teacher.kind=single has none: use --modes rgb (or teacher.kind=dual)")


def _device(r: RunRequest) -> str:
    """The device every run of the plan uses: ``--device``; cuda for GPU launchers (``--gpus``,
    SLURM jobs with GPUs); else cuda when this machine has one, cpu otherwise."""
    if r.device not in (None, "auto"):
        return r.device
    if r.launcher == "slurm" and r.slurm_cluster == "slurm" and r.slurm_gpus_per_job > 0:
        return "cuda"  # the login node need not have the jobs' GPUs
    import torch

    if r.gpus and not torch.cuda.is_available():
        raise KdbenchError(f"--gpus {','.join(r.gpus)}: no CUDA device is visible here; drop "
                           "--gpus to run on the CPU")
    return "cuda" if r.gpus or torch.cuda.is_available() else "cpu"


def resolved_config(r: RunRequest, overrides: dict[str, Any]) -> dict[str, Any]:
    """The settings of a resolved request (not yet adapted to the device)."""
    return resolve_config(r.preset or "cpu", r.dataset, overrides)


def _runs(r: RunRequest, reg: dict[str, MethodEntry], overrides: dict[str, Any],
          config: dict[str, Any]) -> list[PlannedRun]:
    """Every run of the plan, in the order they run: seeds, then students, then methods."""
    from kdbench.registry import select_methods
    from kdbench.variants import merge, parse_sweep, plan_runs, report_runs

    entries = select_methods(reg, ",".join(r.methods))
    pairs = [(e, m) for e in entries for m in e.modes if m == "none" or m in r.modes]
    planned = plan_runs(pairs, r.dataset, overrides, [parse_sweep(s) for s in r.sweeps])
    if r.with_reports:
        planned = merge(planned, report_runs(entries, r.dataset, overrides))
    if config["teacher"]["kind"] == "single":  # the report runs of both mode need two branches
        planned = [p for p in planned if p.mode in ("none", *r.modes)]
    from kdbench.config import dataset_folder, student_input_tag

    protocol = dataset_folder(r.dataset, config).partition("@")[2]
    student_input = student_input_tag(config)
    out = []
    for seed in r.seeds:
        for student in r.students:
            for p in planned:
                spec = RunSpec(r.dataset, student, p.entry.name, p.mode, seed, p.hparams,
                               p.variant, protocol, student_input)
                out.append(PlannedRun(spec, p.entry, run_name(spec), r.results / spec.relpath))
    return out


def cross_name(cross_dataset: str | None, dataset: str) -> str | None:
    """The dataset the runs are also tested on (Table 7): ``auto`` is the embedded shifted
    domain after an embedded dataset, else none; ``none`` or None: none."""
    if cross_dataset == "auto":
        from kdbench.data.synthetic.domains import DEFAULT_CROSS

        cross_dataset = DEFAULT_CROSS.get(dataset)
    return None if cross_dataset == "none" else cross_dataset


def _cross(r: RunRequest) -> tuple[str, Path | None] | None:
    """(dataset, data root) of the per-run cross test, checked; None without one."""
    name = cross_name(r.cross_dataset, r.dataset)
    if name is None:
        if r.cross_data_root is not None and r.cross_dataset != "auto":
            raise KdbenchError("--cross-data-root goes with --cross-dataset: name the dataset "
                               "it holds")
        return None
    from kdbench.data.datasets import check_dataset

    check_dataset(name, r.cross_data_root, prefix="--cross-")
    return name, r.cross_data_root
