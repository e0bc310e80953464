"""Where kdbench's log records go when kdbench itself runs (the CLI, a launched job): stderr,
rich on a terminal, plain lines otherwise. A library caller configures logging as it likes."""

from __future__ import annotations

import logging
import sys


def to_stderr(level: int = logging.INFO) -> None:
    """kdbench's records on stderr: rich on a terminal, plain unwrapped lines otherwise (so a
    path in a log file stays on one line for grep); replaces the handler a call before set."""
    log = logging.getLogger("kdbench")
    for handler in [h for h in log.handlers if getattr(h, "kdbench", False)]:
        log.removeHandler(handler)
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        from kdbench.progress import console

        handler: logging.Handler = RichHandler(console=console, show_time=False,
                                               show_path=False, show_level=False)
        handler.setFormatter(_Plain("%(message)s"))
    else:
        handler = _Stderr()
        handler.setFormatter(_Plain("%(message)s"))
    handler.kdbench = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


class _Stderr(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is at each record (a worker's job
    log, a test's capture), not the stream it was created with."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Plain(logging.Formatter):
    """The message, prefixed with ``kdbench: <level>:`` when it is a warning or an error."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING and not text.startswith("kdbench: "):
            return f"kdbench: {record.levelname.lower()}: {text}"
        return text
