"""No lost work: a killed run continues on the next `kdbench run`, `--restart` discards on
purpose, and several processes share one store, each run trained once (issue 11, items 1, 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.train.store import run_lock
from tests.conftest import write_prepared

ROOT = Path(__file__).resolve().parent.parent
RUN = "runs/ff_c40/resnet18_thin/vanilla/none/seed0"
# `kdbench run` in a child process that SIGKILLs itself right after writing epoch ``stop``'s
# history, the way a machine dies: no handler, no cleanup
KILLED_AFTER_EPOCH = textwrap.dedent("""
    import os, signal, sys
    import kdbench.train.trainer as trainer
    write, stop = trainer.atomic_write_jsonl, int(os.environ["KILL_AFTER_EPOCH"])
    def write_then_die(path, rows):
        write(path, rows)
        if path.name == "history.jsonl" and len(rows) == stop:
            os.kill(os.getpid(), signal.SIGKILL)
    trainer.atomic_write_jsonl = write_then_die
    from kdbench.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _argv(data: Path, results: Path, *extra: str) -> list[str]:
    return ["run", "--methods", "vanilla", "--dataset", "ff_c40", "--data-root", str(data),
            "--preset", "quick", "--set", "data.size=16", "--set", "train.epochs=4",
            "--results", str(results), "--no-progress", "--threads", "1", *extra]


def _metrics(results: Path) -> dict:
    return json.loads((results / RUN / "metrics.json").read_text())


@pytest.mark.slow
def test_a_killed_run_continues_with_no_flag_and_ends_as_an_uninterrupted_one(tmp_path,
                                                                               capsys):
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_EPOCH,
                             *_argv(data, tmp_path / "B")], env=_env(KILL_AFTER_EPOCH="2"),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "B" / RUN / "metrics.json").exists()
    assert (tmp_path / "B" / RUN / "last.pt").is_file()

    assert main(_argv(data, tmp_path / "B")) == 0  # the same command, no flag
    err = capsys.readouterr().err
    assert "continue resnet18_thin/vanilla/none/seed0: an unfinished run at epoch 2" in err
    assert "epoch 1/4" not in err and "epoch 3/4" in err

    assert main(_argv(data, tmp_path / "A")) == 0  # uninterrupted
    a, b = _metrics(tmp_path / "A"), _metrics(tmp_path / "B")
    assert (a["test"], a["val"], a["best_epoch"]) == (b["test"], b["val"], b["best_epoch"])
    keep = ("epoch", "lr", "train_loss", "train_acc", "val_acc", "val_auc")
    hist = [[{k: r[k] for k in keep} for r in map(json.loads, (p / RUN / "history.jsonl")
                                                   .read_text().splitlines())]
            for p in (tmp_path / "A", tmp_path / "B")]
    assert hist[0] == hist[1] and len(hist[0]) == 4


@pytest.mark.slow
def test_restart_discards_on_purpose_and_a_finished_run_is_never_retrained(tmp_path, capsys):
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    results = tmp_path / "R"
    assert main(_argv(data, results, "--set", "train.epochs=1")) == 0
    first = _metrics(results)
    capsys.readouterr()
    assert main(_argv(data, results, "--set", "train.epochs=1")) == 0
    assert "skip resnet18_thin/vanilla/none/seed0: finished" in capsys.readouterr().err
    assert _metrics(results)["finished_at"] == first["finished_at"]
    (results / RUN / "cross").mkdir()
    (results / RUN / "cross" / "celebdf.json").write_text("{}")
    time.sleep(1.1)  # finished_at has a resolution of one second
    assert main(_argv(data, results, "--set", "train.epochs=1", "--restart")) == 0
    err = capsys.readouterr().err
    assert "restart resnet18_thin/vanilla/none/seed0: discarded a finished run (test acc" in err
    again = _metrics(results)
    assert again["finished_at"] > first["finished_at"] and again["test"] == first["test"]
    assert not (results / RUN / "cross").exists()  # evaluations of the old weights went too
    (results / RUN / "metrics.json").unlink()  # as if killed after its last epoch
    assert main(_argv(data, results, "--set", "train.epochs=1", "--restart")) == 0
    assert "discarded an unfinished run at epoch 1" in capsys.readouterr().err


