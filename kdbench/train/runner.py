"""Runs the suite: the teacher once per (dataset, teacher config), then each student run."""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
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
)
from kdbench.data.datasets import PreparedData
from kdbench.data.loader import FrameSplit
from kdbench.errors import KdbenchError
from kdbench.files import atomic_write_json, read_json, store_time
from kdbench.models.cost import count_params, gflops
from kdbench.models.students import create_student
from kdbench.models.teacher import DualBranchTeacher
from kdbench.progress import console
from kdbench.registry import MethodEntry
from kdbench.train.evaluate import CROSS_DIR, evaluate_run
from kdbench.train.predictions import PREDICTIONS, save_predictions
from kdbench.train.store import claim, wait_for_lock
from kdbench.train.teacher_cache import cache_key, file_sha256
from kdbench.train.teacher_task import TeacherTask
from kdbench.train.trainer import Trainer, load_checkpoint, seed_everything


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


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    import timm

    import kdbench

    return {"kdbench": kdbench.__version__, "python": platform.python_version(),
            "torch": torch.__version__, "timm": timm.__version__,
            # CPU results depend on the thread count (the order of float reductions)
            "torch_threads": torch.get_num_threads()}


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
        return Trainer(learner, self.splits, self.config["train"], self.config["data"]["size"],
                       run_dir, self.device, seed, label, self.config["data"]["workers"],
                       self.progress, self.teacher_cache_dir(), self.teacher_fields)


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run."""
    return _finished(run_dir) is not None


def _finished(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.json"
    if path.is_file():
        metrics = read_json(path)  # a damaged file stops the plan with a one-line error
        if metrics.get("status") == "finished":
            return metrics
    return None


RUN_FILE = "run.json"  # the settings an unfinished run was started with
NOT_RESULT_SETTINGS = SPEED_SETTINGS | PARALLEL_SETTINGS | OUTPUT_SETTINGS


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide a run's result (not :data:`kdbench.config.SPEED_SETTINGS`
    nor :data:`~kdbench.config.PARALLEL_SETTINGS`)."""
    return {sec: {k: v for k, v in config[sec].items() if k not in NOT_RESULT_SETTINGS}
            for sec in ("data", "train", "teacher", "student")}


