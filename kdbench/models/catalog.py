"""The backbones a student or teacher branch can use (`kdbench models`): kdbench's own three
and any timm model matching a pattern, each built once on the CPU and run at one input size
to read its stage maps, parameters and GFLOPs."""

from __future__ import annotations

import difflib
import fnmatch
import logging
import re
import warnings
from dataclasses import asdict, dataclass, field

import pandas as pd
import torch

from kdbench.config import BACKBONES
from kdbench.errors import KdbenchError, first_line
from kdbench.models.backbones import IMAGENET
from kdbench.models.cost import count_params, gflops
from kdbench.models.students import Student, create_student
from kdbench.models.timm_backbones import imagenet_weights, timm_names
from kdbench.progress import progress_bar

log = logging.getLogger(__name__)

SEARCH_HINT = "`kdbench models 'mobilenet*'`"  # how to search timm's models
REASON_CHARS = 160  # a failed row's reason, cut to one short line


@dataclass
class BackboneRow:
    """One backbone: its stage maps and cost as a student (backbone + linear head) at
    ``size`` px, or ``problem``: why it cannot be one (the numbers are then None)."""

    name: str
    builtin: bool
    stages: int | None = None
    channels: list[int] | None = None
    params: int | None = None  # the student's: backbone + linear head
    gflops: float | None = None
    imagenet: bool | None = None  # timm has ImageNet weights for it
    sequential: bool | None = None  # its stages run in turn: usable as a dual-teacher branch
    preact: bool | None = None  # it gives pre-activation stage maps
    problem: str | None = None


@dataclass
class Catalog:
    """The rows of `kdbench models`, with the pattern, the input size and notes (how many
    more names matched, how to search)."""

    pattern: str | None
    size: int
    rows: list[BackboneRow]
    matched: int  # names that matched the pattern (the rows are the first of them)
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        which = f"matching {self.pattern!r}" if self.pattern else "built in"
        return f"backbones {which} (student cost at {self.size} px)"

    def frame(self) -> pd.DataFrame:
        """One row per backbone, the numbers as numbers (params in units, GFLOPs)."""
        return pd.DataFrame([asdict(r) for r in self.rows])

    def text_rows(self) -> list[list[str]]:
        """The rows as the table's cells: name, stages, channels, params (M), GFLOPs, ImageNet,
        dual branch, pre-act maps, and the reason a backbone failed ("" when none did)."""
        return [_cells(r) for r in self.rows]

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(COLUMNS) + " |",
                 "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(r) + " |" for r in self.text_rows()]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def __str__(self) -> str:
        return self.markdown()


COLUMNS = ("name", "stages", "channels", "params (M)", "GFLOPs", "ImageNet", "dual branch",
           "pre-act maps", "problem")


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "no")


def _cells(r: BackboneRow) -> list[str]:
    if r.problem is not None:
        return [r.name, "-", "-", "-", "-", _yes(r.imagenet), "-", "-", r.problem]
    return [r.name, str(r.stages), ",".join(map(str, r.channels or [])),
            f"{(r.params or 0) / 1e6:.2f}", f"{r.gflops:.3g}" if r.gflops is not None else "-",
            _yes(r.imagenet), _yes(r.sequential), _yes(r.preact), ""]


def matching_names(pattern: str | None) -> list[str]:
    """The built-in backbones matching ``pattern`` (fnmatch-style, case-insensitive; all three
    without one), then timm's matching models; one line with close names when none match."""
    if not pattern:
        return list(BACKBONES)
    wanted = pattern.lower()
    names = [n for n in BACKBONES if fnmatch.fnmatchcase(n, wanted)]
    names += [n for n in timm_names() if fnmatch.fnmatchcase(n, wanted) and n not in names]
    if not names:
        near = _close(re.sub(r"[*?\[\]]", "", wanted))
        hint = f" (close: {', '.join(near)})" if near else ""
        raise KdbenchError(f"no backbone matches {pattern!r}{hint}; the pattern is fnmatch-style "
                           f"over timm's model names, e.g. {SEARCH_HINT} or 'resnet1*'")
    return names


