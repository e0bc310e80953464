"""Launchers: print, local worker processes, submitit (local cluster), --only."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.launch.jobs import plan_jobs
from kdbench.launch.local import log_path, slots
from kdbench.plan import plan
from kdbench.request import RunRequest
from tests.conftest import write_prepared

RUNS = ["resnet18_thin/vanilla/none/seed0", "resnet18_thin/at/rgb/seed0",
        "resnet18_thin/at/both/seed0"]


def _argv(data: Path, results: Path, *extra: str, methods: str = "vanilla,at") -> list[str]:
    return ["run", "--methods", methods, "--dataset", "ff_c40", "--data-root", str(data),
            "--preset", "quick", "--set", "data.size=16", "--set", "train.epochs=1",
            "--results", str(results), "--no-progress", *extra]


def _tests(results: Path) -> dict[str, dict]:
    """Each finished student run's test metrics, by run name."""
    out = {}
    for m in (results / "runs").rglob("metrics.json"):
        rel = m.parent.relative_to(results / "runs" / "ff_c40")
        out[str(rel)] = json.loads(m.read_text())["test"]
    return out


@pytest.fixture
def data(tmp_path):
    return write_prepared(tmp_path / "prep", dataset="ff_c40")


def test_plan_jobs_put_the_teacher_first_and_name_each_run(data, tmp_path):
    request = RunRequest.make("run", methods="vanilla,at", dataset="ff_c40", data_root=data,
                              modes="rgb", preset="quick", results=tmp_path / "R",
                              settings=["train.lr=0.01"])
    jobs = plan_jobs(plan(request))
    assert [j.name for j in jobs] == ["teacher", *RUNS[:2]]
    assert jobs[2].argv()[-2:] == ["--only", RUNS[1]]
    assert "--set train.lr=0.01" in jobs[1].shell() and "--device cpu" in jobs[1].shell()
    assert RunRequest.from_json(jobs[1].request.to_json()) == jobs[1].request
    # without a distillation run there is no teacher job
    alone = plan(RunRequest.make("run", methods="vanilla", dataset="ff_c40", data_root=data,
                                 preset="quick", results=tmp_path / "R"))
    assert [j.name for j in plan_jobs(alone)] == [RUNS[0]]


def test_slots_share_the_cores_or_take_the_gpus_in_turn():
    assert [s.gpu for s in slots(3, ["0", "1"])] == ["0", "1", "0"]
    assert all(s.threads >= 1 and s.gpu is None for s in slots(2, []))


