"""Run locks: a busy lock is told from a file system that cannot lock; the lock folder."""

import errno
import fcntl
import hashlib
import os
import subprocess
import sys
import textwrap
import types

import pytest

from kdbench.errors import LockUnsupportedError
from kdbench.train import store
from kdbench.train.store import (
    LOCK_DIR_ENV,
    check_locking,
    lock_dir,
    lock_path,
    locks_in,
    run_lock,
    wait_for_lock,
)

UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP)


@pytest.fixture(autouse=True)
def no_lock_dir(monkeypatch):
    monkeypatch.delenv(LOCK_DIR_ENV, raising=False)


def _flock_failing(monkeypatch, code, blocking_code=None):
    """The store's ``fcntl.flock`` raises ``code`` (``blocking_code`` when it would block)."""
    calls = []

    def flock(handle, op):
        calls.append(op)
        if op & fcntl.LOCK_UN:
            return
        failing = code if op & fcntl.LOCK_NB or blocking_code is None else blocking_code
        raise OSError(failing, os.strerror(failing))

    fake = types.SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB,
                                 LOCK_UN=fcntl.LOCK_UN)
    monkeypatch.setattr(store, "fcntl", fake)
    return calls


def _says_unsupported(exc_info, folder):
    message = str(exc_info.value)
    assert "\n" not in message
    assert str(folder) in message and "--lock-dir" in message and "-o flock" in message


@pytest.mark.parametrize("code", UNSUPPORTED, ids=errno.errorcode.get)
def test_a_file_system_without_locks_is_reported_not_taken_for_a_busy_run(monkeypatch, tmp_path,
                                                                         code):
    _flock_failing(monkeypatch, code)
    run_dir = tmp_path / "runs" / "a"
    with pytest.raises(LockUnsupportedError) as got:
        check_locking(tmp_path / "runs")
    _says_unsupported(got, tmp_path / "runs")
    assert not list((tmp_path / "runs").iterdir())  # the probe file is removed
    with pytest.raises(LockUnsupportedError) as got:
        with run_lock(run_dir):
            pytest.fail("the run went ahead without its lock")
    _says_unsupported(got, run_dir)
    with pytest.raises(LockUnsupportedError) as got:
        with wait_for_lock(run_dir):
            pytest.fail("the wait ended without the lock")
    _says_unsupported(got, run_dir)


def test_a_blocking_lock_that_fails_raises_rather_than_runs_unlocked(monkeypatch, tmp_path):
    """Busy when asked without waiting, then the wait itself fails: an error, never a run."""
    calls = _flock_failing(monkeypatch, errno.EWOULDBLOCK, blocking_code=errno.ENOLCK)
    with pytest.raises(LockUnsupportedError):
        with wait_for_lock(tmp_path / "teacher"):
            pytest.fail("the wait ended without the lock")
    assert [op & fcntl.LOCK_NB for op in calls] == [fcntl.LOCK_NB, 0]
    _flock_failing(monkeypatch, errno.EWOULDBLOCK)  # "would block" from a blocking call
    with pytest.raises(LockUnsupportedError):
        with run_lock(tmp_path / "teacher", wait=True):
            pytest.fail("the run went ahead without its lock")


@pytest.mark.parametrize("code", (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES),
                         ids=errno.errorcode.get)
def test_would_block_means_busy(monkeypatch, tmp_path, code):
    _flock_failing(monkeypatch, code)
    with run_lock(tmp_path / "a") as mine:
        assert mine is False


def test_an_oserror_without_its_message_is_still_told_apart(monkeypatch, tmp_path):
    def flock(handle, op):
        raise OSError(errno.EWOULDBLOCK if op & fcntl.LOCK_NB else errno.ENOLCK)

    monkeypatch.setattr(store, "fcntl", types.SimpleNamespace(
        flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB, LOCK_UN=fcntl.LOCK_UN))
    with run_lock(tmp_path / "a") as mine:
        assert mine is False
    with pytest.raises(LockUnsupportedError, match=os.strerror(errno.ENOLCK)):
        with run_lock(tmp_path / "a", wait=True):
            pass


