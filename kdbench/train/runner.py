"""Runs the suite: the teacher once per (dataset, teacher config), then each student run."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdbench import distributed
from kdbench.config import (
    OUTPUT_SETTINGS,
    PARALLEL_SETTINGS,
    SPEED_SETTINGS,
    RunSpec,
    check_device_name,
    config_hash,
    without_added_defaults,
)
from kdbench.data.datasets import PreparedData
from kdbench.data.generators import video_generators
from kdbench.data.loader import FrameSplit
from kdbench.errors import KdbenchError
from kdbench.files import atomic_write_json, read_json, store_time, utc_now
from kdbench.models.cost import count_params, gflops
from kdbench.models.degrade import degraded
from kdbench.models.students import create_student
from kdbench.models.teacher_build import Teacher
from kdbench.provenance import versions
from kdbench.registry import MethodEntry
from kdbench.train.evaluate import CROSS_DIR, evaluate_run
from kdbench.train.predictions import PREDICTIONS, save_predictions
from kdbench.train.store import claim
from kdbench.train.teacher_cache import cache_key
from kdbench.train.trainer import Trainer, seed_everything

log = logging.getLogger(__name__)


def pick_device(name: str | None) -> torch.device:
    """``cuda`` when available unless ``name`` says otherwise (cpu, cuda, cuda:N)."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_name(name)
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise KdbenchError(f"--device {name} asked for but no CUDA device is visible; use "
                               "--device cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise KdbenchError(f"--device {name}: this machine has {torch.cuda.device_count()} "
                               "CUDA device(s), numbered from 0")
    return torch.device(name)


CODE_ROOT = Path(__file__).resolve().parents[2]  # the checkout, for an editable install


def git_commit() -> str | None:
    """The commit of the kdbench checkout this code runs from (None for an installed wheel)."""
    if not (CODE_ROOT / ".git").exists() or not (CODE_ROOT / "kdbench").is_dir():
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CODE_ROOT, capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=CODE_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


@dataclass
class Context:
    """What every run of one `kdbench run` invocation shares."""

    data: PreparedData
    dataset: str
    config: dict[str, Any]
    results: Path
    device: torch.device
    restart: bool = False  # discard the progress of the planned runs made before this start
    progress: bool = True
    _splits: dict[str, FrameSplit] | None = None
    commit: str | None = field(default_factory=git_commit)  # the code the runs start with
    started: float = 0.0  # when this invocation started, by the store's clock (--restart)
    keep_checkpoints: str = "all"  # all | best (drop last.pt) | none, once a run is finished
    teacher_sha256: str | None = None  # of the teacher's best.pt, once it is loaded
    teacher_fields: set[str] = field(default_factory=set)  # what the plan's runs read
    # (dataset, data root): test each finished student there too (Table 7), while its best.pt
    # is here, so the result outlives checkpoints that are pruned or never committed
    cross: tuple[str, Path | None] | None = None
    _cross_data: PreparedData | None = None
    # after each epoch of a student run: (epochs left in it, seconds of the epoch)
    on_epoch: Callable[[int, float], None] | None = None

    def __post_init__(self) -> None:
        self.started = store_time(self.results)

    @property
    def splits(self) -> dict[str, FrameSplit]:
        if self._splits is None:
            self._splits = {s: FrameSplit(self.data.frames, self.data.split(s))
                            for s in ("train", "val", "test")}
        return self._splits

    def teacher_cache_dir(self) -> Path | None:
        """Where the shared cache of the loaded teacher's outputs lives (None before)."""
        if self.teacher_sha256 is None:
            return None
        from kdbench.train.teachers import teacher_dir

        key = cache_key(self.teacher_sha256, config_hash(self.data.meta, 16),
                        self.splits["train"], self.config["data"]["size"])
        return teacher_dir(self) / "cache" / key

    def cross_data(self) -> PreparedData:
        """The test split of the cross dataset, opened on first use (an error names it)."""
        if self._cross_data is None:
            from kdbench.data.datasets import open_dataset

            assert self.cross is not None
            try:
                self._cross_data = open_dataset(
                    self.cross[0], self.cross[1], self.config["data"]["size"],
                    self.config["data"]["frames"], progress=self.progress, require=("test",))
            except KdbenchError as exc:
                raise type(exc)(f"--cross-dataset {self.cross[0]}: {exc}") from None
        return self._cross_data

    def trainer(self, learner, run_dir: Path, seed: int, label: str) -> Trainer:
        trainer = Trainer(learner, self.splits, self.config["train"],
                          self.config["data"]["size"], run_dir, self.device, seed, label,
                          self.config["data"]["workers"], self.progress,
                          self.teacher_cache_dir(), self.teacher_fields)
        trainer.on_epoch = self.on_epoch
        return trainer


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run."""
    return finished_metrics(run_dir) is not None


def finished_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The metrics of the finished run in ``run_dir`` (None if it is not finished)."""
    path = run_dir / "metrics.json"
    if path.is_file():
        metrics = read_json(path)  # a damaged file stops the plan with a one-line error
        if metrics.get("status") == "finished":
            return metrics
    return None


