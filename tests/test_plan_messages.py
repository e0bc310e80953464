"""What a plan tells its user: the run names, the time left, a progress line a log hears every
minute, a continued teacher, the store's disk use, and --keep-checkpoints none's cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdbench.cli import main
from tests.conftest import write_prepared

NAMES = ["resnet18_thin/vanilla/none/seed0", "resnet18_thin/kd/rgb/seed0"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_prepared(tmp_path / "prep", dataset="ff_c40")


def _argv(data: Path, results: Path, *extra: str) -> list[str]:
    return ["run", "--methods", "vanilla,kd", "--modes", "rgb", "--dataset", "ff_c40",
            "--data-root", str(data), "--preset", "quick", "--set", "data.size=16",
            "--set", "train.epochs=2", "--results", str(results), "--threads", "1",
            "--no-progress", *extra]


def test_a_plan_names_its_runs_estimates_and_reports_its_disk_use(data, tmp_path, capsys,
                                                                   monkeypatch):
    from kdbench.train import trainer

    monkeypatch.setattr(trainer, "HEARTBEAT_S", 0.0)  # every step is "a minute later"
    results = tmp_path / "R"
    assert main(_argv(data, results, "--keep-checkpoints", "none")) == 0
    err = capsys.readouterr().err.splitlines()
    assert "  1. " + NAMES[0] in err and "  2. " + NAMES[1] in err
    assert any(line.startswith("plan: about ") and "left for 2 runs" in line for line in err)
    beats = [line for line in err if " images, " in line and "img/s" in line]
    assert "teacher epoch 1/2: 12/12 images, " in beats[0]
    assert any(line.startswith(NAMES[1] + " epoch 2/2: 12/12 images, ") for line in beats)
    used = [line for line in err if line.startswith(f"the store {results} holds ")]
    assert len(used) == 1 and used[0].endswith(" MB")
    # --keep-checkpoints none: the finished plan's teacher cache and the students' checkpoints
    assert list(results.rglob("metrics.json")) and not list(results.rglob("cache"))
    assert not list((results / "runs").rglob("*.pt"))
    assert any("removed the teacher cache" in line for line in err)


def test_an_interrupted_teacher_says_it_continues(data, tmp_path, capsys):
    results = tmp_path / "R"
    assert main(_argv(data, results, "--only", "teacher")) == 0
    (teacher,) = list((results / "teachers/ff_c40").iterdir())
    (teacher / "metrics.json").unlink()  # as if stopped after its last epoch
    capsys.readouterr()
    assert main(_argv(data, results, "--only", "teacher")) == 0
    err = capsys.readouterr().err
    assert f"continue teacher: an unfinished run at epoch 2 in {teacher}" in err
    assert (teacher / "metrics.json").is_file()


@pytest.mark.parametrize(("argv", "target", "kept"), [
    (["synth", "--root", "{tmp}/videos", "--no-progress"], "kdbench.data.synthetic.tree._run",
     "the videos generated so far are kept"),
    (["export", "{tmp}"], "kdbench.api.export", "the run and its deploy/ files finished before"),
    (["run", "--methods", "vanilla", "--dataset", "ff_c40", "--data-root", "{data}",
      "--preset", "quick", "--results", "{tmp}/R", "--no-progress"],
     "kdbench.train.trainer.Trainer.fit", "finished epochs are kept"),
])
def test_an_interrupt_says_what_its_step_keeps(data, tmp_path, capsys, monkeypatch, argv,
                                               target, kept):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupt)
    argv = [a.format(tmp=tmp_path, data=data) for a in argv]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kdbench: interrupted; ") and kept in err[-1]
