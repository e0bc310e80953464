"""The teacher of a plan: its folder, trained once per (dataset, teacher config) or loaded, and
the shared cache of the outputs the plan's runs read."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from kdbench import distributed
from kdbench.config import (
    OUTPUT_SETTINGS,
    PARALLEL_SETTINGS,
    SPEED_SETTINGS,
    RunSpec,
    config_hash,
    without_added_defaults,
)
from kdbench.models.students import create_student
from kdbench.models.teacher_build import Teacher, build_teacher
from kdbench.registry import MethodEntry
from kdbench.train.runner import (
    Context,
    clear_run,
    finished_metrics,
    log_done,
    progress_of,
    record_run,
)
from kdbench.train.store import claim, wait_for_lock
from kdbench.train.teacher_cache import file_sha256
from kdbench.train.teacher_task import TeacherTask
from kdbench.train.trainer import load_checkpoint, seed_everything

log = logging.getLogger(__name__)

# settings that cannot change a trained teacher (eval_batch_size stays in: kdbench 0.1 and 0.2
# named teacher folders with it, and renaming them would retrain every stored teacher)
NOT_TEACHER_SETTINGS = (SPEED_SETTINGS - {"eval_batch_size"}) | PARALLEL_SETTINGS | OUTPUT_SETTINGS


def teacher_folder(results: Path, dataset: str, cfg: dict[str, Any]) -> Path:
    """``<results>/teachers/<dataset>/<backbone>-<hash of the settings that shape it>``."""
    key = config_hash({"dataset": dataset, "data": without_added_defaults(
                           "data", {k: v for k, v in cfg["data"].items() if k != "workers"}),
                       "train": without_added_defaults(
                           "train", {k: v for k, v in cfg["train"].items()
                                     if k not in NOT_TEACHER_SETTINGS}),
                       "teacher": without_added_defaults("teacher", cfg["teacher"])})
    return Path(results) / "teachers" / dataset / f"{cfg['teacher']['backbone']}-{key}"


def teacher_dir(ctx: Context) -> Path:
    """The folder of ``ctx``'s teacher."""
    return teacher_folder(ctx.results, ctx.dataset, ctx.config)


def new_teacher(ctx: Context) -> Teacher:
    """The plan's teacher as built (seeded: the same initial weights every time), or loaded
    from ``teacher.checkpoint``; :func:`ensure_teacher` trains or loads it."""
    seed_everything(ctx.config["teacher"]["seed"])
    return build_teacher(ctx.config)


def ensure_teacher(ctx: Context, teacher: Teacher | None = None) -> Teacher:
    """Train the teacher for this dataset and config once (continuing an interrupted
    training); later calls load it; a ``teacher.checkpoint`` is tested once, never trained.
    Another process training it is waited for. ``teacher``: :func:`new_teacher`'s."""
    run_dir = teacher_dir(ctx)
    seed = ctx.config["teacher"]["seed"]
    teacher = new_teacher(ctx) if teacher is None else teacher
    teacher.requires_grad_(True)  # a distiller built with it (teacher_fields) froze it
    checkpoint = ctx.config["teacher"]["checkpoint"]
    while True:
        with claim(run_dir) as mine:
            if mine and checkpoint:
                return _test_loaded_teacher(ctx, run_dir, teacher, Path(checkpoint).expanduser())
            if mine:
                return _train_or_load_teacher(ctx, run_dir, teacher, seed)
        log.info(f"teacher: another kdbench process is training {run_dir}; waiting for it")
        with wait_for_lock(run_dir):  # each rank waits on the lock itself, then claims again
            pass


def teacher_fields(specs: list[tuple[RunSpec, MethodEntry]],
                   teacher: Teacher) -> set[str]:
    """The teacher fields the distillation runs of ``specs`` read (their union), so the
    shared cache computes them in one pass over the frames."""
    fields: set[str] = set()
    seen: set[str] = set()
    for spec, entry in specs:
        key = config_hash([spec.student, entry.name, spec.mode, spec.hparams])
        if spec.mode == "none" or key in seen:
            continue
        seen.add(key)
        student = create_student(spec.student)
        fields |= set(entry.resolve()(student, teacher, spec.mode, **spec.hparams)
                      .teacher_needs())
    return fields


