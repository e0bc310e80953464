"""A compressed child run: a finished student run's model pruned (unstructured masks or
structured channels), its BatchNorm statistics recalibrated, optionally fine-tuned with
cross-entropy or a registry distiller against the parent's teacher, then tested and recorded
in a run folder of its own that names its parent."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdbench.compress import structure_file, structured, teacher_model, unstructured
from kdbench.compress.settings import (
    LR_NOTE,
    STRUCTURE_FILE,
    Compression,
    child_dir,
    store_of,
    teacher_free,
)
from kdbench.data.datasets import open_configured
from kdbench.data.generators import video_generators
from kdbench.data.loader import FrameSplit, iterate, to_model_input
from kdbench.deploy.api import run_label
from kdbench.errors import KdbenchError
from kdbench.files import atomic_torch_save, atomic_write_json, read_json, utc_now
from kdbench.models.cost import count_params, gflops
from kdbench.provenance import versions
from kdbench.registry import MethodEntry
from kdbench.train.evaluate import load_student
from kdbench.train.predictions import PREDICTIONS, save_predictions
from kdbench.train.runner import git_commit, is_finished
from kdbench.train.store import claim, wait_for_lock
from kdbench.train.teacher_cache import file_sha256
from kdbench.train.trainer import Trainer, seed_everything

log = logging.getLogger(__name__)
BN_FRAMES = 1024  # training frames, evenly spaced over the split (no flips), BatchNorm sees


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).logits


def _recalibrate(student: nn.Module, train: FrameSplit, size: int, batch: int,
                 device: torch.device) -> int:
    """BatchNorm statistics re-estimated on :data:`BN_FRAMES` frames spread evenly over the
    whole training split (its order follows the preparation's: a prefix would be one class)."""
    from kdbench.deploy.measure import evenly, split_images

    picks = evenly(len(train), BN_FRAMES)
    batches = (split_images(train, picks[i:i + batch], size).to(device)
               for i in range(0, len(picks), batch))
    return unstructured.recalibrate_bn(student, batches)


def _finetune_config(config: dict[str, Any], epochs: int, device: torch.device
                     ) -> dict[str, Any]:
    """The parent's config with fine-tuning's epochs and learning rate (:data:`LR_NOTE`), its
    device-decided settings decided again for ``device``."""
    from kdbench.config import AUTO_SETTINGS, for_device

    config = copy.deepcopy(config)
    for key in AUTO_SETTINGS:  # the parent's were decided for its own device
        config["train"][key] = "auto"
    config = for_device(config, device.type)
    train = config["train"]
    train["lr"] = float(train["lr"]) * float(train.get("gamma", 0.1))
    train["epochs"] = epochs
    train["step_size"] = max(int(train.get("step_size", epochs)), epochs + 1)  # no decay
    return config


class _Work:
    """What one compression needs: the parent, its data, device and the teacher if asked."""

    def __init__(self, parent: Path, c: Compression, registry: dict[str, MethodEntry],
                 data_root: Path | None, device: torch.device, progress: bool) -> None:
        self.parent, self.c, self.registry = Path(parent), c, registry
        self.device, self.progress = device, progress
        self.results, _ = store_of(self.parent)
        recorded = read_json(self.parent / "metrics.json")
        self.of_teacher = recorded.get("role") == "teacher"
        if self.of_teacher:  # a single-branch teacher: its classifier is the detector
            self.student = teacher_model.load_teacher(self.parent, recorded)
            self.metrics = teacher_model.as_parent(recorded)
        else:
            self.student, self.metrics = load_student(self.parent)
        m = self.metrics
        self.config = _finetune_config(m["config"], c.finetune, device)
        self.size = int(m["config"]["data"]["size"])
        data = open_configured(m["dataset"], data_root, m["config"]["data"], progress=progress)
        self.splits = {s: FrameSplit(data.frames, data.split(s)) for s in ("train", "val", "test")}
        self.data = data
        self.teacher = None
        self.teacher_sha256: str | None = None
        if c.finetune and c.finetune_with:  # before pruning: a missing teacher is one line
            self.teacher = self.load_teacher()

    def load_teacher(self) -> Any:
        """The parent's teacher (the store's teacher of the parent's config), loaded."""
        from kdbench.train.runner import Context
        from kdbench.train.teachers import ensure_teacher, new_teacher, teacher_dir

        m = self.metrics
        ctx = Context(self.data, m["dataset"], m["config"], self.results, self.device,
                      progress=self.progress)
        folder = teacher_dir(ctx)
        checkpoint = m["config"]["teacher"].get("checkpoint")
        if not (checkpoint or (is_finished(folder) and (folder / "best.pt").is_file())):
            raise KdbenchError(f"--finetune-with {self.c.finetune_with} needs the parent's "
                               f"teacher, but {folder} holds no finished teacher with its "
                               "best.pt; train it with `kdbench run` on this store first")
        teacher = ensure_teacher(ctx, new_teacher(ctx))
        recorded = m.get("teacher_sha256")
        if recorded and ctx.teacher_sha256 and recorded != ctx.teacher_sha256:
            raise KdbenchError(f"the store's teacher ({folder}) is not the one {self.parent} "
                               "was distilled from (other weights); fine-tune with the teacher "
                               "it was distilled from, or with cross-entropy alone")
        self.teacher_sha256 = ctx.teacher_sha256
        return teacher.to(self.device).eval()

    def learner(self, student: nn.Module) -> tuple[nn.Module, str]:
        """The fine-tuning learner and its mode: the registry's teacher-free method
        (cross-entropy alone) or the distiller ``finetune_with`` against the teacher."""
        name = self.c.finetune_with
        if not name:
            return self.plain(student), "none"
        if self.teacher is None:
            self.teacher = self.load_teacher()
        entry = self.registry[name]
        mode = self.c.finetune_mode
        return entry.resolve()(student, self.teacher, mode,
                               **entry.hparams(self.metrics["dataset"])), mode

    def plain(self, student: nn.Module) -> nn.Module:
        """``student`` wrapped by the registry's teacher-free method (cross-entropy)."""
        return self.registry[teacher_free(self.registry)].resolve()(student, None, "none")

    def trainer(self, learner: nn.Module, folder: Path, label: str) -> Trainer:
        return Trainer(learner, self.splits, self.config["train"], self.size, folder,
                       self.device, int(self.metrics["seed"]), label,
                       self.config["data"]["workers"], self.progress)


def _prune(work: _Work, student: nn.Module, folder: Path, label: str) -> dict[str, Any]:
    """Prune ``student`` in place as ``work.c`` says (structured: in steps, fine-tuned between
    them); returns what pruning measured."""
    c = work.c
    if c.prune == "unstructured":
        layers = unstructured.apply_masks(student, c.target, c.scope)
        zeros, total = unstructured.overall_sparsity(student)
        return {"masked_layers": len(layers), "achieved": zeros / total}
    example = next(iter(iterate(work.splits["train"], 2, shuffle=False)))
    example = to_model_input(example, work.device, work.size)["image"]
    reference = count_params(student)
    done: dict[str, Any] = {}
    for k in range(1, c.steps + 1):
        head = getattr(student, "fc", None)  # a student's classifier (others: found by tracing)
        done = structured.prune_structured(student, example, c.target * k / c.steps,
                                           forward=_logits, ignore=[head] if head else [],
                                           reference_params=reference)
        if k < c.steps:
            _recalibrate(student, work.splits["train"], work.size,
                         work.config["train"]["batch_size"], work.device)
            if c.finetune:
                learner, _ = work.learner(student)
                work.trainer(learner, folder / f"step{k}", f"{label} step {k}").fit(resume=True)
    return {"ratio": done["ratio"], "achieved": done["removed"], "reference_params": reference}


def make_child(parent: Path, c: Compression, registry: dict[str, MethodEntry], *,
               data_root: Path | None, device: torch.device,
               progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Make (or find finished) the child run of ``parent`` that ``c`` names; returns its folder
    and metrics."""
    out = child_dir(parent, c)
    while True:
        done = _finished_child(out, parent)
        if done is not None:
            return out, done
        out.mkdir(parents=True, exist_ok=True)
        with claim(out) as mine:
            if mine:
                done = _finished_child(out, parent)  # finished by another process meanwhile
                return out, done if done is not None else _make(
                    parent, c, registry, out, data_root, device, progress)
        log.info(f"another kdbench process is making {out}; waiting for it")
        with wait_for_lock(out):
            pass


def _finished_child(out: Path, parent: Path) -> dict[str, Any] | None:
    """The metrics of the finished child in ``out`` (None if unfinished); one line if its
    parent's weights have changed since (the parent was trained again)."""
    if not is_finished(out):
        return None
    done = read_json(out / "metrics.json")
    made_from = done.get("parent", {}).get("best_sha256")
    if made_from and made_from != weights_sha256(Path(parent), read_json(Path(parent) /
                                                                       "metrics.json")):
        raise KdbenchError(f"{out} was made from other weights of {parent} (trained again "
                           "since); delete that folder to make it from these")
    log.info(f"skip {out}: finished (test auc {done['test']['auc']:.4f})")
    return done


def _make(parent: Path, c: Compression, registry: dict[str, MethodEntry], out: Path,
          data_root: Path | None, device: torch.device, progress: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    work = _Work(parent, c, registry, data_root, device, progress)
    m = work.metrics
    parent_label = f"teacher/{Path(parent).name}" if work.of_teacher else run_label(m)
    label = f"{parent_label}+{c.tag()}"
    seed_everything(int(m["seed"]))
    student = work.student.to(device)
    parent_params, parent_gflops = count_params(student), gflops(student, work.size)
    pruned = _prune(work, student, out, label)
    seen = _recalibrate(student, work.splits["train"], work.size,
                        work.config["train"]["batch_size"], device)
    log.info(f"{label}: pruned ({pruned['achieved']:.4f} {_what(c)}); BatchNorm statistics "
             f"recalibrated on {seen} training frames")
    mode = None
    if c.finetune:
        learner, mode = work.learner(student)
        result = work.trainer(learner, out, label).fit(resume=True)
    else:  # tested as pruned
        learner = work.plain(student)
        result = work.trainer(learner, out, label).test_only()
    sparsity = unstructured.layer_sparsity(student) if c.prune == "unstructured" else None
    unstructured.make_permanent(student)  # unstructured: the masks folded into the weights
    student = student.cpu().eval()
    zeros, total = unstructured.overall_sparsity(student)
    metrics = {
        "status": "finished", "role": "compressed", "label": label,
        **{k: m.get(k) for k in ("student", "method", "variant", "mode", "seed", "dataset",
                                 "preset", "prepared")},
        "parent": {"path": str(Path(parent).resolve().relative_to(work.results)),
                   "label": parent_label, "method": m.get("method"),
                   "variant": m.get("variant"), "mode": m.get("mode"),
                   "params": parent_params, "gflops": parent_gflops, "test": m.get("test"),
                   "threshold": m.get("threshold"),
                   "best_sha256": weights_sha256(Path(parent), m)},
        **({"detector": teacher_model.DETECTOR} if work.of_teacher else {}),
        "compression": {**c.record(), **pruned,
                        "bn_recalibration_frames": seen,
                        "finetune_optimizer": (work.config["train"].get("optimizer", "adam")
                                               if c.finetune else None),
                        "finetune_lr": work.config["train"]["lr"] if c.finetune else None,
                        "finetune_lr_rule": LR_NOTE if c.finetune else None,
                        "finetune_learner_mode": mode},
        "config": work.config, "versions": versions(), "git_commit": git_commit(),
        "device": str(device), "params": count_params(student),
        "nonzero_params": count_params(student) - zeros, "weights_zeroed": zeros,
        "prunable_weights": total, "sparsity": sparsity,
        "gflops": gflops(student, work.size), "gzip_mb": unstructured.gzip_mb(student),
        "best_epoch": result.get("best_epoch"), "val": result.get("val"),
        "test": result["test"], "threshold": result["threshold"],
        "teacher_sha256": work.teacher_sha256, "wall_time_s": time.perf_counter() - t0,
        "finished_at": utc_now(),
    }
    # the child's files, metrics.json last: an interruption before it leaves an unfinished
    # child that the same command makes again (last.pt goes first: its keys are the learner's)
    (out / "last.pt").unlink(missing_ok=True)
    if c.prune == "structured":
        atomic_write_json(out / STRUCTURE_FILE, structure_file.structure_of(student))
    atomic_torch_save(out / "best.pt", {f"student.{k}": v for k, v in student.state_dict().items()})
    test = result.pop("predictions")
    save_predictions(out / PREDICTIONS, test.prob, test.label, test.video,
                     video_generators(work.data.index, test.video))
    atomic_write_json(out / "metrics.json", metrics)
    t = metrics["test"]
    log.info(f"done {label}: {metrics['params'] / 1e6:.3f} M parameters "
             f"({metrics['nonzero_params'] / 1e6:.3f} M non-zero), {metrics['gflops']:.4f} "
             f"GFLOPs; test acc {t['acc']:.4f} auc {t['auc']:.4f} (parent "
             f"{m['test']['auc']:.4f}) in {metrics['wall_time_s']:.0f} s")
    return metrics


def weights_sha256(parent: Path, m: dict[str, Any]) -> str | None:
    """The sha256 of a parent run's weights: its best.pt, or (a teacher loaded from a
    checkpoint) the recorded sha256 of that file."""
    best = parent / "best.pt"
    return file_sha256(best) if best.is_file() else m.get("weights_sha256")


def _what(c: Compression) -> str:
    return ("of the weights zeroed" if c.prune == "unstructured"
            else "of the parameters removed")

