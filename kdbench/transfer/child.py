"""A transferred run: a finished run's student (or single-branch teacher) adapted to another
dataset or other generators by one strategy (:mod:`kdbench.transfer.strategies`), trained
with cross-entropy on the target's training split (``shots`` images per class, or all), tested
on its test split and recorded in a run folder of its own that names its parent:
``<results>/transferred/<the parent's path>/<target>/<strategy tag>``."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kdbench.errors import KdbenchError
from kdbench.transfer.strategies import Strategy

log = logging.getLogger(__name__)
TRANSFERRED = "transferred"  # <results>/transferred/<parent path under the store>/...
ADAPTER = "adapter"  # a run whose best.pt holds an AdaptedStudent (train.evaluate reads it)


@dataclass(frozen=True)
class Transfer:
    """Where to (``dataset``, generators) and how (``strategy``, ``shots`` per class or None
    for all, ``epochs``, learning rate ``lr`` or None for the parent's)."""

    dataset: str
    strategy: Strategy
    epochs: int = 5
    shots: int | None = None
    train_generators: tuple[str, ...] = ()
    test_generators: tuple[str, ...] = ()
    lr: float | None = None

    def target(self) -> str:
        """The target's folder name: the dataset and its generator protocol."""
        from kdbench.config import protocol_tag

        tag = protocol_tag({"train_generators": ",".join(sorted(self.train_generators)),
                            "test_generators": ",".join(sorted(self.test_generators))})
        return f"{self.dataset}@{tag}" if tag else self.dataset

    def tag(self) -> str:
        """The strategy's folder name, e.g. ``lora4-e5-shots64``."""
        s = self.strategy
        parts = [f"{s.name}{s.k if s.k is not None else ''}", f"e{self.epochs}"]
        if self.shots:
            parts.append(f"shots{self.shots}")
        if self.lr is not None:
            parts.append(f"lr{self.lr:g}")
        return "-".join(parts)


def child_dir(parent: Path, t: Transfer) -> Path:
    """``<results>/transferred/<the parent's path under runs/ or teachers/>/<target>/<tag>``."""
    from kdbench.compress.settings import store_of

    results, rel = store_of(parent)
    return results / TRANSFERRED / Path(*rel.parts[1:]) / t.target() / t.tag()


def take_shots(index: pd.DataFrame, shots: int | None, seed: int) -> pd.DataFrame:
    """``shots`` training frames of each class (drawn with ``seed``), the other splits whole;
    one line when a class has fewer."""
    if not shots:
        return index
    train = index[index["split"] == "train"]
    counts = train["label"].value_counts()
    have = min(int(counts.get(0, 0)), int(counts.get(1, 0)))
    if shots > have:
        raise KdbenchError(f"--shots {shots} is more than the target's training split holds of "
                           f"a class ({int(counts.get(0, 0))} real, {int(counts.get(1, 0))} "
                           f"fake); give --shots {have} or less, or leave it out for all")
    rng = np.random.default_rng(seed)
    picks = [rows.iloc[np.sort(rng.choice(len(rows), shots, replace=False))]
             for _, rows in train.groupby("label")]
    out = pd.concat([*picks, index[index["split"] != "train"]])
    return out.sort_values("row", kind="stable").reset_index(drop=True)


def _config(parent_config: dict[str, Any], t: Transfer, device: torch.device
            ) -> dict[str, Any]:
    from kdbench.config import AUTO_SETTINGS, for_device

    config = copy.deepcopy(parent_config)
    for key in AUTO_SETTINGS:
        config["train"][key] = "auto"
    config = for_device(config, device.type)
    train = config["train"]
    train["lr"] = float(t.lr if t.lr is not None else train["lr"])
    train["epochs"] = t.epochs
    train["step_size"] = t.epochs + 1  # constant rate
    config["data"]["train_generators"] = ",".join(sorted(t.train_generators))
    config["data"]["test_generators"] = ",".join(sorted(t.test_generators))
    return config


def _parent_model(parent: Path) -> tuple[torch.nn.Module, dict[str, Any], bool]:
    """The parent's model, its metrics (a teacher's named as a run's) and whether it is a
    single-branch teacher."""
    from kdbench.compress import teacher_model
    from kdbench.files import read_json
    from kdbench.train.evaluate import load_student

    recorded = read_json(Path(parent) / "metrics.json")
    if recorded.get("role") == "teacher":
        return (teacher_model.load_teacher(Path(parent), recorded),
                teacher_model.as_parent(recorded), True)
    student, metrics = load_student(Path(parent))
    return student, metrics, False


def parent_sha(parent: Path) -> str | None:
    """The sha256 of the parent's weights (its best.pt; a teacher loaded from a checkpoint:
    the recorded sha256 of that file)."""
    from kdbench.compress.child import weights_sha256
    from kdbench.files import read_json

    return weights_sha256(Path(parent), read_json(Path(parent) / "metrics.json"))


def make_transfer(parent: Path, t: Transfer, registry: dict, *, data_root: Path | None,
                  device: torch.device, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Make (or find finished) the transferred run of ``parent`` that ``t`` names."""
    from kdbench.files import read_json
    from kdbench.train.runner import is_finished
    from kdbench.train.store import claim, wait_for_lock

    out = child_dir(parent, t)
    while True:
        if is_finished(out):
            done = read_json(out / "metrics.json")
            made_from = done.get("parent", {}).get("best_sha256")
            if made_from and made_from != parent_sha(Path(parent)):
                raise KdbenchError(f"{out} was made from other weights of {parent} (trained "
                                   "again since); delete that folder to transfer these")
            log.info(f"skip {out}: finished (test auc {done['test']['auc']:.4f})")
            return out, done
        out.mkdir(parents=True, exist_ok=True)
        with claim(out) as mine:
            if mine:
                if is_finished(out):
                    continue
                return out, _make(Path(parent), t, registry, out, data_root, device, progress)
        log.info(f"another kdbench process is making {out}; waiting for it")
        with wait_for_lock(out):
            pass


def _make(parent: Path, t: Transfer, registry: dict, out: Path, data_root: Path | None,
          device: torch.device, progress: bool) -> dict[str, Any]:
    from dataclasses import replace

    from kdbench.compress.settings import store_of, teacher_free
    from kdbench.compress.teacher_model import DETECTOR
    from kdbench.data.datasets import open_configured
    from kdbench.data.generators import video_generators
    from kdbench.data.loader import FrameSplit
    from kdbench.files import atomic_torch_save, atomic_write_json, utc_now
    from kdbench.models.cost import count_params, gflops
    from kdbench.provenance import versions
    from kdbench.train.predictions import PREDICTIONS, save_predictions
    from kdbench.train.runner import git_commit
    from kdbench.train.trainer import Trainer, seed_everything
    from kdbench.transfer.strategies import apply, finalize, trainable

    t0 = time.perf_counter()
    model, m, of_teacher = _parent_model(parent)
    config = _config(m["config"], t, device)
    seed = int(m["seed"])
    data = open_configured(t.dataset, data_root, config["data"], progress=progress)
    data = replace(data, index=take_shots(data.index, t.shots, seed))
    splits = {s: FrameSplit(data.frames, data.split(s)) for s in ("train", "val", "test")}
    seed_everything(seed)
    adapted = apply(model, t.strategy)
    n_train, n_all = trainable(adapted)
    learner = registry[teacher_free(registry)].resolve()(adapted, None, "none")
    results, rel = store_of(parent)
    label = f"{Path(*rel.parts[1:])} -> {t.target()} {t.tag()}"
    size = int(config["data"]["size"])
    trainer = Trainer(learner, splits, config["train"], size, out, device, seed, label,
                      config["data"]["workers"], progress)
    t_fit = time.perf_counter()
    result = trainer.fit(resume=True)
    train_s = time.perf_counter() - t_fit
    final = finalize(adapted).cpu().eval()
    metrics = {
        "status": "finished", "role": "transferred", "label": label,
        **{k: m.get(k) for k in ("student", "method", "variant", "mode")},
        "seed": seed, "dataset": t.dataset, "preset": m.get("preset"),
        "parent": {"path": str(rel), "dataset": m.get("dataset"), "test": m.get("test"),
                   "params": count_params(model), "best_sha256": parent_sha(parent)},
        **({"detector": DETECTOR} if of_teacher else {}),
        "transfer": {"strategy": str(t.strategy), "kind": t.strategy.name,
                     "epochs": t.epochs, "shots": t.shots,
                     "train_frames": len(splits["train"]), "lr": config["train"]["lr"],
                     "trainable_params": n_train, "all_params": n_all,
                     "train_time_s": train_s},
        "config": config, "versions": versions(), "git_commit": git_commit(),
        "device": str(device), "params": count_params(final), "gflops": gflops(final, size),
        "best_epoch": result.get("best_epoch"), "val": result.get("val"),
        "test": result["test"], "threshold": result["threshold"],
        "prepared": {k: data.meta.get(k) for k in ("detector", "size", "frames", "reencode")},
        "wall_time_s": time.perf_counter() - t0, "finished_at": utc_now(),
    }
    (out / "last.pt").unlink(missing_ok=True)
    atomic_torch_save(out / "best.pt", {f"student.{k}": v for k, v in final.state_dict().items()})
    test = result.pop("predictions")
    save_predictions(out / PREDICTIONS, test.prob, test.label, test.video,
                     video_generators(data.index, test.video))
    atomic_write_json(out / "metrics.json", metrics)
    log.info(f"done {label}: {n_train / 1e3:.1f} K of {n_all / 1e3:.1f} K parameters trained "
             f"in {train_s:.0f} s; test acc {result['test']['acc']:.4f} auc "
             f"{result['test']['auc']:.4f}")
    return metrics
