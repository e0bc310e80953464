"""One plan for every launcher: in process, print, local workers and submitit (local cluster)
plan and run the same runs, with the same preset and settings, from the same request - with a
scalar and a list sweep, a Path argument and a Path-valued setting, a --registry file, --only."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kdbench import api
from kdbench.cli import main
from kdbench.launch.jobs import plan_jobs
from kdbench.plan import TEACHER, plan
from kdbench.request import RunRequest
from tests.conftest import write_prepared

LAUNCHERS = [("inprocess", {}), ("print", {}), ("local", {"workers": 2}),
             ("slurm", {"slurm_cluster": "local", "slurm_max_parallel": 2})]
KD2 = ("kd2:\n  entry: kdbench.methods.kd:KD\n  modes: [rgb]\n"
       "  defaults: {temperature: 3.0, alpha: 0.9, ce_weight: 0.1}\n")


@pytest.fixture
def setup(tmp_path: Path) -> dict:
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    registry = tmp_path / "kd2.yaml"
    registry.write_text(KD2)
    from kdbench.models.students import create_student

    weights = tmp_path / "student.pt"  # a Path-valued setting: the student's start weights,
    timm_like = {}  # in timm's names (as tests/test_models.py writes them)
    for k, v in create_student("resnet18_thin").backbone.state_dict().items():
        k = k.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.")
        for i in range(4):
            k = k.replace(f"stages.{i}.", f"layer{i + 1}.")
        timm_like[k] = v
    torch.save(timm_like, weights)
    return {"methods": ["vanilla", "kd2"], "dataset": "ff_c40", "data_root": data,
            "modes": "rgb", "preset": "quick", "registry": registry, "threads": 1,
            "settings": {"data.size": 16, "train.epochs": 1, "student.pretrained": weights},
            "sweeps": {"temperature": 2, "ce_weight": [0.1, 0.5]}, "progress": False}


def _store(results: Path) -> dict[str, tuple]:
    """Each finished run: (preset, settings, hyper-parameters, test metrics), by run folder."""
    out = {}
    for path in sorted((results / "runs").rglob("metrics.json")):
        m = json.loads(path.read_text())
        out[str(path.parent.relative_to(results / "runs"))] = (
            m["preset"], {k: m["config"][k] for k in ("data", "train", "student")},
            m["hparams"], m["test"])
    return out


def test_every_launcher_plans_the_same_runs_and_jobs(setup, tmp_path):
    base = plan(RunRequest.make("run", results=tmp_path / "R", **setup))
    names = [r.name for r in base.runs]
    assert names == ["resnet18_thin/vanilla/none/seed0", "resnet18_thin/kd2/rgb/seed0",
                     "resnet18_thin/kd2@temperature=2/rgb/seed0",
                     "resnet18_thin/kd2@ce_weight=0.5,temperature=2/rgb/seed0"]
    for launcher, extra in LAUNCHERS[1:]:
        other = plan(RunRequest.make("run", results=tmp_path / "R", launcher=launcher,
                                     **extra, **setup))
        assert [r.name for r in other.runs] == names
        assert other.request.preset == base.request.preset == "quick"
        assert other.request.device == base.request.device == "cpu"
        assert other.config == base.config
        assert other.request.job("x") == base.request.job("x")  # the jobs carry one request
    jobs = plan_jobs(base)
    assert [j.name for j in jobs] == [TEACHER, *names]
    for job in jobs:  # the JSON a worker gets and the command line print gives: one request
        assert RunRequest.from_json(job.request.to_json()) == job.request
        argv = shlex.split(job.shell())[1:]
        from kdbench.cli_parser import build_parser
        from kdbench.request import request_options

        parsed = RunRequest.make("run", **request_options(build_parser().parse_args(argv)))
        assert parsed == job.request
    # --only narrows every launcher's jobs to that run (and the teacher it needs)
    only = plan(replace(base.request, only=names[1], launcher="local"))
    assert [j.name for j in plan_jobs(only)] == [TEACHER, names[1]]


def _run(launcher: str, extra: dict, setup: dict, results: Path, capsys, **more) -> None:
    if launcher == "print":  # the printed commands, run by hand one after the other
        summary = api.run(results=results, launcher="print", **setup, **more)
        assert summary.commands and all(c.startswith("kdbench run ") for c in summary.commands)
        for line in summary.commands:
            assert main(shlex.split(line)[1:]) == 0
        return
    summary = api.run(results=results, launcher=launcher, **extra, **setup, **more)
    assert summary.ok, summary


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "extra"), LAUNCHERS[1:], ids=[x for x, _ in LAUNCHERS[1:]])
def test_every_launcher_runs_what_runs_in_process(setup, tmp_path, capsys, launcher, extra):
    if launcher == "slurm":
        pytest.importorskip("submitit", reason="the slurm extra (submitit) is not installed")
    here = tmp_path / "here"
    api.run(results=here, **setup)
    want = _store(here)
    assert len(want) == 4
    there = tmp_path / launcher
    _run(launcher, extra, setup, there, capsys)
    assert _store(there) == want
    # --only: that run alone (its teacher is in the store already)
    name = sorted(want)[1]
    only = tmp_path / f"{launcher}-only"
    _run(launcher, extra, setup, only, capsys, only="/".join(name.split("/")[1:]))
    assert _store(only) == {name: want[name]}


@pytest.mark.parametrize("command", ["run", "reproduce"])
def test_a_request_written_as_a_command_line_parses_back_to_itself(tmp_path, command):
    from kdbench.cli_parser import build_parser
    from kdbench.request import request_options

    extra = {"methods": "vanilla,at", "modes": "rgb", "sweeps": {"beta": [1, 2]}} \
        if command == "run" else {}
    request = RunRequest.make(command, dataset="ff_c40", preset="quick", seeds=[3, 4],
                              results=tmp_path / "R", settings={"train.lr": 0.01},
                              cross_dataset="none", threads=2, progress=False, **extra)
    argv = request.to_argv(command)
    assert argv[0] == command
    parsed = RunRequest.make(command, **request_options(build_parser().parse_args(argv)))
    assert parsed == request
    # the API's cross_dataset=None is "none" for reproduce, not its default "auto"
    assert RunRequest.make("reproduce", cross_dataset=None).cross_dataset == "none"
    assert RunRequest.make("reproduce").cross_dataset == "auto"


def _gpu_machine(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize(("launcher", "extra", "gpus_here", "device"), [
    ("inprocess", {}, 1, "cuda"),  # a GPU here: cuda, and the paper preset
    ("local", {}, 2, "cuda"),
    ("local", {"gpus": "0,1"}, 2, "cuda"),
    ("print", {}, 0, "cpu"),
    ("slurm", {"slurm_gpus_per_job": 1}, 0, "cuda"),  # a login node without the jobs' GPUs
    ("slurm", {"slurm_gpus_per_job": 0}, 0, "cpu"),
])
def test_the_plan_resolves_the_device_and_preset_once_for_every_launcher(
        monkeypatch, tmp_path, launcher, extra, gpus_here, device):
    _gpu_machine(monkeypatch, gpus_here)
    p = plan(RunRequest.make("run", methods="vanilla", dataset="ff_c40",
                             data_root=write_prepared(tmp_path / "d", dataset="ff_c40"),
                             results=tmp_path / "R", launcher=launcher,
                             settings={"teacher.pretrained": "none"}, **extra))  # offline
    assert p.request.device == device
    assert p.request.preset == ("paper" if device == "cuda" else "cpu")
    assert all(f"--device {device} " in j.shell() and f"--preset {p.request.preset} "
               in j.shell() for j in plan_jobs(p))


def test_gpu_options_that_cannot_work_are_one_line_before_any_job(monkeypatch, tmp_path):
    from kdbench.errors import KdbenchError

    data = write_prepared(tmp_path / "d", dataset="ff_c40")
    base = {"methods": "vanilla", "dataset": "ff_c40", "data_root": data, "launcher": "local",
            "results": tmp_path / "R"}
    _gpu_machine(monkeypatch, 0)
    with pytest.raises(KdbenchError, match="--gpus 0: no CUDA device is visible"):
        plan(RunRequest.make("run", gpus="0", **base))
    _gpu_machine(monkeypatch, 2)
    with pytest.raises(KdbenchError, match="each worker sees its one GPU as cuda:0"):
        plan(RunRequest.make("run", gpus="0,1", device="cuda:1", **base))


def test_a_job_leaves_no_process_wide_state_to_the_next(monkeypatch):
    from kdbench.launch.jobs import job_state

    before = (torch.get_num_threads(), torch.get_float32_matmul_precision(),
              torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with job_state():  # what a CUDA run's trainer sets, and a thread count
        torch.set_num_threads(before[0] + 1)
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = not before[2]
        torch.backends.cuda.matmul.allow_tf32 = not before[3]
    after = (torch.get_num_threads(), torch.get_float32_matmul_precision(),
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    assert after == before