@pytest.mark.slow
def test_print_lists_one_command_per_run_and_running_them_gives_the_same_store(
        capsys, data, tmp_path):
    assert main(_argv(data, tmp_path / "P", "--launcher", "print")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(RUNS)
    assert lines[0].startswith("kdbench run ") and lines[0].endswith("--only teacher")
    assert [shlex.split(line)[-1] for line in lines[1:]] == RUNS
    assert not (tmp_path / "P").exists() or not list((tmp_path / "P").rglob("*.json"))
    for line in lines:  # by hand, one after the other
        assert main([*shlex.split(line)[1:], "--threads", "1"]) == 0
    assert main(_argv(data, tmp_path / "S", "--threads", "1")) == 0
    by_hand, plain = _tests(tmp_path / "P"), _tests(tmp_path / "S")
    assert sorted(by_hand) == sorted(RUNS) and by_hand == plain


def test_only_runs_one_run_and_names_the_runs_when_wrong(capsys, data, tmp_path):
    assert main(_argv(data, tmp_path / "R", "--only", RUNS[0])) == 0
    assert list(_tests(tmp_path / "R")) == ["resnet18_thin/vanilla/none/seed0"]
    assert not (tmp_path / "R" / "teachers").exists()  # vanilla needs no teacher
    capsys.readouterr()
    assert main(_argv(data, tmp_path / "R", "--only", "resnet18_thin/at/rbg/seed0")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean" in err[0] and "--launcher print" in err[0]


@pytest.mark.parametrize(("extra", "message"), [
    (["--launcher", "local", "--restart"], "drop --restart"),
    (["--workers", "2"], "--workers and --gpus go with --launcher local"),
    (["--launcher", "print", "--slurm-time", "5"], "--slurm-* options go with --launcher slurm"),
    (["--slurm-cpus-per-job", "4"], "--slurm-* options go with --launcher slurm"),
    (["--launcher", "slurm"], "no SLURM here"),
])
def test_launcher_bad_input_is_one_line(capsys, data, tmp_path, extra, message, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    assert main(_argv(data, tmp_path / "R", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdbench: error:") and message in err[0]


@pytest.mark.slow
def test_local_workers_match_a_sequential_run_and_a_killed_launch_resumes(capsys, data,
                                                                         tmp_path):
    seq = tmp_path / "S"
    assert main(_argv(data, seq, "--threads", "1")) == 0
    # kill the launcher once the first student run has finished, then launch again
    par = tmp_path / "L"
    cmd = [sys.executable, "-m", "kdbench", *_argv(data, par, "--launcher", "local",
                                                   "--workers", "2")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while not list((par / "runs").rglob("metrics.json")) and time.time() < deadline:
            time.sleep(0.1)
            assert proc.poll() is None, "the launcher ended before it was killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    first = {p: p.stat().st_mtime_ns for p in (par / "runs").rglob("metrics.json")}
    time.sleep(1)  # its workers die with it (SIGTERM): no process holds a run any more
    capsys.readouterr()
    assert main(_argv(data, par, "--launcher", "local", "--workers", "2")) == 0
    err = capsys.readouterr().err
    assert f"{len(first)} finished" in err
    for path, stamp in first.items():  # not redone
        assert path.stat().st_mtime_ns == stamp
    assert _tests(par) == _tests(seq)
    assert log_path(par, RUNS[1]).is_file()


@pytest.mark.slow
def test_a_failed_run_is_reported_and_the_others_go_on(capsys, data, tmp_path):
    bad = tmp_path / "bad.yaml"  # an entry whose class raises in its loss
    (tmp_path / "bad_kd.py").write_text(
        "from kdbench.methods import Distiller\n"
        "class Bad(Distiller):\n"
        "    def forward_train(self, batch):\n"
        "        raise RuntimeError('boom')\n")
    bad.write_text("bad:\n  entry: bad_kd.py:Bad\n  modes: [rgb]\n  defaults: {}\n")
    argv = _argv(data, tmp_path / "R", "--launcher", "local", "--workers", "2",
                 "--registry", str(bad), methods="vanilla,bad")
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1
    assert "failed resnet18_thin/bad/rgb/seed0" in err and "boom" in log_path(
        tmp_path / "R", "resnet18_thin/bad/rgb/seed0").read_text()
    assert "resnet18_thin/vanilla/none/seed0" in _tests(tmp_path / "R")


submitit = pytest.importorskip("submitit", reason="the slurm extra (submitit) is not installed")


@pytest.mark.slow
def test_slurm_local_cluster_runs_the_plan_teacher_first(capsys, data, tmp_path):
    seq = tmp_path / "S"
    assert main(_argv(data, seq, "--threads", "1")) == 0
    out = tmp_path / "J"
    assert main(_argv(data, out, "--launcher", "slurm", "--slurm-cluster", "local",
                      "--slurm-max-parallel", "2")) == 0
    err = capsys.readouterr().err
    assert err.index("done teacher") < err.index(f"done {RUNS[1]}")
    assert sorted(_tests(out)) == sorted(RUNS)
    assert list((out / "slurm").rglob("*_log.out"))


SLOW_KD = '''
import time
from kdbench.methods.vanilla import Vanilla


class Slow(Vanilla):
    def forward_train(self, batch):
        time.sleep(0.15)
        return super().forward_train(batch)
'''


@pytest.mark.slow
def test_a_requeued_slurm_job_resumes_from_last_pt(data, tmp_path):
    from kdbench.api import run
    from kdbench.launch.jobs import Job
    from kdbench.launch.slurm import SlurmLauncher, SlurmOptions

    (tmp_path / "slow_kd.py").write_text(SLOW_KD)
    reg = tmp_path / "slow.yaml"
    reg.write_text("slow:\n  entry: slow_kd.py:Slow\n  modes: [none]\n  defaults: {}\n")
    settings = ["data.size=16", "train.epochs=4", "train.batch_size=4"]
    run("slow", "ff_c40", data_root=data, modes="rgb", preset="quick", results=tmp_path / "U",
        registry=[reg], settings=settings, progress=False, threads=1)
    want = _tests(tmp_path / "U")

    out = tmp_path / "J"
    name = "resnet18_thin/slow/none/seed0"
    request = RunRequest.make("run", methods="slow", modes="rgb", dataset="ff_c40",
                              data_root=data, preset="quick", registry=[reg], results=out,
                              threads=1, only=name, settings=settings, device="cpu")
    launcher = SlurmLauncher(SlurmOptions(cluster="local"), out)
    job = launcher.submit(Job(name, request))
    history = out / "runs/ff_c40" / name / "history.jsonl"
    deadline = time.time() + 120
    while not (history.is_file() and history.read_text().count("\n") >= 1):
        assert time.time() < deadline and not job.done(), "the job ended before epoch 1"
        time.sleep(0.05)
    # preemption as SLURM signals it: USR2 to the job's process (its pid is in run.lock);
    # submitit calls RunJob.checkpoint, which requeues the same command
    pid = int((history.parent / "run.lock").read_text().split()[0])
    os.kill(pid, signal.SIGUSR2)
    job.result()
    log = Path(job.paths.stdout).read_text() + Path(job.paths.stderr).read_text()
    assert "continue " + name in log  # the requeued job resumed from last.pt
    assert _tests(out) == want