@pytest.mark.slow
def test_three_processes_share_a_plan_and_train_each_run_once(tmp_path):
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    results = tmp_path / "R"
    argv = ["run", "--methods", "vanilla,at", "--modes", "rgb", "--seeds", "0,1",
            "--dataset", "ff_c40", "--data-root", str(data), "--preset", "quick", "--set",
            "data.size=16", "--results", str(results), "--no-progress"]
    procs = [subprocess.Popen([sys.executable, "-m", "kdbench.cli", *argv], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(3)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], logs
    runs = ["resnet18_thin/vanilla/none/seed0", "resnet18_thin/vanilla/none/seed1",
            "resnet18_thin/at/rgb/seed0", "resnet18_thin/at/rgb/seed1"]
    text = "\n".join(logs)
    for run in runs:  # trained by exactly one of the three processes
        assert text.count(f"done {run}:") == 1, (run, text)
        assert json.loads((results / "runs/ff_c40" / run / "metrics.json").read_text())[
            "status"] == "finished"
    assert text.count("done teacher:") == 1  # the others waited for it, then loaded it
    assert len(list((results / "runs").rglob("metrics.json"))) == len(runs)


def test_the_lock_of_a_killed_process_is_released(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from kdbench.train.store import run_lock
            with run_lock(__import__("pathlib").Path({str(run_dir)!r})) as mine:
                print("locked" if mine else "busy", flush=True)
                time.sleep(120)
        """)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with run_lock(run_dir) as mine:
            assert not mine  # held by the other process
        holder.kill()  # SIGKILL: no cleanup in the holder
        holder.wait(timeout=30)
        with run_lock(run_dir) as mine:
            assert mine  # the kernel dropped the lock with the process
    finally:
        holder.kill()


def test_restart_keeps_what_another_process_wrote_after_this_one_started(tmp_path):
    from kdbench.files import store_time
    from kdbench.train.runner import _discard

    old, new = tmp_path / "old", tmp_path / "new"
    for run in (old, new):
        run.mkdir()
    (old / "last.pt").write_bytes(b"x")
    (old / "history.jsonl").write_text('{"epoch": 1}\n')
    time.sleep(0.05)
    started = store_time(tmp_path)
    time.sleep(0.05)
    (new / "last.pt").write_bytes(b"x")  # another process's progress since this start
    assert _discard(old, started) == "an unfinished run at epoch 1"
    assert not (old / "last.pt").exists() and not (old / "history.jsonl").exists()
    assert _discard(new, started) is None and (new / "last.pt").exists()


@pytest.mark.slow
def test_a_full_disk_mid_run_loses_no_epoch(tmp_path, capsys, monkeypatch):
    """ENOSPC on the real write path (fsync of epoch 2's last.pt): exit 2, no temp file left,
    epoch 1's last.pt intact, and the next `kdbench run` continues from it."""
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    results = tmp_path / "R"
    real_fsync, seen = os.fsync, []

    def fsync(fd):
        if ".last.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            seen.append(fd)
            if len(seen) == 2:
                raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr("kdbench.files.os.fsync", fsync)
    assert main(_argv(data, results, "--set", "train.epochs=3")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "kdbench: error: No space left on device")
    assert not list(results.rglob(".*.tmp"))
    monkeypatch.setattr("kdbench.files.os.fsync", real_fsync)
    from kdbench.train.trainer import load_checkpoint

    assert load_checkpoint(results / RUN / "last.pt")["epoch"] == 1
    assert main(_argv(data, results, "--set", "train.epochs=3")) == 0
    err = capsys.readouterr().err
    assert "an unfinished run at epoch 1" in err and "epoch 2/3" in err
    assert _metrics(results)["status"] == "finished"


@pytest.mark.slow
def test_keep_checkpoints_drops_them_from_finished_runs_too(tmp_path, capsys):
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    results = tmp_path / "R"
    argv = _argv(data, results, "--set", "train.epochs=1")
    assert main(argv) == 0
    assert {p.name for p in (results / RUN).glob("*.pt")} == {"best.pt", "last.pt"}
    assert main([*argv, "--keep-checkpoints", "best"]) == 0  # a finished run is pruned too
    assert {p.name for p in (results / RUN).glob("*.pt")} == {"best.pt"}
    assert main([*argv, "--keep-checkpoints", "none"]) == 0
    assert not list((results / RUN).glob("*.pt")) and _metrics(results)["status"] == "finished"
    capsys.readouterr()
    assert main(["eval", str(results / RUN), "--dataset", "ff_c40", "--data-root",
                 str(data)]) == 2
    assert "--keep-checkpoints none" in capsys.readouterr().err
