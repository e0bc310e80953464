"""`kdbench diagnose`: do the RGB and frequency distillation terms of a both-mode distiller
conflict on this data? The trainer's gradcos trace (:class:`kdbench.train.branch_terms.
BranchCosine`: the cosine of their gradients at the student's last shared stage), measured in
a few hundred training steps from the teacher `kdbench run` trains or reuses."""

from __future__ import annotations

import logging
import math
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.config import DEFAULT_RESULTS, RunSpec, variant_tag
from kdbench.errors import KdbenchError
from kdbench.registry import MethodEntry, load_registry, select_methods

log = logging.getLogger(__name__)
WARMUP = 10  # the records of the first steps // WARMUP steps (10 %) are left out of the mean
PathLike = str | os.PathLike


@dataclass
class Diagnosis:
    """The gradient cosine of one method's two distillation terms, over a short training."""

    method: str  # label, e.g. "m" or "m@rotation=false"
    cos_mean: float  # mean over the records of the batch-mean cosine
    cos_std: float  # std over the records (ddof=1; nan for one record)
    records: int
    steps: int
    stage: int  # the stage the records were taken at (the most common one)
    norm_ratio: float  # mean |grad fre| / |grad rgb|
    seconds: float  # wall time of the measurement (not counting the teacher)
    student: str = ""

    def sentence(self) -> str:
        """What the cosine means for choosing a mode (rgb vs both), in one sentence."""
        spread = 0.0 if math.isnan(self.cos_std) else self.cos_std
        shown = (f"cos = {self.cos_mean:+.2f} (one record)" if math.isnan(self.cos_std)
                 else f"cos = {self.cos_mean:+.2f} ± {self.cos_std:.2f}")
        if self.cos_mean + spread < 0:
            return (f"{shown}: the RGB and frequency terms conflict on this data (their "
                    "gradients point against each other), so summing them in both mode fights "
                    "itself; a method that resolves the conflict (a rotation that homogenises "
                    "the gradients) or rgb mode is the better choice.")
        if self.cos_mean - spread > 0:
            return (f"{shown}: the RGB and frequency terms agree on this data (no conflict for "
                    "a rotation to resolve), so both mode adds the frequency teacher's signal "
                    "without fighting the RGB term.")
        return (f"{shown}: the RGB and frequency terms are near-orthogonal on average (they "
                "neither help nor fight much), so compare rgb and both runs directly.")


def diagnose(dataset: str = "synthetic", preset: str | None = None,
             methods: str | Sequence[str] | None = None, steps: int = 200, every: int = 5,
             results: PathLike = DEFAULT_RESULTS, data_root: PathLike | None = None,
             device: str | None = None, progress: bool = True,
             settings: Mapping[str, Any] | Sequence[str] | None = None,
             registry: PathLike | Sequence[PathLike] | None = None,
             student: str | None = None, threads: int | None = None) -> list[Diagnosis]:
    """One :class:`Diagnosis` per method: its both-mode distiller trained ``steps`` steps
    (seed 0; the preset's first student unless ``student``), the gradient cosine recorded
    every ``every`` steps. The records of the first 10 % of the steps (warm-up) are left out:
    ``records`` counts the ``s`` in ``range(0, steps, every)`` with ``s >= steps // 10``.

    ``methods``: registry names (or "all": those with a both mode); None: those whose entry
    declares ``reports: {diagnose: {mode: both, set: {...}}}``. A method that declares one runs
    with its ``set`` (``settings`` of ``<method>.<name>`` win over it). ``settings``,
    ``registry``, ``threads``: as for :func:`kdbench.api.run`. The teacher (and its output
    cache) is trained into ``<results>/teachers`` as `kdbench run` does, or reused; nothing else
    is written to the store. Bad input raises a one-line :class:`KdbenchError`."""
    from kdbench.plan import plan
    from kdbench.request import RunRequest

    kept = _kept_steps(steps, every)
    reg = load_registry(_paths(registry))
    names = _names(reg, methods)
    p = plan(RunRequest.make(
        "run", methods=names, dataset=dataset, preset=preset, data_root=data_root,
        results=results, device=device, progress=progress, settings=settings,
        registry=_paths(registry), students=[student] if student else None, modes=["both"],
        seeds=[0], threads=threads))
    return _measure(p, _specs(p, names), steps, every, kept)


