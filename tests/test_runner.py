"""The run lock that lets two `kdbench run` processes share one result store."""

import os
import signal
import subprocess
import sys
import time

from kdbench.train.store import run_lock

HOLD = """
import sys, time
from pathlib import Path
from kdbench.train.store import run_lock
with run_lock(Path(sys.argv[1])) as mine:
    print("held" if mine else "busy", flush=True)
    time.sleep(60)
"""


def test_the_lock_is_exclusive_released_on_exit_and_dropped_when_the_holder_is_killed(tmp_path):
    run = tmp_path / "run"
    with run_lock(run) as mine:
        assert mine and (run / "run.lock").read_text().strip() == str(os.getpid())
        with run_lock(run) as again:  # a second claim, even from the same process, is refused
            assert not again
    with run_lock(run) as mine:  # released at the end of the block
        assert mine
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with run_lock(run) as mine:
            assert not mine
        os.kill(holder.pid, signal.SIGKILL)  # no chance to clean up
        holder.wait(timeout=10)
        time.sleep(0.1)
        with run_lock(run) as mine:
            assert mine
    finally:
        holder.kill()
