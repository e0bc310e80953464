"""A local launcher's worker process: runs jobs one after the other, as the launcher hands
them over, so Python, torch and the data are loaded once per worker, not once per run.

Protocol: one JSON line per job on stdin, ``{"request": <RunRequest JSON>, "threads": n,
"log": "<file>"}``; the worker runs the job in process (:func:`kdbench.launch.jobs.run_job`)
with its stdout and stderr (file descriptors 1 and 2, so C-level output too) appended to the
log, then writes its exit status and run counts as one JSON line on its original stdout. It
dies with the launcher (Linux: the parent-death signal, set here rather than in a fork of the
launcher).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import traceback


def die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this process when ``parent`` (the launcher) dies; its run keeps its last
    finished epoch, and the launcher run again continues from it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the signal was set
        os.kill(os.getpid(), signal.SIGTERM)


def serve() -> None:
    """Serve jobs from stdin until it closes."""
    if sys.platform == "linux" and len(sys.argv) > 1:
        die_with_parent(int(sys.argv[1]))
    from kdbench.errors import os_error_line
    from kdbench.launch.jobs import run_job
    from kdbench.logs import to_stderr
    from kdbench.request import RunRequest

    channel = os.dup(1)  # the launcher's pipe; fds 1 and 2 go to each job's log
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    to_stderr()
    for line in sys.stdin:
        job = json.loads(line)
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        counts: dict[str, int] = {}
        try:
            code, counts = run_job(RunRequest.from_json(job["request"]), job.get("threads"))
        except OSError as exc:  # disk full, permission denied: one line, as the CLI says it
            print(os_error_line(exc), file=sys.stderr)
            code = 2
        except BaseException:  # noqa: BLE001 - reported in the log and as a status
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
            os.close(log)
        os.write(channel, (json.dumps({"code": int(code), "counts": counts}) + "\n").encode())


if __name__ == "__main__":
    serve()