def _paths(registry: PathLike | Sequence[PathLike] | None) -> list[Path]:
    one = isinstance(registry, (str, os.PathLike))
    return [Path(r) for r in ([registry] if one else registry or [])]


def _kept_steps(steps: int, every: int) -> set[int]:
    """The steps whose records count (one-line errors for too few)."""
    for name, n in (("steps", steps), ("every", every)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise KdbenchError(f"{name}={n!r}; give a whole number >= 1")
    kept = {s for s in range(0, steps, every) if s >= steps // WARMUP}
    if not kept:
        raise KdbenchError(f"{steps} steps with a record every {every} give no record after "
                           "the warm-up; give more steps or a smaller every")
    return kept


def _names(reg: dict[str, MethodEntry], methods: str | Sequence[str] | None) -> list[str]:
    """The methods to diagnose: named, "all" (those with a both mode) or the declared ones."""
    both = [e.name for e in reg.values() if "both" in e.modes]
    if methods is None:
        declared = [e.name for e in reg.values() if isinstance(e.reports.get("diagnose"), dict)]
        if not declared:
            raise KdbenchError("no registry method declares reports.diagnose; name the methods "
                               f"to diagnose with --methods (with a both mode: {', '.join(both)})")
        return declared
    spec = methods if isinstance(methods, str) else ",".join(methods)
    if spec.strip() == "all":
        return both
    entries = select_methods(reg, spec)
    for e in entries:
        if "both" not in e.modes:
            raise KdbenchError(f"method {e.name!r} has no both mode (modes: {', '.join(e.modes)})"
                               "; diagnose measures the two terms of a both-mode distiller: "
                               f"pick one of {', '.join(both)}")
    if not entries:
        raise KdbenchError("no method given; name registry methods with a both mode, or all")
    return [e.name for e in entries]


def _specs(p: Any, names: list[str]) -> list[tuple[RunSpec, MethodEntry]]:
    """Each method's both-mode run (seed 0, the plan's first student): its diagnose ``set``,
    then ``--set <method>.<name>``; the variant names what differs from the registry's."""
    r, out = p.request, []
    for name in names:
        entry, declared = p.registry[name], p.registry[name].reports.get("diagnose")
        change = dict(declared.get("set") or {}) if isinstance(declared, dict) else {}
        hp = entry.hparams(r.dataset, {**change, **p.overrides.get(name, {})})
        ignored = entry.resolve().ignored_hparams("both")
        tag = variant_tag({k: v for k, v in hp.items() if k not in ignored},
                          entry.hparams(r.dataset))
        out.append((RunSpec(r.dataset, r.students[0], name, "both", 0, hp, tag), entry))
    return out


def _measure(p: Any, specs: list[tuple[RunSpec, MethodEntry]], steps: int, every: int,
             kept: set[int]) -> list[Diagnosis]:
    """:func:`kdbench.train.inprocess.run_plan` up to the teacher, then each distiller."""
    from contextlib import ExitStack

    from kdbench.config import for_device
    from kdbench.data.datasets import open_configured
    from kdbench.threads import take_share
    from kdbench.train.runner import Context, pick_device
    from kdbench.train.store import check_locking, locks_in
    from kdbench.train.teachers import ensure_teacher, fill_teacher_cache, new_teacher
    from kdbench.train.teachers import teacher_fields as fields_of

    r = p.request
    with ExitStack() as stack:
        stack.enter_context(locks_in(r.lock_dir))
        check_locking(r.results)
        stack.enter_context(take_share(r.threads))
        device = pick_device(r.device)
        config = for_device(p.config, device.type)
        data = open_configured(r.dataset, r.data_root, config["data"], progress=r.progress)
        ctx = Context(data, r.dataset, config, r.results, device, progress=r.progress)
        t0 = time.perf_counter()
        teacher = new_teacher(ctx)
        ctx.teacher_fields = fields_of(specs, teacher)
        teacher = ensure_teacher(ctx, teacher)
        fill_teacher_cache(ctx, teacher)  # as `kdbench run`'s first run would: later ones reuse it
        log.info(f"diagnose: teacher ready in {time.perf_counter() - t0:.0f} s; "
                 f"{steps} steps of each of {len(specs)} method(s) on {r.students[0]}")
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="kdbench-diagnose-"))
        return [_one(ctx, teacher, spec, entry, steps, every, kept, Path(tmp))
                for spec, entry in specs]