def fill_teacher_cache(ctx: Context, teacher: Teacher) -> None:
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
        log.info(f"teacher cache: not built ({got.reason}); the runs use the live teacher")
    elif got.built:
        log.info(got.built_line(len(ctx.splits["train"]), folder))
    else:
        log.info(f"teacher cache: {', '.join(got.cache.fields)} already built ({folder})")


def _train_or_load_teacher(ctx: Context, run_dir: Path, teacher: Teacher,
                           seed: int) -> Teacher:
    # the weights a teacher retrained for a lost checkpoint must reproduce (students used them)
    recorded = distributed.on_main(lambda: (finished_metrics(run_dir) or {}).get("weights_sha256"))
    done = distributed.on_main(lambda: _finished_teacher(run_dir))
    if done is None:
        held = progress_of(run_dir)  # an interrupted teacher continues, as the students do
        log.info(f"continue teacher: {held} in {run_dir} (--restart does not discard a "
                 "teacher)" if held else f"teacher {run_dir}")
        task = TeacherTask(teacher)
        result = ctx.trainer(task, run_dir, seed, "teacher").fit(resume=True)
        done = distributed.on_main(lambda: record_run(
            ctx, run_dir, result, teacher,
            {"role": "teacher", "kind": teacher.kind, "backbone": teacher.name, "seed": seed,
             "weights_sha256": file_sha256(run_dir / "best.pt"),
             **({"recorded_sha256": recorded} if recorded else {})}))
        log_done("teacher", done)
        if recorded and recorded != done["weights_sha256"]:
            log.warning(f"teacher: the weights trained again differ from the recorded "
                        f"ones (sha256 {done['weights_sha256'][:12]} vs {recorded[:12]}); the "
                        "students distilled from the recorded teacher are marked † in the "
                        "tables")
    else:
        TeacherTask(teacher).load_state_dict(load_checkpoint(run_dir / "best.pt"))
        log.info(f"teacher: reusing {run_dir} (test acc {done['test']['acc']:.4f})")
    ctx.teacher_sha256 = file_sha256(run_dir / "best.pt")
    return teacher.to(ctx.device).eval()


def _test_loaded_teacher(ctx: Context, run_dir: Path, teacher: Teacher,
                         checkpoint: Path) -> Teacher:
    """A teacher loaded from a checkpoint: tested on the validation and test splits once (its
    metrics.json is the teacher row), never trained, and its file never written; the file's
    sha256 is its provenance."""
    sha = file_sha256(checkpoint)
    done = distributed.on_main(lambda: finished_metrics(run_dir))
    if done is None or done.get("weights_sha256") != sha:
        if done is not None:
            log.warning(f"teacher: {checkpoint} changed since it was tested (sha256 "
                        f"{done.get('weights_sha256', '')[:12]} -> {sha[:12]}); testing it again")
        log.info(f"teacher: testing the loaded {teacher.kind} {teacher.name} from {checkpoint}")
        result = ctx.trainer(TeacherTask(teacher), run_dir, 0, "teacher").test_only()
        done = distributed.on_main(lambda: record_run(
            ctx, run_dir, result, teacher,
            {"role": "teacher", "kind": teacher.kind, "backbone": teacher.name,
             "source": "checkpoint", "checkpoint": str(checkpoint), "weights_sha256": sha,
             "load_counts": getattr(teacher, "load_counts", None)}))
        log_done("teacher (loaded)", done)
    else:
        log.info(f"teacher: {checkpoint} (sha256 {sha[:12]}) tested before: test acc "
                 f"{done['test']['acc']:.4f}")
    ctx.teacher_sha256 = sha
    return teacher.to(ctx.device).eval()


def _finished_teacher(run_dir: Path) -> dict[str, Any] | None:
    """The finished teacher's metrics (None if it is to be trained); a committed result store
    keeps metrics but no checkpoints: that teacher is trained again (deterministically)."""
    done = finished_metrics(run_dir)
    if done is not None and not (run_dir / "best.pt").is_file():
        log.info(f"teacher: {run_dir} has metrics but no best.pt; training it again")
        clear_run(run_dir)
        return None
    return done


def teacher_test(ctx: Context) -> dict[str, Any] | None:
    """The test metrics of the teacher a run distilled from (it may be retrained later)."""
    done = finished_metrics(teacher_dir(ctx))
    return done["test"] if done else None

