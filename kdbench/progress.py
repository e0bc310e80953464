"""Rich progress bars shared by generation, preparation and training."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, soft_wrap=True)  # log lines are never wrapped mid-line
TRAINING_KEPT = "finished epochs are kept - run the same command again to continue"


@contextmanager
def keeping(note: str) -> Iterator[None]:
    """An interrupt (Ctrl-C) within the block carries ``note``, what the interrupted step keeps
    (e.g. "the videos generated so far are kept"), for the CLI to say; the innermost step's
    note wins."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if not hasattr(exc, "kept"):
            exc.kept = note  # type: ignore[attr-defined]
        raise


def kept_on_interrupt(exc: KeyboardInterrupt) -> str:
    """What the step that ``exc`` interrupted keeps (training's note when no step said)."""
    return getattr(exc, "kept", TRAINING_KEPT)


def stdout_console() -> Console:
    """Console for command output (tables): full width even when piped."""
    return Console(width=None if sys.stdout.isatty() else 200)


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress]:
    """A progress bar on stderr with a free-text ``info`` field (loss, throughput); shown on a
    terminal only (logs get the one-line summaries the callers print instead)."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not (enabled and console.is_terminal),
        transient=False,
    )
    bar_add = bar.add_task

    def add_task(description: str, **kwargs):
        kwargs.setdefault("info", "")
        return bar_add(description, **kwargs)

    bar.add_task = add_task  # type: ignore[method-assign]
    with bar:
        yield bar
