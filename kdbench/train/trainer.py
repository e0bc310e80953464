"""The training loop: one backward per step, best epoch on validation, test at that epoch,
a resumable checkpoint every epoch."""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from kdbench import distributed
from kdbench.config import AUTO_SETTINGS
from kdbench.data.loader import FrameSplit, iterate, to_model_input
from kdbench.errors import KdbenchError
from kdbench.files import atomic_torch_save, atomic_write_jsonl, plain
from kdbench.progress import progress_bar
from kdbench.train import teacher_cache
from kdbench.train.branch_terms import TRACE, BranchCosine, branch_factor, weigh_branches
from kdbench.train.events import EventLog
from kdbench.train.metrics import best_threshold, detection_metrics
from kdbench.train.predictions import Predictions

log = logging.getLogger(__name__)

CHECK_EVERY = 20  # steps between finiteness checks of the loss (each check syncs the device)
HEARTBEAT_S = 60.0  # a log (no live bar) gets a progress line inside an epoch at least this often


class Learner(Protocol):
    """What the trainer drives: a Distiller, or the teacher's own training task."""

    def forward_train(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]: ...
    def after_backward(self, step: int) -> dict[str, float]: ...
    def trainable_modules(self) -> nn.ModuleDict: ...
    def predict(self, x: Tensor) -> Tensor: ...


def on_device(cfg: dict[str, Any], key: str, device: torch.device) -> bool:
    """Training switch ``key`` of ``cfg``, ``auto`` decided for ``device``
    (:data:`kdbench.config.AUTO_SETTINGS`)."""
    value = cfg.get(key, False)
    return device.type in AUTO_SETTINGS[key] if value == "auto" else bool(value)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """The random generators' states as tensors and plain containers (loadable with
    ``weights_only=True``)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss),
                       float(gauss)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`_rng_state` (or the numpy-array form kdbench 0.1 wrote); the tensors must
    be on the CPU, as :func:`load_checkpoint` leaves them."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, key, pos, has_gauss, gauss = state["numpy"]
    key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    np.random.set_state((kind, key.astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _numpy_data_types() -> list:
    """What numpy arrays and scalars are rebuilt from when unpickled: data, no code. kdbench
    0.1 stored the numpy RNG state and numpy floats in ``last.pt``; allowing these lets such a
    run continue under ``weights_only=True``."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float32, np.float64)]
    return [np.dtype, np.ndarray, core.multiarray.scalar, core.multiarray._reconstruct, *dtypes]


def load_checkpoint(path: Path) -> Any:
    """A checkpoint kdbench wrote, loaded on the CPU without unpickling code
    (``weights_only=True``); a file holding more, or a damaged one, is a one-line error."""
    try:
        with torch.serialization.safe_globals(_numpy_data_types()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise KdbenchError(f"{path} holds more than tensors and plain containers, so it is "
                           f"not loaded ({str(exc).splitlines()[0][:120]}); delete it, or "
                           "pass --restart to train the run again") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise KdbenchError(f"{path} is damaged or truncated ({str(exc).splitlines()[0][:120]});"
                           " delete it, or pass --restart to train the run again") from None


def _better(val: dict[str, float], best: dict[str, Any] | None, key: str) -> bool:
    """Higher selection metric wins (lower for eer); a tie goes to the higher AUC, then to the
    earlier epoch. NaN never wins."""

    def score(m: dict[str, float]) -> tuple[float, float]:
        main = m[key] if m[key] is not None else math.nan
        main = -main if key == "eer" else main
        auc = m.get("auc")
        return (-math.inf if math.isnan(main) else main,
                -math.inf if auc is None or math.isnan(auc) else auc)

    return best is None or score(val) > score(best["val"])


def _resumed_threads(label: str, ckpt: dict[str, Any], start: int) -> int:
    """The first epoch of the stretch this process's thread count continues: ``last.pt``'s when
    it was saved on this count, else the next epoch, and one line says so (an old checkpoint
    without its ``torch_threads`` says nothing)."""
    now, saved = torch.get_num_threads(), ckpt.get("torch_threads")
    if saved is None:
        return start + 1
    since = ckpt.get("torch_threads_from", 1)
    if saved == now:
        return since
    log.info(f"{label}: continues on {now} threads; epochs {since}-{start} ran on {saved} "
             "(CPU results depend on the thread count)")
    return start + 1


def optimizer_for(params: list[nn.Parameter], cfg: dict[str, Any]
                  ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR]:
    """``train.optimizer`` (Adam with betas 0.9, 0.999, or SGD with momentum 0.9) at
    ``train.lr`` and ``train.weight_decay``, and its StepLR(``step_size``, ``gamma``)."""
    if cfg.get("optimizer", "adam") == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg["lr"], momentum=0.9,
                                                     weight_decay=cfg["weight_decay"])
    else:
        opt = torch.optim.Adam(params, lr=cfg["lr"], betas=(0.9, 0.999),
                               weight_decay=cfg["weight_decay"])
    return opt, torch.optim.lr_scheduler.StepLR(opt, cfg["step_size"], cfg["gamma"])


