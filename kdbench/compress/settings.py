"""What `kdbench compress` is asked to do, checked before torch is imported, and the child
run's folder name that it determines."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError, did_you_mean

TECHNIQUES = ("unstructured", "structured")
SCOPES = ("layer", "global")
FINETUNE_MODES = ("both", "rgb")  # the distiller's mode when fine-tuning with one
COMPRESSED = "compressed"  # <results>/compressed/<the parent's path under runs/>/<tag>/
STRUCTURE_FILE = "structure.json"  # a structured child's shapes (compress.structure_file)
# the learning rate of fine-tuning: the parent's, times its schedule's decay once (gamma)
LR_NOTE = "the parent's learning rate after its schedule's first decay (lr x gamma), constant"


@dataclass(frozen=True)
class Compression:
    """``prune``: unstructured | structured; ``target``: the fraction of weights zeroed
    (unstructured) or of parameters removed (structured); ``scope``: unstructured masks per
    layer or global; ``steps``: structured pruning in that many steps, fine-tuned between;
    ``finetune``: epochs of fine-tuning after pruning, with cross-entropy alone
    (``finetune_with`` None: the registry's teacher-free method) or a registry distiller
    against the parent's teacher in ``finetune_mode``."""

    prune: str
    target: float
    scope: str = "layer"
    steps: int = 1
    finetune: int = 0
    finetune_with: str | None = None
    finetune_mode: str = "both"

    def tag(self) -> str:
        """The child run's folder name, e.g. ``structured-90-ft1-kd-both``."""
        parts = [self.prune]
        if self.prune == "unstructured":
            parts.append(self.scope)
        parts.append(f"{self.target * 100:g}")
        if self.steps > 1:
            parts.append(f"x{self.steps}")
        if self.finetune:
            parts.append(f"ft{self.finetune}")
            if self.finetune_with:
                parts += [self.finetune_with, self.finetune_mode]
        return "-".join(parts)

    def record(self) -> dict[str, Any]:
        """The settings as a child's metrics record them (``technique``, ``finetune_epochs``)."""
        d = asdict(self)
        d["technique"] = d.pop("prune")
        d["finetune_epochs"] = d.pop("finetune")
        if self.prune == "structured":
            d["scope"] = None
        if not self.finetune:
            d["finetune_with"] = d["finetune_mode"] = None
        elif not self.finetune_with:
            d["finetune_mode"] = None
        return d


def check_target(target: float) -> float:
    """``target`` as a float in (0, 1), else one line naming the bad value."""
    try:
        value = float(target)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value < 1.0:  # also false for nan
        raise KdbenchError(f"--target must be a fraction in (0, 1), got {target}; e.g. "
                           "--target 0.9 for 90 %")
    return value


def check(c: Compression, registry: dict | None = None) -> None:
    """One line for each bad setting (before any work)."""
    if c.prune not in TECHNIQUES:
        raise KdbenchError(f"unknown --prune {c.prune!r}; choose one of {', '.join(TECHNIQUES)}")
    check_target(c.target)
    if c.scope not in SCOPES:
        raise KdbenchError(f"unknown --scope {c.scope!r}; choose one of {', '.join(SCOPES)}")
    if c.steps < 1 or c.finetune < 0:
        raise KdbenchError("--steps must be at least 1 and --finetune at least 0")
    if c.steps > 1 and c.prune != "structured":
        raise KdbenchError("--steps applies to --prune structured only")
    if c.finetune_mode not in FINETUNE_MODES:
        raise KdbenchError(f"unknown --finetune-mode {c.finetune_mode!r}; choose "
                           f"{' or '.join(FINETUNE_MODES)}")
    if c.prune == "structured" and c.scope != "layer":
        raise KdbenchError("--scope applies to --prune unstructured only (structured pruning "
                           "removes a share of every layer's channels)")
    if c.finetune_with and not c.finetune:
        raise KdbenchError(f"--finetune-with {c.finetune_with} needs --finetune EPOCHS (0 "
                           "epochs: the child is tested as pruned)")
    if c.finetune_with and registry is not None:
        entry = registry.get(c.finetune_with)
        if entry is None:
            raise KdbenchError(f"unknown --finetune-with {c.finetune_with!r}"
                               f"{did_you_mean(c.finetune_with, registry)}; `kdbench methods` "
                               "lists them")
        if entry.modes == ["none"]:
            raise KdbenchError(f"--finetune-with {c.finetune_with} trains without a teacher: "
                               "leave --finetune-with out to fine-tune with cross-entropy alone")
        if c.finetune_mode not in entry.modes:
            raise KdbenchError(f"{c.finetune_with} has no {c.finetune_mode} mode (it has "
                               f"{', '.join(entry.modes)}); pass --finetune-mode")


def teacher_free(registry: dict) -> str:
    """The registry's method that trains without a teacher (mode none): fine-tuning with
    cross-entropy alone."""
    for name, entry in registry.items():
        if "none" in entry.modes:
            return name
    raise KdbenchError("the registry has no method with mode none (cross-entropy alone) to "
                       "fine-tune with; name a distiller with --finetune-with")


def check_prunable_teacher(folder: Path, metrics: dict[str, Any]) -> None:
    """One line unless the teacher of ``folder`` is a finished single-branch one."""
    if metrics.get("kind") != "single":
        raise KdbenchError(
            f"{folder} is a dual-branch teacher: its RGB and frequency branches are coupled "
            "through the RFAMs, so kdbench does not prune it; prune a student run, or a "
            "single-branch teacher (teacher.kind=single)")
    if metrics.get("status") != "finished":
        raise KdbenchError(f"{folder} is not a finished teacher; finish it with `kdbench run`")


def store_of(parent: Path) -> tuple[Path, Path]:
    """The store holding the run folder ``parent`` and its path under the store's ``runs/``
    (or ``teachers/``) folder; one line if it is in no store."""
    parent = Path(parent).resolve()
    for up in parent.parents:
        if up.name in ("runs", "teachers") and (up.parent / up.name).is_dir():
            return up.parent, parent.relative_to(up.parent)
    raise KdbenchError(f"{parent} is not in a result store (no runs/ or teachers/ folder above "
                       "it); give a runs/<dataset>/<student>/<method>/<mode>/seed<k> folder")


def child_dir(parent: Path, c: Compression) -> Path:
    """``<results>/compressed/<the parent's path under the store>/<tag>``."""
    results, rel = store_of(parent)
    if rel.parts[0] == "runs":
        return results / COMPRESSED / Path(*rel.parts[1:]) / c.tag()
    # a teacher (teachers/<dataset>/<folder>): laid out as a run, method "teacher", mode none
    from kdbench.files import read_json

    seed = int(read_json(Path(parent) / "metrics.json").get("seed") or 0)
    return results / COMPRESSED / Path(*rel.parts[1:]) / "teacher" / "none" / f"seed{seed}" \
        / c.tag()