def _identity(ctx: Context, spec: RunSpec, ignored: set[str]) -> dict[str, Any]:
    return {"config": comparable_config(ctx.config),
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


def _progress(run_dir: Path) -> str | None:
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
    held = _progress(run_dir)
    stamps = [(run_dir / n).stat().st_mtime for n in RUN_STATE if (run_dir / n).is_file()]
    if held is None or not stamps or max(stamps) >= started:
        return None
    _clear(run_dir)
    return held


def _clear(run_dir: Path) -> None:
    """Delete a run's checkpoints, metrics, settings, traces and cross-dataset tests."""
    for name in RUN_STATE:
        (run_dir / name).unlink(missing_ok=True)
    for trace in run_dir.glob("*.jsonl"):  # history and the method's traces
        trace.unlink()
    shutil.rmtree(run_dir / "cross", ignore_errors=True)


def _record(ctx: Context, run_dir: Path, result: dict[str, Any], model: torch.nn.Module,
            extra: dict[str, Any]) -> dict[str, Any]:
    result = dict(result)
    result.pop("history")
    test = result.pop("predictions", None)
    if test is not None:  # per-frame test predictions (paired comparisons of runs)
        save_predictions(run_dir / PREDICTIONS, test.prob, test.label, test.video)
    metrics = {
        "status": "finished", **extra, "dataset": ctx.dataset, "preset": ctx.config["preset"],
        "config": ctx.config, "versions": versions(), "git_commit": ctx.commit,
        "device": str(ctx.device), **result, "params": count_params(model),
        # how the frames were cut from the videos (kdbench predict does it the same way)
        "prepared": {k: ctx.data.meta.get(k) for k in ("detector", "size", "frames")},
        "gflops": gflops(model, ctx.config["data"]["size"]), "finished_at": utc_now(),
    }
    atomic_write_json(run_dir / "metrics.json", metrics)  # rank 0's call (distributed.on_main)
    return metrics


# settings that cannot change a trained teacher (eval_batch_size stays in: kdbench 0.1 and 0.2
# named teacher folders with it, and renaming them would retrain every stored teacher)
NOT_TEACHER_SETTINGS = (SPEED_SETTINGS - {"eval_batch_size"}) | PARALLEL_SETTINGS | OUTPUT_SETTINGS


def teacher_dir(ctx: Context) -> Path:
    cfg = ctx.config
    key = config_hash({"dataset": ctx.dataset, "data": {k: v for k, v in cfg["data"].items()
                                                        if k != "workers"},
                       "train": {k: v for k, v in cfg["train"].items()
                                 if k not in NOT_TEACHER_SETTINGS},
                       "teacher": cfg["teacher"]})
    return ctx.results / "teachers" / ctx.dataset / f"{cfg['teacher']['backbone']}-{key}"


def build_teacher(cfg: dict[str, Any]) -> DualBranchTeacher:
    t = cfg["teacher"]
    return DualBranchTeacher(t["backbone"], t["proj_dim"], t["hp_cutoff"], t["pretrained"])


def ensure_teacher(ctx: Context) -> DualBranchTeacher:
    """Train the teacher for this dataset and config once (continuing an interrupted
    training); later calls load it. Another process training it is waited for."""
    run_dir = teacher_dir(ctx)
    seed = ctx.config["teacher"]["seed"]
    seed_everything(seed)
    teacher = build_teacher(ctx.config)
    while True:
        with claim(run_dir) as mine:
            if mine:
                return _train_or_load_teacher(ctx, run_dir, teacher, seed)
        console.print(f"teacher: another kdbench process is training {run_dir}; waiting for it")
        with wait_for_lock(run_dir):  # each rank waits on the lock itself, then claims again
            pass


def teacher_fields(specs: list[tuple[RunSpec, MethodEntry]],
                   teacher: DualBranchTeacher) -> set[str]:
    """The teacher fields the distillation runs of ``specs`` read (their union), so the
    shared cache computes them in one pass over the frames."""
    fields: set[str] = set()
    for spec, entry in specs:
        if spec.mode == "none":
            continue
        student = create_student(spec.student)
        fields |= set(entry.resolve()(student, teacher, spec.mode, **spec.hparams)
                      .teacher_needs())
    return fields


def fill_teacher_cache(ctx: Context, teacher: DualBranchTeacher) -> None:
    """Build the shared cache of ``ctx.teacher_fields`` now, as the first distillation run
    would (the teacher's job of a launcher does this on the whole machine)."""
    from kdbench.train import teacher_cache
    from kdbench.train.trainer import on_device

    cfg = ctx.config["train"]
    budget = int(float(cfg.get("teacher_cache_gb", 0)) * 2**30)
    folder = ctx.teacher_cache_dir()
    if not ctx.teacher_fields or folder is None or budget <= 0:
        return
    channels_last = on_device(cfg, "channels_last", ctx.device)
    teacher.to(ctx.device, **({"memory_format": torch.channels_last} if channels_last else {}))
    got = teacher_cache.ensure(teacher, set(ctx.teacher_fields), ctx.splits["train"],
                               ctx.config["data"]["size"], ctx.device, cfg["eval_batch_size"],
                               folder, budget, channels_last, ctx.progress)
    if got.cache is None:
        console.print(f"teacher cache: not built ({got.reason}); the runs use the live teacher",
                      highlight=False)
    elif got.built:
        console.print(f"teacher cache: built {', '.join(got.built)} for "
                      f"{len(ctx.splits['train'])} frames x 2 flips, "
                      f"{got.built_bytes / 2**20:.1f} MB in {got.build_s:.1f} s ({folder})",
                      highlight=False)
    else:
        console.print(f"teacher cache: {', '.join(got.cache.fields)} already built ({folder})",
                      highlight=False)


def _train_or_load_teacher(ctx: Context, run_dir: Path, teacher: DualBranchTeacher,
                           seed: int) -> DualBranchTeacher:
    # the weights a teacher retrained for a lost checkpoint must reproduce (students used them)
    recorded = distributed.on_main(lambda: (_finished(run_dir) or {}).get("weights_sha256"))
    done = distributed.on_main(lambda: _finished_teacher(run_dir))
    if done is None:
        console.print(f"[bold]teacher[/] {run_dir}", highlight=False)
        task = TeacherTask(teacher)
        result = ctx.trainer(task, run_dir, seed, "teacher").fit(resume=True)
        done = distributed.on_main(lambda: _record(
            ctx, run_dir, result, teacher,
            {"role": "teacher", "backbone": teacher.name, "seed": seed,
             "weights_sha256": file_sha256(run_dir / "best.pt"),
             **({"recorded_sha256": recorded} if recorded else {})}))
        _summary("teacher", done)
        if recorded and recorded != done["weights_sha256"]:
            console.print(f"[yellow]teacher: the weights trained again differ from the recorded "
                          f"ones (sha256 {done['weights_sha256'][:12]} vs {recorded[:12]}); the "
                          "students distilled from the recorded teacher are marked † in the "
                          "tables[/]", highlight=False)
    else:
        TeacherTask(teacher).load_state_dict(load_checkpoint(run_dir / "best.pt"))
        console.print(f"teacher: reusing {run_dir} (test acc {done['test']['acc']:.4f})")
    ctx.teacher_sha256 = file_sha256(run_dir / "best.pt")
    return teacher.to(ctx.device).eval()


def _finished_teacher(run_dir: Path) -> dict[str, Any] | None:
    """The finished teacher's metrics (None if it is to be trained); a committed result store
    keeps metrics but no checkpoints: that teacher is trained again (deterministically)."""
    done = _finished(run_dir)
    if done is not None and not (run_dir / "best.pt").is_file():
        console.print(f"teacher: {run_dir} has metrics but no best.pt; training it again")
        _clear(run_dir)
        return None
    return done


def _teacher_test(ctx: Context) -> dict[str, Any] | None:
    """The test metrics of the teacher a run distilled from (it may be retrained later)."""
    done = _finished(teacher_dir(ctx))
    return done["test"] if done else None


def _summary(name: str, m: dict[str, Any]) -> None:
    t = m["test"]
    console.print(
        f"[green]done[/] {name}: test acc {t['acc']:.4f} auc {t['auc']:.4f} eer {t['eer']:.4f} "
        f"video-auc {t['video_auc']:.4f} (best epoch {m['best_epoch']}, {m['wall_time_s']:.0f} s)"
    )


def run_one(ctx: Context, spec: RunSpec, entry: MethodEntry,
            teacher: DualBranchTeacher | None) -> tuple[str, dict[str, Any] | None]:
    """Train one student with one method, mode and seed unless that run is finished; returns
    ("trained" | "finished" | "busy", its metrics), "busy" (no metrics) when another process
    is training it."""
    run_dir = ctx.results / spec.relpath
    name = f"{spec.student}/{spec.label}/{spec.mode}/seed{spec.seed}"
    ignored = entry.resolve().ignored_hparams(spec.mode)
    identity = _identity(ctx, spec, ignored)
    # under torchrun rank 0 decides (files, lock) and every rank follows
    done = None if ctx.restart else distributed.on_main(
        lambda: _finished_as(ctx, run_dir, spec, entry, ignored, identity))
    if done is not None:
        console.print(f"skip {name}: finished (test acc {done['test']['acc']:.4f})")
        with claim(run_dir) as mine:  # not while another process tests or prunes it
            if mine:
                cross_test(ctx, run_dir, name)
                _prune(ctx, run_dir)
        return "finished", done
    with claim(run_dir) as mine:
        if not mine:
            console.print(f"skip {name}: another kdbench process is training it")
            return "busy", None
        if ctx.restart:
            discarded = distributed.on_main(lambda: _discard(run_dir, ctx.started))
            if discarded:
                console.print(f"restart {name}: discarded {discarded} in {run_dir}",
                              highlight=False)
        done = distributed.on_main(
            lambda: _finished_as(ctx, run_dir, spec, entry, ignored, identity))
        if done is not None:  # finished by another process meanwhile
            console.print(f"skip {name}: finished by another process")
            return "finished", done
        return "trained", _train_one(ctx, spec, entry, teacher, run_dir, name, identity)


def _finished_as(ctx: Context, run_dir: Path, spec: RunSpec, entry: MethodEntry,
                 ignored: set[str], identity: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics of the finished run in ``run_dir`` (None if unfinished); an error if it was
    made with other settings than ``identity``."""
    done = _finished(run_dir)
    if done is not None:
        # a hyper-parameter added to the registry later is taken to have had its default
        current = entry.hparams(spec.dataset)
        recorded = {"config": comparable_config(done.get("config", ctx.config)),
                    "hparams": {k: v for k, v in {**current, **done.get("hparams", {})}.items()
                                if k not in ignored}}
        _check_same_run(run_dir, recorded, identity, "a finished run")
    return done


def _train_one(ctx: Context, spec: RunSpec, entry: MethodEntry,
               teacher: DualBranchTeacher | None, run_dir: Path, name: str,
               identity: dict[str, Any]) -> dict[str, Any]:
    if spec.mode != "none" and teacher is None:
        raise KdbenchError(f"{name} needs the teacher, but none was loaded; run again")
    started = run_dir / RUN_FILE
    if (run_dir / "last.pt").is_file():  # an interrupted run continues where it stopped
        if not started.is_file():
            raise KdbenchError(f"{run_dir} holds a last.pt without its {RUN_FILE} (settings "
                               "unknown); pass --restart to discard it")
        _check_same_run(run_dir, read_json(started), identity, "an unfinished run")
        console.print(f"continue {name}: {_progress(run_dir)} (--restart discards it)",
                      highlight=False)
    elif distributed.is_main():
        atomic_write_json(started, identity)
    cls = entry.resolve()
    seed_everything(spec.seed)
    student = create_student(spec.student, ctx.config["student"]["pretrained"])
    distiller = cls(student, teacher if spec.mode != "none" else None, spec.mode, **spec.hparams)
    result = ctx.trainer(distiller, run_dir, spec.seed, name).fit(resume=True)
    metrics = distributed.on_main(lambda: _record(ctx, run_dir, result, student, {
        "role": "student", "student": spec.student, "method": spec.method,
        "variant": spec.variant, "mode": spec.mode, "seed": spec.seed, "hparams": spec.hparams,
        "entry": entry.entry, "teacher": str(teacher_dir(ctx)) if teacher is not None else None,
        "teacher_test": _teacher_test(ctx) if teacher is not None else None,
        "teacher_sha256": ctx.teacher_sha256 if teacher is not None else None,
        "run_info": dict(getattr(distiller, "run_info", {})),
    }))
    _summary(name, metrics)
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
        console.print(f"[yellow]{name}: no best.pt left to test on {dataset}, so Table 7 lacks "
                      "it; train it again with --restart to test it[/]", highlight=False)
        return
    t = evaluate_run(run_dir, ctx.cross_data(), dataset, ctx.device)["test"]
    console.print(f"{name}: on {dataset} acc {t['acc']:.4f} auc {t['auc']:.4f} eer {t['eer']:.4f} "
                  f"video-auc {t['video_auc']:.4f}", highlight=False)


def _prune(ctx: Context, run_dir: Path) -> None:
    """``--keep-checkpoints``: drop a finished student run's last.pt (best) or both (none);
    the teacher keeps both (every later distillation run loads it)."""
    if not distributed.is_main():
        return
    drop = {"all": (), "best": ("last.pt",), "none": ("last.pt", "best.pt")}
    for ckpt in drop[ctx.keep_checkpoints]:
        (run_dir / ckpt).unlink(missing_ok=True)


