"""Each kdbench process takes its share of the free cores once (kdbench.threads); a run says
what it ran on (kdbench.provenance) and when it continues on another thread count."""

import subprocess
import sys
import textwrap

import pytest
import torch

from kdbench import threads
from kdbench.threads import CpuShare, busy_elsewhere


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def idle(monkeypatch, tmp_path):
    """A machine with 4 usable cores and nothing else running."""
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.00 0.00 0.00 1/100 123\n")
    monkeypatch.setattr(threads, "LOADAVG", loadavg)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    return loadavg


def _other_worker(folder, n_threads):
    """A process registered as a kdbench worker with ``n_threads``, until its stdin closes."""
    script = textwrap.dedent(f"""
        import sys
        from kdbench.threads import CpuShare
        s = CpuShare({n_threads}, {str(folder)!r}).register()
        s.rebalance()
        print("ready", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_fixed_thread_count_is_honoured(restore_threads, tmp_path):
    with CpuShare(1, tmp_path / "w") as share:
        assert share.threads == 1 and torch.get_num_threads() == 1
    with CpuShare(3, tmp_path / "w") as share:
        assert torch.get_num_threads() == 3


def test_workers_divide_the_cores_and_a_dead_worker_is_forgotten(restore_threads, idle,
                                                                 tmp_path):
    folder = tmp_path / "w"
    share = CpuShare(None, folder).register()
    assert share.rebalance() == 4  # alone on an idle machine: every core
    assert (folder / str(__import__("os").getpid())).read_text() == "4"
    other = _other_worker(folder, 1)
    idle.write_text("0.5 0.2 0.1 2/100 123\n")  # the other worker's thread runs
    try:
        assert share.workers() == 2 and share.others() == [1]
        assert share.rebalance() == 2 and torch.get_num_threads() == 2
    finally:
        other.stdin.close()
        other.wait()
    idle.write_text("0.5 0.2 0.1 1/100 123\n")
    assert share.workers() == 1 and len(list(folder.iterdir())) == 1  # its file removed
    assert share.rebalance() == 4
    share.release()
    assert not list(folder.iterdir())


def test_cores_another_program_keeps_busy_are_left_to_it(restore_threads, idle, tmp_path):
    idle.write_text("1.0 1.0 1.0 3/100 123\n")  # this thread + 2 of other programs
    assert busy_elsewhere(samples=3, interval=0) == 2
    assert CpuShare(None, tmp_path / "w").share() == 2
    idle.write_text("1.0 1.0 1.0 9/100 123\n")  # more busy threads than cores
    assert CpuShare(None, tmp_path / "w").share() == 1


def test_the_api_records_the_thread_count_it_ran_with(restore_threads, tmp_path):
    import kdbench.api as k
    from kdbench.files import read_json
    from tests.conftest import write_prepared

    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    k.run(methods="vanilla", dataset="ff_c40", data_root=data, preset="quick",
          results=tmp_path / "R", settings={"data.size": 16, "train.epochs": 1},
          progress=False, threads=1)
    metrics = read_json(next((tmp_path / "R").rglob("metrics.json")))
    assert metrics["versions"]["torch_threads"] == 1


def test_bad_thread_counts_are_refused_before_work(tmp_path):
    import kdbench.api as k
    from kdbench.errors import KdbenchError

    for bad in (0, -2, 1.5, True):
        with pytest.raises(KdbenchError, match="threads"):
            k.run(methods="vanilla", results=tmp_path / "R", threads=bad)


def test_a_process_waiting_for_a_lock_leaves_its_share_to_the_holder(restore_threads, idle,
                                                                     tmp_path, monkeypatch):
    """While a kdbench process waits for another's lock (store.wait_for_lock) it is no worker
    (its file is gone, so a process starting meanwhile counts without it); it is one again
    after, with the thread count it started with."""
    import os
    import threading
    import time

    from kdbench.train.store import run_lock, wait_for_lock

    monkeypatch.setenv("KDBENCH_WORKERS_DIR", str(tmp_path / "w"))
    mine = tmp_path / "w" / str(os.getpid())
    seen = {}

    def waiter():
        with wait_for_lock(tmp_path / "teacher"):
            seen["after"] = mine.is_file()

    with threads.take_share(None):
        assert mine.is_file()
        with run_lock(tmp_path / "teacher") as held:  # another holder (flock: per open file)
            assert held
            t = threading.Thread(target=waiter)
            t.start()
            time.sleep(0.5)
            seen["waiting"] = mine.is_file()
        t.join(timeout=10)
        assert seen == {"waiting": False, "after": True}
        assert mine.read_text() == "4"  # it announces the count it keeps


def test_the_share_is_fixed_when_the_block_starts_and_kept_when_the_load_changes(
        restore_threads, idle, monkeypatch, tmp_path, tiny_data):
    """The default share is counted once: more load, another worker, an epoch start or a wait
    for a lock later leave the thread count as it was."""
    from tests.test_trainer import _trainer

    monkeypatch.setenv("KDBENCH_WORKERS_DIR", str(tmp_path / "w"))
    counted = []
    real_busy = threads.busy_elsewhere

    def busy(*args, **kwargs):
        counted.append(1)
        return real_busy(*args, **kwargs) + 2 * (len(counted) - 1)  # busier at every count

    monkeypatch.setattr(threads, "busy_elsewhere", busy)
    before = torch.get_num_threads()
    with threads.take_share("auto") as share:
        assert share.threads == 4 and torch.get_num_threads() == 4  # 4 idle cores
        idle.write_text("3.0 3.0 3.0 4/100 123\n")
        monkeypatch.setattr(CpuShare, "others", lambda self: [1, 1])
        _trainer(tiny_data, tmp_path / "run", epochs=2).fit()
        with threads.idle():
            pass
        assert torch.get_num_threads() == 4 and len(counted) == 1
    assert torch.get_num_threads() == before  # restored


def test_take_share_accepts_a_count_or_auto_only(restore_threads, monkeypatch, tmp_path):
    from kdbench.errors import KdbenchError

    monkeypatch.setenv("KDBENCH_WORKERS_DIR", str(tmp_path / "w"))
    with threads.take_share(2) as share:
        assert share.threads == 2 and torch.get_num_threads() == 2
    for bad in (0, -1, 1.5, True, "many"):
        with pytest.raises(KdbenchError, match="threads"), threads.take_share(bad):
            pass
    assert not hasattr(threads, "rebalance_if_shared")


def test_versions_name_the_cpu_and_the_thread_count(restore_threads, monkeypatch, tmp_path):
    from kdbench import provenance
    from kdbench.train.runner import versions

    torch.set_num_threads(2)
    found = versions()
    assert found["torch"] == torch.__version__ and found["torch_threads"] == 2
    assert found["cuda"] == torch.version.cuda and found["cpu_model"]
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Test CPU 9000 @ 3GHz\n")
    monkeypatch.setattr(provenance, "CPUINFO", cpuinfo)
    assert versions()["cpu_model"] == "Test CPU 9000 @ 3GHz"
    monkeypatch.setattr(provenance, "CPUINFO", tmp_path / "none")
    monkeypatch.setattr(provenance.platform, "processor", lambda: "")
    monkeypatch.setattr(provenance.platform, "machine", lambda: "riscv64")
    assert versions()["cpu_model"] == "riscv64"


def test_a_run_continued_on_another_thread_count_says_so(restore_threads, tiny_data, tmp_path,
                                                         capsys):
    from kdbench.files import atomic_torch_save
    from kdbench.train.trainer import load_checkpoint
    from tests.test_trainer import _trainer

    def lines():
        return [line for line in capsys.readouterr().err.splitlines() if "continues on" in line]

    run = tmp_path / "run"
    torch.set_num_threads(1)
    assert _trainer(tiny_data, run, epochs=4).fit(stop_after=1) is None
    assert load_checkpoint(run / "last.pt")["torch_threads"] == 1
    lines()
    torch.set_num_threads(2)
    assert _trainer(tiny_data, run, epochs=4).fit(resume=True, stop_after=2) is None
    assert lines() == ["train: continues on 2 threads; epochs 1-1 ran on 1 (CPU results depend "
                       "on the thread count)"]
    state = load_checkpoint(run / "last.pt")
    assert state["torch_threads"] == 2
    torch.set_num_threads(1)
    assert _trainer(tiny_data, run, epochs=4).fit(resume=True, stop_after=3) is None
    assert lines() == ["train: continues on 1 threads; epochs 2-2 ran on 2 (CPU results depend "
                       "on the thread count)"]
    del state["torch_threads"]  # a checkpoint of an older kdbench: nothing to say
    atomic_torch_save(run / "last.pt", state)
    assert _trainer(tiny_data, run, epochs=4).fit(resume=True, stop_after=3) is None
    assert lines() == []
