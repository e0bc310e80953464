"""kdbench as Python functions: what the `kdbench` command does, usable from a notebook.

>>> import kdbench.api as k
>>> summary = k.run(methods="all", preset="quick", results="/tmp/r")
>>> k.table("comparison", results="/tmp/r")          # a DataFrame
>>> k.plot("curves", results="/tmp/r")               # the figure's path

Every function checks its arguments before it imports torch, and raises
:class:`kdbench.errors.KdbenchError` (one line: the problem and the fix) on bad input.
kdbench reports through :mod:`logging` (logger ``"kdbench"``); ``logging.basicConfig(
level=logging.INFO)`` shows its progress lines, and a notebook that sets no handler sees only
warnings. ``progress=False`` hides the progress bars.

This module is a facade; the functions live in modules by command family:
:mod:`kdbench.running` (run, reproduce; their options are the fields of
:class:`kdbench.request.RunRequest`), :mod:`kdbench.reporting` (runs, tables, figures, eval,
methods, models, bench), :mod:`kdbench.data.commands` (synth, prepare) and
:mod:`kdbench.deploy.api` (predict, export, quantize), :mod:`kdbench.diagnose` (diagnose).
"""

from __future__ import annotations

from kdbench.compress.api import compress
from kdbench.config import DEFAULT_RESULTS
from kdbench.data.commands import PREPARE_SOURCES, prepare, synth
from kdbench.deploy.api import export, predict, quantize
from kdbench.diagnose import Diagnosis, diagnose
from kdbench.plan import Plan, plan, run_name
from kdbench.reporting import (
    PLOT_FORMATS,
    bench,
    compare,
    evaluate,
    figure_kinds,
    methods,
    models,
    plan_report,
    plot,
    report,
    runs,
    table,
    table_kinds,
)
from kdbench.request import KEEP_CHECKPOINTS, LAUNCHERS, RunRequest
from kdbench.running import REPRO_LOG, execute, reproduce, run
from kdbench.summary import LaunchSummary, RunSummary
from kdbench.transfer.api import transfer

__all__ = [
    "DEFAULT_RESULTS",
    "KEEP_CHECKPOINTS",
    "LAUNCHERS",
    "PLOT_FORMATS",
    "PREPARE_SOURCES",
    "REPRO_LOG",
    "Diagnosis",
    "LaunchSummary",
    "Plan",
    "RunRequest",
    "RunSummary",
    "bench",
    "compress",
    "compare",
    "diagnose",
    "evaluate",
    "execute",
    "export",
    "figure_kinds",
    "methods",
    "models",
    "plan",
    "plan_report",
    "plot",
    "predict",
    "prepare",
    "quantize",
    "report",
    "reproduce",
    "run",
    "run_name",
    "runs",
    "synth",
    "table",
    "table_kinds",
    "transfer",
]
