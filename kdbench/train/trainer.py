"""The training loop: one backward per step, best epoch on validation, test at that epoch,
a resumable checkpoint every epoch."""

from __future__ import annotations

import contextlib
import math
import pickle
import random
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from kdbench.data.loader import FrameSplit, iterate, to_model_input
from kdbench.errors import KdbenchError
from kdbench.files import atomic_torch_save, atomic_write_jsonl, plain
from kdbench.progress import console, progress_bar
from kdbench.train.metrics import detection_metrics
from kdbench.train.teacher_cache import TeacherCache

CHECK_EVERY = 20  # steps between finiteness checks of the loss (each check syncs the device)


class Learner(Protocol):
    """What the trainer drives: a Distiller, or the teacher's own training task."""

    def forward_train(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]: ...
    def after_backward(self, step: int) -> dict[str, float]: ...
    def trainable_modules(self) -> nn.ModuleDict: ...
    def predict(self, x: Tensor) -> Tensor: ...


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


class Trainer:
    """Train ``learner`` on ``splits['train']``, select on ``val``, report ``test``.

    ``run_dir`` receives ``last.pt`` (full state, every epoch), ``best.pt`` (learner weights at
    the best validation epoch) and ``history.jsonl``.
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
    ) -> None:
        self.learner, self.splits, self.cfg = learner, splits, train_cfg
        self.size, self.run_dir, self.device = size, Path(run_dir), device
        self.seed, self.label, self.workers, self.progress = seed, label, workers, progress
        self.amp = bool(train_cfg.get("amp")) and device.type == "cuda"

    def _autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics of the learner's predictions on one split."""
        data = self.splits[split]
        self.learner.eval()
        probs = []
        for batch in iterate(data, self.cfg["eval_batch_size"], shuffle=False,
                             workers=self.workers):
            b = to_model_input(batch, self.device, self.size)
            with self._autocast():
                logits = self.learner.predict(b["image"])
            probs.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
        p = torch.cat(probs).numpy()
        return detection_metrics(p, data.labels.numpy(), data.videos)

    def _train_epoch(self, epoch: int, opt: torch.optim.Optimizer, bar, task) -> dict[str, float]:
        self.learner.train()
        data = self.splits["train"]
        sums: dict[str, Tensor] = {}
        extras: dict[str, float] = {}
        correct, seen, steps = torch.zeros((), device=self.device), 0, 0
        batches = iterate(data, self.cfg["batch_size"], shuffle=True, seed=self.seed,
                          epoch=epoch, workers=self.workers)
        t0 = time.perf_counter()
        pending: list[Tensor] = []
        step_base = epoch * (len(data) // self.cfg["batch_size"] or 1)
        for step, batch in enumerate(batches):
            b = to_model_input(batch, self.device, self.size)
            with self._autocast():
                logits, losses = self.learner.forward_train(b)
            total = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            total.backward()
            for k, v in self.learner.after_backward(step_base + step).items():
                extras[k] = extras.get(k, 0.0) + float(v)
            opt.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            pending.append(total.detach())
            correct += (logits.detach().argmax(1) == b["label"]).sum()
            seen += len(b["label"])
            steps += 1
            if steps % CHECK_EVERY == 0 or seen == len(data):
                self._check_finite(pending, losses, epoch, step)
                pending.clear()
                rate = seen / (time.perf_counter() - t0)
                mean_loss = float(sum(sums.values())) / steps
                bar.update(task, completed=seen, info=f"loss {mean_loss:.4f}  {rate:.0f} img/s")
        self._check_finite(pending, losses, epoch, steps)
        elapsed = time.perf_counter() - t0
        stats = {f"train_{k}": float(v) / max(steps, 1) for k, v in sums.items()}
        stats.update({k: v / max(steps, 1) for k, v in extras.items()})
        stats["train_loss"] = sum(float(v) for v in sums.values()) / max(steps, 1)
        stats["train_acc"] = float(correct) / max(seen, 1)
        stats["train_images_per_s"] = seen / elapsed if elapsed > 0 else math.nan
        stats["train_time_s"] = elapsed
        bar.update(task, completed=len(data))
        return stats

    def _check_finite(self, pending: list[Tensor], losses: dict[str, Tensor], epoch: int,
                      step: int) -> None:
        if pending and not bool(torch.isfinite(torch.stack(pending)).all()):
            bad = [k for k, v in losses.items() if not bool(torch.isfinite(v))] or ["loss"]
            raise KdbenchError(
                f"{self.label}: {bad[0]} became NaN/inf at epoch {epoch + 1} step {step + 1}; "
                "results up to the last finished epoch are kept in last.pt - lower train.lr or "
                "the method's loss weight with --set and run again"
            )

    def _attach_teacher_cache(self) -> None:
        """Give a distiller with a teacher the teacher's outputs for every training frame and
        flip, computed once here (``train.teacher_cache_mb`` bounds the memory)."""
        teacher = getattr(self.learner, "teacher", None)
        budget = int(self.cfg.get("teacher_cache_mb", 0)) << 20
        if teacher is None or not hasattr(self.learner, "teacher_cache") or budget <= 0:
            return
        t0 = time.perf_counter()
        cache = TeacherCache.build(teacher, self.learner.teacher_needs(), self.splits["train"],
                                   self.size, self.device, self.cfg["eval_batch_size"], budget)
        self.learner.teacher_cache = cache
        state = "over train.teacher_cache_mb, running the teacher live" if cache is None else (
            f"{sum(t.numel() * t.element_size() for t in cache.store.values()) / 2**20:.0f} MB")
        console.print(f"{self.label}: teacher cache {state} ({time.perf_counter() - t0:.0f} s)",
                      highlight=False)

    def fit(self, resume: bool = False, stop_after: int | None = None) -> dict[str, Any] | None:
        """Train to the end and return the result (None if stopped early by ``stop_after``)."""
        cfg = self.cfg
        seed_everything(self.seed)
        self.learner.to(self.device)
        params = [p for p in self.learner.trainable_modules().parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg["lr"], betas=(0.9, 0.999),
                               weight_decay=cfg["weight_decay"])
        sched = torch.optim.lr_scheduler.StepLR(opt, cfg["step_size"], cfg["gamma"])
        start, history, best, wall = 0, [], None, 0.0
        steps_per_epoch = max(len(self.splits["train"]) // cfg["batch_size"], 1)
        if hasattr(self.learner, "on_fit_start"):
            self.learner.on_fit_start(cfg, steps_per_epoch)
        traces: dict[str, list] = getattr(self.learner, "traces", {})
        reserved = sorted(set(traces) & {"history"})
        if reserved:
            raise KdbenchError(f"{self.label}: a method trace may not be named {reserved[0]!r} "
                               "(the trainer writes history.jsonl); rename it")
        last = self.run_dir / "last.pt"
        if resume and last.is_file():
            ckpt = load_checkpoint(last)  # the optimizer and model move it to the device
            self.learner.load_state_dict(ckpt["learner"])
            for name, rows in ckpt.get("traces", {}).items():
                traces[name] = list(rows)
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            _set_rng_state(ckpt["rng"])
            start, history, best, wall = ckpt["epoch"], ckpt["history"], ckpt["best"], ckpt["wall"]
        self._attach_teacher_cache()
        n = len(self.splits["train"])
        with progress_bar(self.progress) as bar:
            for epoch in range(start, cfg["epochs"]):
                t0 = time.perf_counter()
                task = bar.add_task(f"{self.label} {epoch + 1}/{cfg['epochs']}", total=n)
                row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"]}
                row.update(self._train_epoch(epoch, opt, bar, task))
                sched.step()
                val = self.evaluate("val")
                row.update({f"val_{k}": v for k, v in val.items()})
                history.append(row)
                if _better(val, best, cfg["select"]):
                    best = {"epoch": epoch + 1, "val": val}
                    atomic_torch_save(self.run_dir / "best.pt", self.learner.state_dict())
                wall += time.perf_counter() - t0
                summary = (f"loss {row['train_loss']:.4f}  val acc {val['acc']:.4f} "
                           f"auc {val['auc']:.4f}  {row['train_images_per_s']:.0f} img/s")
                bar.update(task, info=summary)
                console.print(f"{self.label} epoch {epoch + 1}/{cfg['epochs']}: {summary}",
                              highlight=False)
                atomic_torch_save(last, {
                    "epoch": epoch + 1, "learner": self.learner.state_dict(),
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "rng": _rng_state(), "best": plain(best), "history": plain(history),
                    "wall": wall, "traces": plain(traces),
                })
                atomic_write_jsonl(self.run_dir / "history.jsonl", history)
                for name, rows in traces.items():
                    atomic_write_jsonl(self.run_dir / f"{name}.jsonl", rows)
                if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < cfg["epochs"]:
                    return None
        state = load_checkpoint(self.run_dir / "best.pt")
        self.learner.load_state_dict(state)
        t0 = time.perf_counter()
        test = self.evaluate("test")
        return {"best_epoch": best["epoch"], "val": best["val"], "test": test,
                "history": history, "wall_time_s": wall + time.perf_counter() - t0}