class Trainer:
    """Train ``learner`` on ``splits['train']``, select on ``val``, report ``test``.

    ``run_dir`` receives ``last.pt`` (full state, every epoch), ``best.pt`` (learner weights at
    the best validation epoch) and ``history.jsonl``. Under torchrun (:mod:`kdbench.distributed`)
    every rank trains its slice of each global batch through DDP and evaluates its block of a
    split; rank 0 alone writes.
    """

    def __init__(
        self,
        learner: nn.Module,
        splits: dict[str, FrameSplit],
        train_cfg: dict[str, Any],
        size: int,
        run_dir: Path,
        device: torch.device,
        seed: int,
        label: str = "train",
        workers: int = 0,
        progress: bool = True,
        teacher_cache: Path | None = None,
        teacher_fields: set[str] | None = None,
    ) -> None:
        self.learner, self.splits, self.cfg = learner, splits, train_cfg
        self.size, self.run_dir, self.device = size, Path(run_dir), device
        self.seed, self.label, self.workers, self.progress = seed, label, workers, progress
        self.amp = on_device(train_cfg, "amp", device)
        self.channels_last = on_device(train_cfg, "channels_last", device)
        self.teacher_cache_dir = teacher_cache
        self.teacher_fields = set(teacher_fields or ())  # the plan's: built in one pass
        self.lookup: Callable[[np.ndarray], dict[str, Tensor]] | None = None
        self.teacher_outputs: str | None = None  # "cache" | "live" once fit has started
        # called after each epoch with (epochs left, seconds the epoch took): plan estimates
        self.on_epoch: Callable[[int, float], None] | None = None
        # "fp16" | "fp32": the teacher's targets, the same with and without the cache
        self.teacher_targets: str | None = None
        self.live_targets: teacher_cache.LiveTargets | None = None  # when not from the cache
        self.sync_bn = bool(train_cfg.get("sync_bn", False))
        self._forward: Callable[[dict[str, Tensor]], Any] | None = None  # DDP's, once fitting
        self.last_probs: np.ndarray | None = None  # of the last evaluate()
        self.events = EventLog(self.run_dir, False)  # train.tensorboard: opened by fit
        self.branch_factor = branch_factor(learner)  # both_weighting
        self.branch_cos: BranchCosine | None = None  # the gradcos trace, set up by fit

    def _autocast(self):
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _batches(self, split: str, batch_size: int, shuffle: bool, epoch: int = 0,
                 lookup: Callable[[np.ndarray], dict[str, Tensor]] | None = None):
        """Batches of ``split`` on the device (the model's input format)."""
        for batch in iterate(self.splits[split], batch_size, shuffle=shuffle, seed=self.seed,
                             epoch=epoch, workers=self.workers, lookup=lookup,
                             pin_memory=self.device.type == "cuda",
                             shard=(distributed.rank(), distributed.size())):
            yield to_model_input(batch, self.device, self.size, self.channels_last)

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics of the learner's predictions on one split (each rank predicts its block;
        the blocks are gathered in order, so every rank computes the same metrics)."""
        data = self.splits[split]
        self.learner.eval()
        probs = [torch.zeros(0)]
        for b in self._batches(split, self.cfg["eval_batch_size"], shuffle=False):
            with self._autocast():
                logits = self.learner.predict(b["image"])
            probs.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
        p = distributed.all_gather_cat(torch.cat(probs).to(self._collective_device)).cpu()
        self.last_probs = p.numpy()  # the split's per-frame fake probabilities, in order
        return detection_metrics(self.last_probs, data.labels.numpy(), data.videos)

    @property
    def _collective_device(self) -> torch.device:
        """Where the ranks' collectives take tensors: the GPU for NCCL, the CPU for gloo."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def train_step(self, batch: dict[str, Tensor], opt: torch.optim.Optimizer,
                   step: int) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
        """One optimizer step on a batch already on the device: the learner's loss terms,
        one backward, its ``after_backward`` (values returned as they are: tensors are not
        read here, so the step never waits for the device), the optimizer step."""
        with self._autocast():
            logits, losses = (self._forward or self.learner.forward_train)(batch)
        losses = weigh_branches(losses, self.branch_factor, self.label)
        if self.branch_cos is not None:
            self.branch_cos.record(losses, step)
        total = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        extras = self.learner.after_backward(step)
        opt.step()
        return logits, losses, extras

    def _train_epoch(self, epoch: int, opt: torch.optim.Optimizer, bar, task) -> dict[str, float]:
        self.learner.train()
        data = self.splits["train"]
        sums: dict[str, Tensor] = {}
        extras: dict[str, Any] = {}
        correct, seen, steps = torch.zeros((), device=self.device), 0, 0
        t0 = beat = time.perf_counter()
        pending: list[Tensor] = []
        step_base = epoch * (len(data) // self.cfg["batch_size"] or 1)
        losses: dict[str, Tensor] = {}
        ranks = distributed.size()
        if self.branch_cos is not None:
            self.branch_cos.epoch = epoch + 1
        for step, b in enumerate(self._batches("train", self.cfg["batch_size"], shuffle=True,
                                               epoch=epoch, lookup=self.lookup)):
            if self.live_targets is not None:  # where the cached outputs enter a batch
                b.update(self.live_targets(b["image"]))
            logits, losses, extra = self.train_step(b, opt, step_base + step)
            for k, v in extra.items():
                value = v.detach().float() if isinstance(v, Tensor) else float(v)
                extras[k] = extras[k] + value if k in extras else value
            for k, v in losses.items():
                sums[k] = sums[k] + v.detach().float() if k in sums else v.detach().float()
            pending.append(sum(losses.values()).detach())
            correct += (logits.detach().argmax(1) == b["label"]).sum()
            seen += len(b["label"]) * ranks  # the global batch: equal slices on every rank
            steps += 1
            if time.perf_counter() - beat >= HEARTBEAT_S and not bar.live.is_started:
                beat = time.perf_counter()  # a log file hears from a long epoch every minute
                log.info(f"{self.label} epoch {epoch + 1}/{self.cfg['epochs']}: {seen}/"
                         f"{len(data)} images, {seen / (beat - t0):.0f} img/s")
            if steps % CHECK_EVERY == 0 or seen == len(data):  # the only reads of the device
                self._check_finite(pending, losses, epoch, step)
                pending.clear()
                rate = seen / (time.perf_counter() - t0)
                mean_loss = float(sum(sums.values())) / steps
                self.events.scalars({**{k: float(v) / steps for k, v in sums.items()},
                                     "lr": opt.param_groups[0]["lr"]}, step_base + step,
                                    "step/")
                bar.update(task, completed=seen, info=f"loss {mean_loss:.4f}  {rate:.0f} img/s")
        self._check_finite(pending, losses, epoch, steps)
        elapsed = time.perf_counter() - t0
        stats = {f"train_{k}": float(v) / max(steps, 1) for k, v in sums.items()}
        stats.update({k: float(v) / max(steps, 1) for k, v in extras.items()})
        stats["train_loss"] = sum(float(v) for v in sums.values()) / max(steps, 1)
        stats["train_acc"] = float(correct) * ranks / max(seen, 1)
        stats["train_images_per_s"] = seen / elapsed if elapsed > 0 else math.nan
        stats["train_time_s"] = elapsed
        bar.update(task, completed=len(data))
        return distributed.mean_over_ranks(stats)  # equal slices: the global batch's means

    def _check_finite(self, pending: list[Tensor], losses: dict[str, Tensor], epoch: int,
                      step: int) -> None:
        bad_here = bool(pending) and not bool(torch.isfinite(torch.stack(pending)).all())
        if distributed.any_rank(bad_here):  # every rank stops at the same step
            bad = [k for k, v in losses.items() if not bool(torch.isfinite(v))] or ["loss"]
            raise KdbenchError(
                f"{self.label}: {bad[0]} became NaN/inf at epoch {epoch + 1} step {step + 1}; "
                "results up to the last finished epoch are kept in last.pt - lower train.lr or "
                "the method's loss weight with --set and run again"
            )

    def _attach_teacher_cache(self) -> None:
        """Batches of a distiller with a teacher carry the teacher's outputs from the shared
        on-disk cache (built here by the first run that needs them; see
        :mod:`kdbench.train.teacher_cache`), unless ``train.teacher_cache_gb`` is too small:
        then computed live, rounded as the cache stores them (fp16, or fp32 for both when an
        output exceeds fp16's range), so the cache changes no number."""
        teacher = getattr(self.learner, "teacher", None)
        needs = getattr(self.learner, "teacher_needs", None)
        if teacher is None or needs is None:
            return
        self.teacher_outputs, self.lookup, self.live_targets = "live", None, None
        fields = sorted(set(needs()) | {"logits"})
        budget = int(float(self.cfg.get("teacher_cache_gb", 0)) * 2**30)
        train, bs = self.splits["train"], self.cfg["eval_batch_size"]
        got = None
        if self.teacher_cache_dir is not None and budget > 0:
            got = teacher_cache.ensure(
                teacher, needs(), train, self.size, self.device, bs, self.teacher_cache_dir,
                budget, self.channels_last, self.progress, also=self.teacher_fields)
        if got is None or got.cache is None:
            fp16 = teacher_cache.targets_fit_fp16(
                teacher, needs(), train, self.size, self.device, bs, self.teacher_cache_dir,
                self.channels_last, self.progress)
            self.live_targets = teacher_cache.LiveTargets(teacher, fields, self.channels_last,
                                                          fp16)
            self.teacher_targets = "fp16" if fp16 else "fp32"
            if got is not None:
                log.info(f"{self.label}: teacher outputs computed live ({got.reason}), "
                         f"{self.teacher_targets} targets")
            return
        if got.built:
            log.info(got.built_line(len(train), self.teacher_cache_dir))
        else:
            log.info(f"{self.label}: teacher outputs from the cache ({', '.join(fields)})")
        self.lookup = got.cache.read
        self.teacher_outputs, self.teacher_targets = "cache", "fp16"

    def _prepare_models(self) -> None:
        """The learner told the training frames' labels (``on_train_data``, before its
        parameters are handed to an optimizer); device, memory format and
        (``train.compile``) torch.compile of the learner's student and teacher."""
        if hasattr(self.learner, "on_train_data"):
            self.learner.on_train_data(self.splits["train"].labels)
        if self.device.type == "cuda":  # TF32 matmuls and convolutions
            torch.set_float32_matmul_precision("high")
            torch.backends.cudnn.allow_tf32 = True
        fmt = {"memory_format": torch.channels_last} if self.channels_last else {}
        self.learner.to(self.device, **fmt)
        teacher = getattr(self.learner, "teacher", None)
        if isinstance(teacher, nn.Module):  # outside the learner's module tree
            teacher.to(self.device, **fmt)
        if self.cfg.get("compile"):
            for name in ("student", "teacher"):
                module = getattr(self.learner, name, None)
                if isinstance(module, nn.Module):
                    module.compile()

    def fit(self, resume: bool = False, stop_after: int | None = None) -> dict[str, Any] | None:
        """Train to the end and return the result (None if stopped early by ``stop_after``)."""
        cfg = self.cfg
        distributed.check_batch_size(cfg["batch_size"])
        seed_everything(self.seed)
        self._prepare_models()
        self._forward = distributed.data_parallel(self.learner, self.device, self.sync_bn)
        params = [p for p in self.learner.trainable_modules().parameters() if p.requires_grad]
        opt, sched = optimizer_for(params, cfg)
        start, history, best, wall = 0, [], None, 0.0
        steps_per_epoch = max(len(self.splits["train"]) // cfg["batch_size"], 1)
        if hasattr(self.learner, "on_fit_start"):
            self.learner.on_fit_start(cfg, steps_per_epoch)
        traces: dict[str, list] = getattr(self.learner, "traces", {})
        reserved = sorted(set(traces) & {"history", TRACE})
        if reserved:
            raise KdbenchError(f"{self.label}: a method trace may not be named {reserved[0]!r} "
                               "(the trainer writes history.jsonl); rename it")
        last = self.run_dir / "last.pt"
        threads_from = 1  # the first epoch run on the current thread count
        if resume and last.is_file():
            ckpt = load_checkpoint(last)  # the optimizer and model move it to the device
            self.learner.load_state_dict(ckpt["learner"])
            for name, rows in ckpt.get("traces", {}).items():
                traces[name] = list(rows)
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            _set_rng_state(ckpt["rng"])
            start, history, best, wall = ckpt["epoch"], ckpt["history"], ckpt["best"], ckpt["wall"]
            if self.device.type == "cpu":  # the CPU's thread count shapes the numbers
                threads_from = _resumed_threads(self.label, ckpt, start)
        self._attach_teacher_cache()
        self.branch_cos = BranchCosine(self.learner, int(cfg.get("gradcos_every", 0)))
        self.events = EventLog(self.run_dir, bool(cfg.get("tensorboard")) and distributed.is_main())
        n = len(self.splits["train"])
        with progress_bar(self.progress) as bar:
            for epoch in range(start, cfg["epochs"]):
                t0 = time.perf_counter()
                task = bar.add_task(f"{self.label} {epoch + 1}/{cfg['epochs']}", total=n)
                row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
                       "torch_threads": torch.get_num_threads()}  # CPU sums depend on it
                row.update(self._train_epoch(epoch, opt, bar, task))
                sched.step()
                distributed.average_bn_stats(self.learner)  # per-rank BatchNorm: one model
                val = self.evaluate("val")
                row.update({f"val_{k}": v for k, v in val.items()})
                history.append(row)
                main = distributed.is_main()  # rank 0 alone writes
                if _better(val, best, cfg["select"]):
                    best = {"epoch": epoch + 1, "val": val}
                    if main:
                        atomic_torch_save(self.run_dir / "best.pt", self.learner.state_dict())
                wall += time.perf_counter() - t0
                summary = (f"loss {row['train_loss']:.4f}  val acc {val['acc']:.4f} "
                           f"auc {val['auc']:.4f}  {row['train_images_per_s']:.0f} img/s")
                bar.update(task, info=summary)
                left = (time.perf_counter() - t0) * (cfg["epochs"] - epoch - 1)
                log.info(f"{self.label} epoch {epoch + 1}/{cfg['epochs']}: {summary}"
                         + (f"  (about {left / 60:.0f} min left)" if left >= 60 else ""))
                if self.on_epoch is not None:
                    self.on_epoch(cfg["epochs"] - epoch - 1, time.perf_counter() - t0)
                self.events.scalars({k: v for k, v in row.items() if k != "epoch"}, epoch + 1,
                                    "epoch/")
                self.events.traces(traces)
                if main:
                    atomic_torch_save(last, {
                        "epoch": epoch + 1, "learner": self.learner.state_dict(),
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "rng": _rng_state(), "best": plain(best), "history": plain(history),
                        "wall": wall, "traces": plain(traces),
                        "torch_threads": torch.get_num_threads(),
                        "torch_threads_from": threads_from,
                    })
                    atomic_write_jsonl(self.run_dir / "history.jsonl", history)
                    for name, rows in traces.items():
                        atomic_write_jsonl(self.run_dir / f"{name}.jsonl", rows)
                if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < cfg["epochs"]:
                    self.branch_cos.close()
                    return None
        self.events.close()
        self.branch_cos.close()
        ranks = self._ranks_record()
        distributed.barrier()  # rank 0's best.pt is written
        state = load_checkpoint(self.run_dir / "best.pt")
        self.learner.load_state_dict(state)
        t0 = time.perf_counter()
        self.evaluate("val")  # the best epoch's validation predictions again, for the threshold
        threshold = best_threshold(self.last_probs, self.splits["val"].labels.numpy())
        test = self.evaluate("test")
        data = self.splits["test"]
        predictions = Predictions(self.last_probs, data.labels.numpy(), data.videos)
        return {"best_epoch": best["epoch"], "val": best["val"], "test": test,
                "threshold": threshold, "predictions": predictions,
                "history": history, "wall_time_s": wall + time.perf_counter() - t0,
                "teacher_outputs": self.teacher_outputs,
                # the first epoch run on this thread count (1: the whole run on it)
                "torch_threads_since_epoch": threads_from,
                "teacher_targets": self.teacher_targets, **ranks}

    def test_only(self) -> dict[str, Any]:
        """:meth:`fit`'s result for a learner that is not trained (a loaded teacher): its
        validation metrics and threshold, test metrics and predictions (best epoch 0)."""
        self.learner.to(self.device)
        t0 = time.perf_counter()
        val = self.evaluate("val")
        threshold = best_threshold(self.last_probs, self.splits["val"].labels.numpy())
        test = self.evaluate("test")
        data = self.splits["test"]
        return {"best_epoch": 0, "val": val, "test": test, "threshold": threshold,
                "predictions": Predictions(self.last_probs, data.labels.numpy(), data.videos),
                "history": [], "wall_time_s": time.perf_counter() - t0, "trained": False}

    def _ranks_record(self) -> dict[str, Any]:
        """``world_size``, and under torchrun each rank's sha256 of the trained learner's state
        (equal when the replicas agree; a method's own buffers, such as a rotation, included)."""
        if not distributed.active():
            return {"world_size": 1}
        digests = distributed.gather_objects(distributed.state_digest(self.learner))
        if len(set(digests)) > 1:
            log.warning(f"{self.label}: the ranks' trained states differ "
                        f"({len(set(digests))} distinct); rank 0's is kept")
        return {"world_size": distributed.size(),
                "data_parallel": {"backend": distributed.backend(), "sync_bn": self.sync_bn,
                                  "state_sha256_by_rank": digests}}
