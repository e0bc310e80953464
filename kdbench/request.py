"""The run request: every option of `kdbench run` / `kdbench reproduce`, declared once.

:class:`RunRequest` is the one typed form of a request. The CLI's options (flag, help, choices,
default) are generated from its fields (:func:`add_arguments`), :func:`kdbench.api.run` builds
it from keyword arguments (:meth:`RunRequest.make`), ``--launcher print`` writes it back as a
command line (:meth:`RunRequest.to_argv`) and launched jobs carry it as JSON
(:meth:`RunRequest.to_json`). All of them go through one normalisation, :meth:`make`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kdbench.config import DEFAULT_RESULTS
from kdbench.errors import KdbenchError, did_you_mean
from kdbench.values import comma_list

COMMANDS = ("run", "reproduce")
LAUNCHERS = ("inprocess", "print", "local", "slurm")
KEEP_CHECKPOINTS = ("all", "best", "none")
PRESET_NAMES = ("quick", "cpu", "mobile", "paper")
SLURM_CLUSTERS = ("slurm", "local", "debug")
PROTOCOLS = ("logo", "one-to-all")
LOCK_DIR_ENV = "KDBENCH_LOCK_DIR"


@dataclass(frozen=True)
class Option:
    """How a request field appears on the command line."""

    flag: str | None  # None: not a command-line option (set by the caller)
    help: str
    kind: str = "text"  # text | list | ints | path | paths | bool | int | threads | repeat
    commands: tuple[str, ...] = COMMANDS
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    group: str | None = None  # "launchers": shown in their own help group
    low: int = 1  # kind int: the least value
    also: tuple[tuple[str, str, str], ...] = ()  # (flag, value appended, help): a shorthand


def _opt(default: Any, flag: str | None, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"opt": Option(flag, help, **kw)})


def _opt_meta(f) -> Option:
    return f.metadata["opt"]


# per-command defaults that differ from the field's default
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {
    "reproduce": {"seeds": (0, 1, 2), "cross_dataset": "auto", "with_reports": True},
}


@dataclass(frozen=True)
class RunRequest:
    """Everything that decides a plan and how it is executed (see the module doc)."""

    methods: tuple[str, ...] = _opt(
        ("all",), "--methods", "comma list of registry names, or all", kind="list",
        commands=("run",))
    dataset: str = _opt("synthetic", "--dataset", "synthetic (embedded, no download), ff_c40, "
                        "ff_c23, ff_raw, celebdf, folder, or the --name of a prepared folder")
    data_root: Path | None = _opt(
        None, "--data-root", "prepared folder of a real dataset, or where to keep the synthetic "
        "one (default for synthetic: $KDBENCH_DATA or ~/.cache/kdbench)", kind="path")
    students: tuple[str, ...] = _opt(
        (), "--students", "comma list of resnet18_thin, resnet34_thin, xception or any timm CNN "
        "(`kdbench models`; default: the preset's)", kind="list")
    modes: tuple[str, ...] = _opt(
        (), "--modes", "rgb (RGB branch only), both (RGB and frequency branches), or rgb,both "
        "(default: rgb,both; rgb with teacher.kind=single)", kind="list", commands=("run",))
    seeds: tuple[int, ...] = _opt((0,), "--seeds", "comma list of seeds, e.g. 0,1,2",
                                  kind="ints")
    preset: str | None = _opt(
        None, "--preset", "quick: smoke size; cpu: 64 px; mobile: cpu with three edge students; "
        "paper: the paper's setting (default: paper on CUDA, cpu otherwise)",
        choices=PRESET_NAMES)
    results: Path = _opt(Path(DEFAULT_RESULTS), "--results", "result store folder (results/ is "
                         "the committed reference store, written only when named)", kind="path")
    registry: tuple[Path, ...] = _opt(
        (), "--registry", "extra registry YAML adding or overriding methods (repeatable)",
        kind="paths")
    settings: tuple[str, ...] = _opt(
        (), "--set", "override a setting, e.g. train.lr=3e-4, or a method's hyper-parameter as "
        "<method>.<name>=value (repeatable; typed like the default; `kdbench methods` lists "
        "them)", kind="repeat", metavar="KEY=VALUE",
        also=(("--tensorboard", "train.tensorboard=true", "a TensorBoard event file in each run "
               "folder (pip install 'kdbench[tb]'; then tensorboard --logdir RESULTS)"),))
    sweeps: tuple[str, ...] = _opt(
        (), "--sweep", "one run per value of a method hyper-parameter, as <name>=v1,v2 "
        "(repeatable: all combinations)", kind="repeat", metavar="KEY=V1,V2", commands=("run",))
    device: str | None = _opt(None, "--device", "cpu, cuda or cuda:N (default: cuda when there "
                              "is one)")
    restart: bool = _opt(
        False, "--restart", "discard the planned runs' progress and results (finished or not) "
        "and train them again; the teacher is kept (without it a run continues from its "
        "last.pt and a finished run is skipped)", kind="bool")
    keep_checkpoints: str = _opt(
        "all", "--keep-checkpoints", "checkpoints kept once a run is finished: all (best.pt and "
        "last.pt), best (best.pt, needed by `kdbench eval`) or none (also the plan's teacher "
        "cache once every run is finished)", choices=KEEP_CHECKPOINTS)
    progress: bool = _opt(True, "--no-progress", "no progress bars (they show on a terminal "
                          "only)", kind="bool")
    with_reports: bool = _opt(
        False, "--with-reports", "also the runs the registry's report tables need (as "
        "reproduce)", kind="bool", commands=("run",))
    compression: bool = _opt(
        False, "--compression", "then the compression plan on the vanilla runs: pruned "
        "(unstructured, structured) at 60-90 %, fine-tuned; structured 90 % with the distiller "
        "the registry names for it; each model "
        "and Table 3's three best distillers exported and quantized; the compression table and "
        "the Pareto figure (pip install 'kdbench[compress]')", kind="bool",
        commands=("reproduce",))
    resolution: bool = _opt(
        False, "--resolution", "then the students of the teacher-free method and Table 3's "
        "three best distillers at 32 and 48 px from the data-size teacher (student.size) and "
        "the resolution table", kind="bool", commands=("reproduce",))
    threads: int | None = _opt(
        None, "--threads", "CPU threads of each run: a number, or auto (the default: the usable "
        "cores divided among the kdbench processes working on this machine, fixed when the run "
        "starts)",
        kind="threads")
    only: str | None = _opt(
        None, "--only", "just this run of the plan (<student>/<label>/<mode>/seed<k>, as "
        "--launcher print lists them), or teacher", metavar="RUN", commands=("run",))
    cross_dataset: str | None = _opt(
        None, "--cross-dataset", "also test each student on this dataset's test split as its "
        "run finishes (Table 7), e.g. synthetic_c23; auto: synthetic_c23 after synthetic, none "
        "after a real dataset; none: skip", metavar="DATASET")
    cross_data_root: Path | None = _opt(None, "--cross-data-root", "prepared folder of the cross "
                                        "dataset", kind="path")
    train_generators: tuple[str, ...] = _opt(
        (), "--train-generators", "comma list of the generators whose fakes train and validate "
        "(with their reals; default: all), as the dataset's manifest names them; the same as "
        "--set data.train_generators=A,B", kind="list")
    test_generators: tuple[str, ...] = _opt(
        (), "--test-generators", "comma list of the generators whose fakes are tested (default: "
        "all; the tables also slice the test split by generator)", kind="list")
    protocol: str | None = _opt(
        None, "--protocol", "a generator protocol: logo (one training set per generator, "
        "leaving it out) or one-to-all (train on the dataset's source generator, or on "
        "--train-generators); then `kdbench table --kind generators`", choices=PROTOCOLS,
        commands=("reproduce",))
    lock_dir: Path | None = _opt(
        None, "--lock-dir", "folder on a local disk for the run locks, when the result store's "
        f"file system has no file locks (default: ${LOCK_DIR_ENV}, else beside each run)",
        kind="path")
    launcher: str = _opt(
        "inprocess", "--launcher", "inprocess: the runs one after the other here; print: one "
        "command per run, teacher first; local: worker processes on this machine; slurm: "
        "submitit jobs", choices=LAUNCHERS, group="launchers")
    workers: int | None = _opt(
        None, "--workers", "local: worker processes (default: one per GPU of --gpus, or of a "
        "CUDA plan; else the usable cores up to 8, each with its share of the threads)", kind="int",
        group="launchers")
    gpus: tuple[str, ...] = _opt((), "--gpus", "local: comma list of GPU ids, one worker each "
                                 "in turn (CUDA_VISIBLE_DEVICES)", kind="list", group="launchers")
    slurm_partition: str | None = _opt(None, "--slurm-partition", "slurm: the partition",
                                       group="launchers")
    slurm_gpus_per_job: int = _opt(1, "--slurm-gpus-per-job", "slurm: GPUs per job", kind="int",
                                   low=0, group="launchers")
    slurm_time: int = _opt(24 * 60, "--slurm-time", "slurm: time limit per job in minutes; a "
                           "job that reaches it is requeued and continues from its last.pt",
                           kind="int", metavar="MINUTES", group="launchers")
    slurm_max_parallel: int = _opt(16, "--slurm-max-parallel", "slurm: runs of the job array at "
                                   "once", kind="int", group="launchers")
    slurm_folder: Path | None = _opt(None, "--slurm-folder", "slurm: submitit's folder of job "
                                     "scripts and logs (default: <results>/slurm)", kind="path",
                                     group="launchers")
    slurm_cpus_per_job: int | None = _opt(None, "--slurm-cpus-per-job", "slurm: CPUs per job "
                                          "(default: the cluster's)", kind="int",
                                          group="launchers")
    slurm_cluster: str = _opt("slurm", "--slurm-cluster", "slurm: local or debug runs the same "
                              "submitit jobs on this machine", choices=SLURM_CLUSTERS,
                              group="launchers")
    command: str | None = _opt(None, None, "the command line recorded in reproduce.jsonl")

    # ------------------------------------------------------------------ building one

    @classmethod
    def make(cls, command: str = "run", /, **given: Any) -> RunRequest:
        """The request of ``command`` (run or reproduce) from keyword arguments (CLI strings or
        Python values; None means the default); an unknown or ill-typed option is a one-line
        error."""
        known = {f.name: f for f in fields(cls)}
        slurm = given.pop("slurm", None)  # the API's older slurm={...} / SlurmOptions form
        if slurm:
            items = vars(slurm) if not isinstance(slurm, Mapping) else slurm
            renames = {"time_min": "time", "gpus_per_job": "gpus_per_job"}
            for k, v in dict(items).items():
                if v is not None:
                    given.setdefault(f"slurm_{renames.get(k, k)}", v)
        values: dict[str, Any] = {}
        for name, value in given.items():
            if name not in known:
                raise KdbenchError(f"unknown option {name!r}{did_you_mean(name, known)}; the "
                                   "options are the fields of kdbench.request.RunRequest")
            opt = _opt_meta(known[name])
            if command not in opt.commands and opt.flag is not None and value is not None:
                raise KdbenchError(f"{opt.flag} is not an option of kdbench {command}")
            if value is not None:
                values[name] = _normalise(name, opt, value)
            elif name == "cross_dataset" and command == "reproduce":
                values[name] = "none"  # the API's cross_dataset=None: no cross test
        for name, value in COMMAND_DEFAULTS.get(command, {}).items():
            values.setdefault(name, value)
        values.setdefault("results", _path(DEFAULT_RESULTS))  # jobs start in other folders
        return cls(**values)

    def lock_folder(self) -> Path | None:
        """``lock_dir``, else ``$KDBENCH_LOCK_DIR``, else None (locks beside the runs)."""
        if self.lock_dir is not None:
            return self.lock_dir
        env = os.environ.get(LOCK_DIR_ENV)
        return Path(env).expanduser().resolve() if env else None

    def job(self, only: str) -> RunRequest:
        """The request of one job of this (resolved) plan: ``only`` that run, in process."""
        launch = {f.name: f.default for f in fields(self)
                  if _opt_meta(f).group == "launchers"}
        return replace(self, only=only, restart=False, command=None, **launch)

    # ------------------------------------------------------------------ writing one

    def to_argv(self, command: str = "run") -> list[str]:
        """``kdbench <command>`` arguments for this request: every option of ``command`` whose
        value is not that command's default (``--only`` last)."""
        out = [command]
        defaults = COMMAND_DEFAULTS.get(command, {})
        for f in sorted(fields(self), key=lambda f: f.name == "only"):
            opt, value = _opt_meta(f), getattr(self, f.name)
            if opt.flag is None or command not in opt.commands \
                    or value == defaults.get(f.name, f.default):
                continue
            if opt.kind == "bool":
                out.append(opt.flag)  # --no-progress for progress=False
            elif opt.kind in ("repeat", "paths"):
                for item in value:
                    out += [opt.flag, str(item)]
            elif opt.kind in ("list", "ints"):
                out += [opt.flag, ",".join(map(str, value))]
            else:
                out += [opt.flag, str(value)]
        return out

    def to_json(self) -> str:
        """The request as one JSON object (paths as strings, lists for tuples)."""
        def plain(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            return v
        return json.dumps({f.name: plain(getattr(self, f.name)) for f in fields(self)},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunRequest:
        """The request :meth:`to_json` wrote."""
        data = json.loads(text)
        return cls(**{f.name: _normalise(f.name, _opt_meta(f), data[f.name])
                      if data.get(f.name) is not None else None
                      for f in fields(cls) if f.name in data})


# ---------------------------------------------------------------------- normalisation


def _path(value: Any) -> Path:
    return Path(value).expanduser().resolve()


def _setting(key: str, value: Any) -> str:
    """One ``key=value`` item of a settings mapping (a path or another object as its text)."""
    if isinstance(value, str):
        return f"{key}={value}"
    if not isinstance(value, (int, float, bool, list, dict)) and value is not None:
        return f"{key}={value}"
    return f"{key}={json.dumps(value)}"


def _sweep(key: str, value: Any) -> str:
    """One ``key=v1,v2`` item of a sweeps mapping (a scalar is one value)."""
    if isinstance(value, str):
        return f"{key}={value}"
    if isinstance(value, (list, tuple)):
        return f"{key}={','.join(map(str, value))}"
    return f"{key}={value}"


def _whole(name: str, value: Any, low: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise KdbenchError(f"{name}={value!r}; give a whole number >= {low}")
    return value


def _normalise(name: str, opt: Option, value: Any) -> Any:
    """One field's value in its canonical type (tuples, absolute paths, ints)."""
    kind = opt.kind
    if kind == "list":
        out: Any = tuple(comma_list(value))
    elif kind == "ints":
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        try:
            out = tuple(int(s) for s in comma_list(value))
        except ValueError:
            raise KdbenchError(f"{name} must be integers like 0,1,2, got {value!r}") from None
        if not out:
            raise KdbenchError(f"give at least one of {name}, e.g. 0 or 0,1,2")
    elif kind == "path":
        out = _path(value)
    elif kind == "paths":
        out = tuple(_path(p) for p in ([value] if isinstance(value, (str, os.PathLike))
                                       else value))
    elif kind == "repeat":
        if isinstance(value, Mapping):
            make = _setting if name == "settings" else _sweep
            out = tuple(make(str(k), v) for k, v in value.items())
        else:
            out = tuple(str(v) for v in ([value] if isinstance(value, str) else value))
    elif kind == "bool":
        if not isinstance(value, bool):
            raise KdbenchError(f"{name}={value!r}; give True or False")
        out = value
    elif kind == "int":
        out = _whole(name, value, opt.low)
    elif kind == "threads":
        if isinstance(value, str) and value != "auto" and not value.isdigit():
            raise KdbenchError(f"threads={value!r}; give a whole number >= 1, or auto for this "
                               "process's share of the cores")
        out = None if value == "auto" else _whole("threads", value, 1)
    else:
        out = str(value)
    if opt.choices and out not in opt.choices:
        flag = opt.flag or name
        raise KdbenchError(f"{flag} {out!r}{did_you_mean(out, opt.choices)}; use one of "
                           + ", ".join(opt.choices))
    return out


# ---------------------------------------------------------------------- argparse


def _display(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def add_arguments(parser: argparse.ArgumentParser, command: str,
                  int_type: Callable[[int], Callable[[str], int]]) -> None:
    """The options of ``command`` on ``parser``, one per request field (its help, choices and
    default from the field); every default is None, so :meth:`RunRequest.make` fills it."""
    groups: dict[str | None, Any] = {
        None: parser, "launchers": parser.add_argument_group(
            "launchers (docs: Running at scale)")}
    for f in fields(RunRequest):
        opt = _opt_meta(f)
        if opt.flag is None or command not in opt.commands:
            continue
        default = COMMAND_DEFAULTS.get(command, {}).get(f.name, f.default)
        help_text = opt.help
        if opt.kind != "bool" and default not in (None, ()) and "default" not in help_text:
            help_text += f" (default: {_display(default)})"
        kw: dict[str, Any] = {"dest": f.name, "default": None,
                              "help": help_text.replace("%", "%%")}  # argparse formats help
        if opt.kind == "bool":
            kw["action"] = "store_const"
            kw["const"] = f.name != "progress"  # --no-progress stores False
        elif opt.kind in ("repeat", "paths"):
            kw["action"] = "append"
        if opt.choices and opt.kind != "bool":
            kw["choices"] = opt.choices
        if opt.kind == "int":
            kw["type"] = int_type(opt.low)
        elif opt.kind == "threads":
            kw["type"] = _threads_type(int_type(1))
        if opt.metavar:
            kw["metavar"] = opt.metavar
        groups[opt.group].add_argument(opt.flag, **kw)
        for flag, const, text in opt.also:
            groups[opt.group].add_argument(flag, action="append_const", dest=f.name,
                                           const=const, help=text)


def _threads_type(whole: Callable[[str], int]) -> Callable[[str], int | str]:
    def parse(text: str) -> int | str:
        return "auto" if text == "auto" else whole(text)
    parse.__name__ = "auto or an integer >= 1"
    return parse


def request_options(namespace: argparse.Namespace) -> dict[str, Any]:
    """The request fields an argparse namespace gives (those left out are None)."""
    names = {f.name for f in fields(RunRequest) if _opt_meta(f).flag is not None}
    return {k: v for k, v in vars(namespace).items() if k in names and v is not None}