RUN_FILE = "run.json"  # the settings an unfinished run was started with
NOT_RESULT_SETTINGS = SPEED_SETTINGS | PARALLEL_SETTINGS | OUTPUT_SETTINGS


def comparable_config(config: dict[str, Any], teacher: bool = True) -> dict[str, Any]:
    """The settings that decide a run's result (not :data:`kdbench.config.SPEED_SETTINGS`
    nor :data:`~kdbench.config.PARALLEL_SETTINGS`; without ``teacher`` the teacher's settings
    neither, for a run that distils from none)."""
    return {sec: without_added_defaults(sec, {k: v for k, v in config[sec].items()
                                              if k not in NOT_RESULT_SETTINGS})
            for sec in ("data", "train", "teacher", "student") if teacher or sec != "teacher"}


def _identity(ctx: Context, spec: RunSpec, ignored: set[str]) -> dict[str, Any]:
    return {"config": comparable_config(ctx.config, spec.mode != "none"),
            "hparams": {k: v for k, v in spec.hparams.items() if k not in ignored}}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = []
    for sec in sorted(set(old["config"]) | set(new["config"])):
        a, b = old["config"].get(sec, {}), new["config"].get(sec, {})
        diffs += [f"{sec}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                  if a.get(k) != b.get(k)]
    a, b = old["hparams"], new["hparams"]
    diffs += [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
              if a.get(k) != b.get(k)]
    return diffs


def _check_same_run(run_dir: Path, old: dict[str, Any], new: dict[str, Any], what: str) -> None:
    """A run folder must hold the run asked for; say so instead of reusing another."""
    diffs = _differences(old, new)
    if diffs:
        raise KdbenchError(
            f"{run_dir} holds {what} with other settings ({diffs[0]}); use another --results "
            "folder, or --restart to discard it"
        )


# + *.jsonl traces, cross/
RUN_STATE = ("last.pt", "best.pt", "metrics.json", RUN_FILE, PREDICTIONS)


def progress_of(run_dir: Path) -> str | None:
    """What ``run_dir`` holds, in words (None if nothing): a finished run or its last epoch."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        try:
            m = read_json(metrics)
            return f"a finished run (test acc {m['test']['acc']:.4f})"
        except (KdbenchError, KeyError, TypeError):
            return "a damaged metrics.json"
    history = run_dir / "history.jsonl"
    if (run_dir / "last.pt").is_file():
        lines = history.read_text().splitlines() if history.is_file() else []
        return f"an unfinished run at epoch {sum(1 for line in lines if line.strip())}"
    return None


def _discard(run_dir: Path, started: float) -> str | None:
    """``--restart``: delete the progress ``run_dir`` held before this invocation ``started``
    (progress another process made since is kept); returns what was discarded."""
    held = progress_of(run_dir)
    stamps = [(run_dir / n).stat().st_mtime for n in RUN_STATE if (run_dir / n).is_file()]
    if held is None or not stamps or max(stamps) >= started:
        return None
    clear_run(run_dir)
    return held


def clear_run(run_dir: Path) -> None:
    """Delete a run's checkpoints, metrics, settings, traces and cross-dataset tests."""
    for name in RUN_STATE:
        (run_dir / name).unlink(missing_ok=True)
    for trace in run_dir.glob("*.jsonl"):  # history and the method's traces
        trace.unlink()
    shutil.rmtree(run_dir / "cross", ignore_errors=True)


def _generators(index: Any) -> dict[str, Any]:
    """``{"generators": {split: [the generators of its fakes]}}`` where the data names them."""
    if "generator" not in index:
        return {}
    fakes = index[index["label"] == 1]
    return {"generators": {s: sorted(fakes.loc[fakes["split"] == s, "generator"].astype(str)
                                     .unique()) for s in ("train", "test")}}


def record_run(ctx: Context, run_dir: Path, result: dict[str, Any], model: torch.nn.Module,
               extra: dict[str, Any]) -> dict[str, Any]:
    """Write a finished run's metrics.json (and its test predictions); returns the metrics."""
    result = dict(result)
    result.pop("history")
    test = result.pop("predictions", None)
    if test is not None:  # per-frame test predictions (paired comparisons of runs)
        save_predictions(run_dir / PREDICTIONS, test.prob, test.label, test.video,
                         video_generators(ctx.data.index, test.video))
    metrics = {
        "status": "finished", **extra, "dataset": ctx.dataset, "preset": ctx.config["preset"],
        "config": ctx.config, "versions": versions(), "git_commit": ctx.commit,
        "device": str(ctx.device), **result, "params": count_params(model),
        # how the frames were cut from the videos (kdbench predict does it the same way)
        "prepared": {k: ctx.data.meta.get(k) for k in ("detector", "size", "frames",
                                                       "reencode")},
        "gflops": gflops(model, ctx.config["data"]["size"]), "finished_at": utc_now(),
        **_generators(ctx.data.index),
    }
    atomic_write_json(run_dir / "metrics.json", metrics)  # rank 0's call (distributed.on_main)
    return metrics


def log_done(name: str, m: dict[str, Any]) -> None:
    """Log a finished run's test metrics, best epoch and wall time."""
    t = m["test"]
    log.info(
   f"done {name}: test acc {t['acc']:.4f} auc {t['auc']:.4f} eer {t['eer']:.4f} "
   f"video-auc {t['video_auc']:.4f} (best epoch {m['best_epoch']}, {m['wall_time_s']:.0f} s)"
    )


def run_one(ctx: Context, spec: RunSpec, entry: MethodEntry,
            teacher: Teacher | None) -> tuple[str, dict[str, Any] | None]:
    """Train one student with one method, mode and seed unless that run is finished; returns
    ("trained" | "finished" | "busy", its metrics), "busy" (no metrics) when another process
    is training it."""
    run_dir = ctx.results / spec.relpath
    from kdbench.plan import run_name

    name = run_name(spec)
    ignored = entry.resolve().ignored_hparams(spec.mode)
    identity = _identity(ctx, spec, ignored)
    # under torchrun rank 0 decides (files, lock) and every rank follows
    done = None if ctx.restart else distributed.on_main(
        lambda: _finished_as(ctx, run_dir, spec, entry, ignored, identity))
    if done is not None:
        log.info(f"skip {name}: finished (test acc {done['test']['acc']:.4f})")
        with claim(run_dir) as mine:  # not while another process tests or prunes it
            if mine:
                cross_test(ctx, run_dir, name)
                _prune(ctx, run_dir)
        return "finished", done
    with claim(run_dir) as mine:
        if not mine:
            log.info(f"skip {name}: another kdbench process is training it")
            return "busy", None
        if ctx.restart:
            discarded = distributed.on_main(lambda: _discard(run_dir, ctx.started))
            if discarded:
                log.info(f"restart {name}: discarded {discarded} in {run_dir}")
        done = distributed.on_main(
            lambda: _finished_as(ctx, run_dir, spec, entry, ignored, identity))
        if done is not None:  # finished by another process meanwhile
            log.info(f"skip {name}: finished by another process")
            return "finished", done
        return "trained", _train_one(ctx, spec, entry, teacher, run_dir, name, identity)


def recorded_hparams(entry: MethodEntry, spec: RunSpec, recorded: dict[str, Any],
                     ignored: set[str]) -> dict[str, Any]:
    """A stored run's hyper-parameters as this registry names them: one added to the registry
    later is taken to have had its default, or the value the entry's ``legacy`` names (a later
    default other than the old behaviour); the ones ``ignored`` in its mode are left out."""
    current = {**entry.hparams(spec.dataset), **entry.legacy}
    return {k: v for k, v in {**current, **recorded}.items() if k not in ignored}


def _finished_as(ctx: Context, run_dir: Path, spec: RunSpec, entry: MethodEntry,
                 ignored: set[str], identity: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics of the finished run in ``run_dir`` (None if unfinished); an error if it was
    made with other settings than ``identity``."""
    done = finished_metrics(run_dir)
    if done is not None:
        recorded = {"config": comparable_config(done.get("config", ctx.config),
                                                spec.mode != "none"),
                    "hparams": recorded_hparams(entry, spec, done.get("hparams", {}), ignored)}
        _check_same_run(run_dir, recorded, identity, "a finished run")
    return done


def _train_one(ctx: Context, spec: RunSpec, entry: MethodEntry,
               teacher: Teacher | None, run_dir: Path, name: str,
               identity: dict[str, Any]) -> dict[str, Any]:
    from kdbench.train.teachers import teacher_dir, teacher_test

    if spec.mode != "none" and teacher is None:
        raise KdbenchError(f"{name} needs the teacher, but none was loaded; run again")
    started = run_dir / RUN_FILE
    if (run_dir / "last.pt").is_file():  # an interrupted run continues where it stopped
        if not started.is_file():
            raise KdbenchError(f"{run_dir} holds a last.pt without its {RUN_FILE} (settings "
                               "unknown); pass --restart to discard it")
        begun = read_json(started)
        if spec.mode == "none":  # kdbench 0.3 kept the teacher's settings of any run
            begun.get("config", {}).pop("teacher", None)
        begun["hparams"] = recorded_hparams(entry, spec, begun.get("hparams", {}),
                                            entry.resolve().ignored_hparams(spec.mode))
        _check_same_run(run_dir, begun, identity, "an unfinished run")
        log.info(f"continue {name}: {progress_of(run_dir)} (--restart discards it)")
    elif distributed.is_main():
        atomic_write_json(started, identity)
    cls = entry.resolve()
    seed_everything(spec.seed)
    student = degraded(create_student(spec.student, ctx.config["student"]["pretrained"]),
                       ctx.config)  # a smaller or degraded input: the student reads it
    distiller = cls(student, teacher if spec.mode != "none" else None, spec.mode, **spec.hparams)
    result = ctx.trainer(distiller, run_dir, spec.seed, name).fit(resume=True)
    metrics = distributed.on_main(lambda: record_run(ctx, run_dir, result, student, {
        "role": "student", "student": spec.student, "method": spec.method,
        "variant": spec.variant, "mode": spec.mode, "seed": spec.seed, "hparams": spec.hparams,
        "entry": entry.entry, "teacher": str(teacher_dir(ctx)) if teacher is not None else None,
        "teacher_test": teacher_test(ctx) if teacher is not None else None,
        "teacher_sha256": ctx.teacher_sha256 if teacher is not None else None,
        "run_info": dict(getattr(distiller, "run_info", {})),
    }))
    log_done(name, metrics)
    cross_test(ctx, run_dir, name)
    _prune(ctx, run_dir)
    return metrics


def cross_test(ctx: Context, run_dir: Path, name: str) -> None:
    """``ctx.cross``: test the finished student in ``run_dir`` on that dataset's test split
    (``<run>/cross/<dataset>.json``, Table 7) unless it was tested there already; says so when
    it has no best.pt left to test. Rank 0 tests, every rank waits for it (and stops alike)."""
    if ctx.cross is not None:
        distributed.on_main(lambda: _cross_test(ctx, run_dir, name))


def _cross_test(ctx: Context, run_dir: Path, name: str) -> None:
    assert ctx.cross is not None
    dataset = ctx.cross[0]
    if (run_dir / CROSS_DIR / f"{dataset}.json").is_file():
        return
    if not (run_dir / "best.pt").is_file():
        log.warning(f"{name}: no best.pt left to test on {dataset}, so Table 7 lacks "
                    "it; train it again with --restart to test it")
        return
    t = evaluate_run(run_dir, ctx.cross_data(), dataset, ctx.device)["test"]
    log.info(f"{name}: on {dataset} acc {t['acc']:.4f} auc {t['auc']:.4f} eer {t['eer']:.4f} "
             f"video-auc {t['video_auc']:.4f}")


def _prune(ctx: Context, run_dir: Path) -> None:
    """``--keep-checkpoints``: drop a finished student run's last.pt (best) or both (none);
    the teacher keeps both (every later distillation run loads it)."""
    if not distributed.is_main():
        return
    drop = {"all": (), "best": ("last.pt",), "none": ("last.pt", "best.pt")}
    for ckpt in drop[ctx.keep_checkpoints]:
        (run_dir / ckpt).unlink(missing_ok=True)