def _close(stem: str, n: int = 4) -> list[str]:
    """The ``n`` names whose start is closest to ``stem`` (a pattern without its wildcards)."""
    if not stem:
        return []

    def score(name: str) -> float:
        return difflib.SequenceMatcher(None, stem, name[:len(stem) + 1]).ratio()

    ranked = sorted([*BACKBONES, *timm_names()], key=score, reverse=True)
    return [name for name in ranked[:n] if score(name) >= 0.6]


def _one_line(exc: BaseException) -> str:
    """``exc`` as one short line: a kdbench error's problem (its fix, after the last "; ",
    is for a run), another error's type and message."""
    text = first_line(exc, 10_000)
    if isinstance(exc, KdbenchError):
        text = text.rsplit("; ", 1)[0]
    else:
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 3] + "..."


def _imagenet(name: str) -> bool:
    return name in IMAGENET if name in BACKBONES else imagenet_weights(name)


def describe(name: str, size: int) -> BackboneRow:
    """Build ``name`` as a student on the CPU and run one ``size`` px image through it: its
    stage maps, parameters, GFLOPs and what it can serve as; a row with the one-line reason
    when it cannot be built or run (never an exception)."""
    row = BackboneRow(name, builtin=name in BACKBONES)
    try:
        row.imagenet = _imagenet(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            student = create_student(name)
    except Exception as exc:  # any model timm lists: report why, go on with the next
        row.problem = f"cannot be built: {_one_line(exc)}"
        return row
    try:
        _check_run(student, size)
        row.gflops = gflops(student, size)
    except Exception as exc:
        row.problem = f"does not run at {size} px: {_one_line(exc)}"
        return row
    backbone = student.backbone
    row.stages, row.channels = len(student.stage_channels), list(student.stage_channels)
    row.params = count_params(student)
    row.sequential = bool(backbone.sequential)
    try:
        row.preact = backbone.preact_problem() is None
    except Exception as exc:  # the trace of where stages end failed: no pre-activation maps
        log.debug(f"{name}: no pre-activation maps ({_one_line(exc)})")
        row.preact = False
    return row


def _check_run(student: Student, size: int) -> None:
    """One eval-mode forward of a ``size`` px image: a 4-D map per stage, with the channels the
    backbone declares."""
    student.eval()
    with torch.no_grad():
        out = student(torch.zeros(1, 3, size, size))
    got = [tuple(f.shape) for f in out.feats]
    if len(got) != len(student.stage_channels) or any(
            len(s) != 4 or s[1] != c for s, c in zip(got, student.stage_channels)):
        raise ValueError(f"stage maps {got} do not match the declared channels "
                         f"{student.stage_channels}")


def catalog(pattern: str | None = None, size: int = 64, limit: int = 25,
            progress: bool = True) -> Catalog:
    """The backbones matching ``pattern`` (see :func:`matching_names`), at most ``limit`` of
    them, each described at ``size`` px (:func:`describe`)."""
    names = matching_names(pattern)
    shown = names[:limit]
    rows: list[BackboneRow] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("building backbones", total=len(shown))
        for name in shown:
            bar.update(task, info=name)
            rows.append(describe(name, size))
            bar.update(task, advance=1)
    notes = _notes(pattern, len(names), len(shown), rows)
    log.debug(f"models {pattern!r}: {len(names)} matched, {len(rows)} described")
    return Catalog(pattern, size, rows, len(names), notes)


def _notes(pattern: str | None, matched: int, shown: int, rows: list[BackboneRow]) -> list[str]:
    notes: list[str] = []
    if matched > shown:
        more = matched - shown
        notes.append(f"{more} more backbone{'s' * (more != 1)} matched {pattern!r} "
                     f"({matched} in all); raise --limit to list them")
    failed = sum(r.problem is not None for r in rows)
    if failed:
        notes.append(f"{failed} of {len(rows)} cannot serve as a backbone (see problem)")
    notes.append("params, GFLOPs: the student's (backbone + linear head); dual branch: its "
                 "stages run in turn (a dual teacher's branch); pre-act maps: before the final "
                 "activation")
    if not pattern:
        notes.append(f"kdbench's own three; any timm CNN works too ({len(timm_names())} timm "
                     f"models): search them with a pattern, e.g. {SEARCH_HINT}")
    return notes