def test_check_locking_passes_where_locks_work_and_creates_the_folder(tmp_path):
    check_locking(tmp_path / "new" / "results")
    assert (tmp_path / "new" / "results").is_dir()
    assert not list((tmp_path / "new" / "results").iterdir())


def test_the_lock_folder_is_set_by_a_block_or_the_environment(monkeypatch, tmp_path):
    run_dir = tmp_path / "results" / "runs" / "a"
    assert lock_dir() is None and lock_path(run_dir) == run_dir / "run.lock"
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "env-locks"))
    assert lock_dir() == tmp_path / "env-locks"
    with locks_in(tmp_path / "locks"):
        assert lock_dir() == tmp_path / "locks"
        with locks_in(None):  # no folder given: the default
            assert lock_dir() == tmp_path / "env-locks"
        with run_lock(run_dir) as mine:
            assert mine
        digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:32]
        assert [p.name for p in (tmp_path / "locks").iterdir()] == [f"{digest}.lock"]
        assert not (run_dir / "run.lock").exists()
    assert lock_dir() == tmp_path / "env-locks"  # restored after the block
    with run_lock(run_dir) as mine:
        assert mine
    assert [p.name for p in (tmp_path / "env-locks").iterdir()] == [f"{digest}.lock"]
    assert not (run_dir / "run.lock").exists()


def test_the_unsupported_error_names_the_lock_folder(monkeypatch, tmp_path):
    _flock_failing(monkeypatch, errno.ENOLCK)
    with locks_in(tmp_path / "locks"), pytest.raises(LockUnsupportedError) as got:
        check_locking(tmp_path / "results")
    _says_unsupported(got, tmp_path / "locks")
    assert not (tmp_path / "results").exists()


def _holder(run_dir, env):
    """Another process holding ``run_dir``'s lock until its stdin closes."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from kdbench.train.store import run_lock
        with run_lock(Path({str(run_dir)!r})) as mine:
            print("held" if mine else "busy", flush=True)
            sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("how", ("block", "environment"))
def test_claims_on_one_run_exclude_each_other_across_processes_in_a_lock_folder(
        monkeypatch, tmp_path, how):
    locks, run_dir = tmp_path / "locks", tmp_path / "results" / "a"
    env = {**os.environ, LOCK_DIR_ENV: str(locks)}
    other = _holder(run_dir, env)
    try:
        if how == "environment":
            monkeypatch.setenv(LOCK_DIR_ENV, str(locks))
        with locks_in(locks if how == "block" else None):
            with run_lock(run_dir) as mine:
                assert mine is False  # the other process holds it
            with locks_in(tmp_path / "elsewhere"), run_lock(run_dir) as mine:
                assert mine  # another lock folder: another lock
    finally:
        other.stdin.close()
        other.wait(timeout=30)
    assert len(list(locks.iterdir())) == 1 and not (run_dir / "run.lock").exists()
    with locks_in(locks), run_lock(run_dir) as mine:
        assert mine  # its holder exited


@pytest.mark.parametrize("launcher", ["inprocess", "local"])
@pytest.mark.parametrize("code", UNSUPPORTED, ids=errno.errorcode.get)
def test_kdbench_run_on_a_store_without_locks_is_one_line_and_exit_2(monkeypatch, tmp_path,
                                                                    capsys, code, launcher):
    from kdbench.cli import main
    from tests.conftest import write_prepared

    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    _flock_failing(monkeypatch, code)
    rc = main(["run", "--methods", "vanilla", "--dataset", "ff_c40", "--data-root", str(data),
               "--preset", "quick", "--results", str(tmp_path / "R"), "--launcher", launcher,
               "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert rc == 2 and len(err) == 1 and "--lock-dir" in err[0] and str(tmp_path / "R") in err[0]
    # nothing trained, nothing waited for (a wait would hang until pytest-timeout stops it)
    assert not list((tmp_path / "R").rglob("metrics.json"))
