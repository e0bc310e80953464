"""A local launcher's worker process: runs kdbench commands one after the other, as the
launcher hands them over, so Python, torch and the data are loaded once per worker, not once
per run.

Protocol: one JSON line per job on stdin, ``{"argv": [...], "log": "<file>"}``; the worker
runs ``kdbench <argv>`` with its stdout and stderr (file descriptors 1 and 2, so C-level output
too) appended to the log, then writes the exit status as one line on its original stdout.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def serve() -> None:
    """Serve jobs from stdin until it closes."""
    from kdbench.cli import main

    channel = os.dup(1)  # the launcher's pipe; fds 1 and 2 go to each job's log
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    for line in sys.stdin:
        job = json.loads(line)
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        try:
            code = main(list(job["argv"]))
        except BaseException:  # noqa: BLE001 - reported in the log and as a status
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
            os.close(log)
        os.write(channel, f"{int(code)}\n".encode())


if __name__ == "__main__":
    serve()
