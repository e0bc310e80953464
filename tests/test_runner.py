"""The run lock that lets two `kdbench run` processes share one result store."""

import os
import subprocess
import sys

from kdbench.train.runner import run_lock


def test_a_live_holder_keeps_the_run_and_a_dead_ones_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    with run_lock(run) as mine:
        assert mine and (run / "run.lock").read_text() == str(os.getpid())
        with run_lock(run) as again:  # held by a live process (this one)
            assert not again
    assert not (run / "run.lock").exists()  # released
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (run / "run.lock").write_text(dead)
    with run_lock(run) as mine:
        assert mine