def _one(ctx: Any, teacher: Any, spec: RunSpec, entry: MethodEntry, steps: int, every: int,
         kept: set[int], tmp: Path) -> Diagnosis:
    """``steps`` training steps of one distiller (as Trainer.fit's epochs take them)."""
    import torch

    from kdbench.models.students import create_student
    from kdbench.progress import progress_bar
    from kdbench.train.branch_terms import TRACE, BranchCosine
    from kdbench.train.trainer import optimizer_for, seed_everything

    t0, label = time.perf_counter(), spec.label
    seed_everything(spec.seed)
    student = create_student(spec.student, ctx.config["student"]["pretrained"])
    learner = entry.resolve()(student, teacher, "both", **spec.hparams)
    trainer = ctx.trainer(learner, tmp / label, spec.seed, f"diagnose {label}")
    cfg = trainer.cfg
    seed_everything(trainer.seed)  # as Trainer.fit
    trainer._prepare_models()
    params = [q for q in learner.trainable_modules().parameters() if q.requires_grad]
    opt, sched = optimizer_for(params, cfg)
    learner.on_fit_start(cfg, max(len(ctx.splits["train"]) // cfg["batch_size"], 1))
    trainer._attach_teacher_cache()
    trainer.branch_cos = cos = BranchCosine(learner, every)
    totals, step, epoch = [], 0, 0
    learner.train()
    try:
        with progress_bar(ctx.progress) as bar:
            task = bar.add_task(f"diagnose {label}", total=steps)
            while step < steps:
                cos.epoch = epoch + 1
                for b in trainer._batches("train", cfg["batch_size"], shuffle=True,
                                          epoch=epoch, lookup=trainer.lookup):
                    if trainer.live_targets is not None:
                        b.update(trainer.live_targets(b["image"]))
                    losses = trainer.train_step(b, opt, step)[1]
                    totals.append(sum(losses.values()).detach())
                    step += 1
                    bar.update(task, advance=1)
                    if step >= steps:
                        break
                sched.step()
                epoch += 1
    finally:
        cos.close()
    if not bool(torch.isfinite(torch.stack(totals)).all()):
        raise KdbenchError(f"diagnose {label}: the loss became NaN/inf; lower train.lr or the "
                           "method's loss weight with --set and run again")
    rows = [row for row in learner.traces.get(TRACE, []) if row["step"] in kept]
    if not rows:
        raise KdbenchError(f"diagnose {label}: no gradient cosine was recorded; the method "
                           "must name its both-mode terms loss_kd_rgb and loss_kd_freq")
    values = [float(row["cos"]) for row in rows]
    found = Diagnosis(
        label, statistics.fmean(values), statistics.stdev(values) if len(rows) > 1 else math.nan,
        len(rows), steps, Counter(int(row["stage"]) for row in rows).most_common(1)[0][0],
        statistics.fmean(float(row["norm_ratio"]) for row in rows), time.perf_counter() - t0,
        spec.student)
    log.info(f"diagnose {label} ({spec.student}, {found.records} records at stage "
             f"{found.stage}, {found.seconds:.0f} s): {found.sentence()}")
    if not 0 < found.norm_ratio < 1e6:  # e.g. a map normalised away at a tiny stage
        log.warning(f"diagnose {label}: one term's gradient vanishes at stage {found.stage} "
                    f"(|grad fre| / |grad rgb| = {found.norm_ratio:.3g}), so its cosine says "
                    "nothing; try a larger data.size or another method")
    return found
