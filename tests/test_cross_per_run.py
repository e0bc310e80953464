"""Table 7 without kept checkpoints: each run is tested on the cross dataset as it finishes,
reproduce tests the runs finished before, and names those it cannot test."""

import json
import shlex
import threading
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.data.datasets import open_dataset
from kdbench.request import RunRequest
from kdbench.running import cross_test_rest as _cross_test_rest
from kdbench.train.store import run_lock
from tests.conftest import write_prepared

RUN = "runs/ff_c40/resnet18_thin/vanilla/none/seed{}"


def _argv(data: Path, results: Path, *extra: str) -> list[str]:
    return ["run", "--methods", "vanilla", "--dataset", "ff_c40", "--data-root", str(data),
            "--preset", "quick", "--set", "data.size=16", "--set", "train.epochs=1",
            "--results", str(results), "--no-progress", *extra]


def _cross(results: Path, seed: int = 0) -> dict:
    return json.loads((results / RUN.format(seed) / "cross/celebdf.json").read_text())


@pytest.fixture
def data(tmp_path):
    return (write_prepared(tmp_path / "ff", dataset="ff_c40"),
            write_prepared(tmp_path / "cd", dataset="celebdf", seed=5))


def test_job_commands_carry_the_cross_dataset():
    args = RunRequest.make("run", methods="vanilla", dataset="ff_c40", modes="rgb",
                           preset="quick", cross_dataset="celebdf", cross_data_root="/d/cd")
    assert shlex.join(args.job("a").to_argv()).endswith(
        "--cross-dataset celebdf --cross-data-root /d/cd --only a")
    assert "--cross" not in " ".join(RunRequest.make("run", methods="v").to_argv())


@pytest.mark.slow
def test_a_run_is_tested_on_the_cross_dataset_as_it_finishes(tmp_path, data, capsys):
    train, other = data
    cross = ["--cross-dataset", "celebdf", "--cross-data-root", str(other)]
    kept, pruned = tmp_path / "K", tmp_path / "P"
    assert main(_argv(train, kept, *cross)) == 0
    assert "vanilla/none/seed0: on celebdf acc" in capsys.readouterr().err
    first = _cross(kept)
    assert first["test_dataset"] == "celebdf" and first["train_dataset"] == "ff_c40"
    assert (kept / RUN.format(0) / "cross/celebdf.npz").is_file()
    # the same weights tested afterwards by `kdbench eval` give the same numbers
    assert main(["eval", str(kept / RUN.format(0)), "--dataset", "celebdf", "--data-root",
                 str(other), "--no-progress"]) == 0
    assert _cross(kept)["test"] == first["test"]
    # a run finished before is tested when the plan is run again with a cross dataset, and
    # before its checkpoints are dropped: Table 7 no longer needs them kept
    assert main(_argv(train, pruned)) == 0
    assert not (pruned / RUN.format(0) / "cross").exists()
    assert main(_argv(train, pruned, *cross, "--keep-checkpoints", "none")) == 0
    assert not (pruned / RUN.format(0) / "best.pt").exists()
    assert _cross(pruned)["test"] == first["test"]
    capsys.readouterr()
    assert main(["table", "--kind", "cross", "--results", str(pruned)]) == 0
    assert "celebdf AUC" in capsys.readouterr().out
    # ... and with no best.pt left it says so
    (pruned / RUN.format(0) / "cross/celebdf.json").unlink()
    assert main(_argv(train, pruned, *cross)) == 0
    assert "seed0: no best.pt left to test on celebdf" in capsys.readouterr().err


def test_launched_jobs_carry_the_cross_dataset(tmp_path, data, capsys):
    train, other = data
    assert main(_argv(train, tmp_path / "R", "--launcher", "print", "--cross-dataset",
                      "celebdf", "--cross-data-root", str(other))) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "--cross-dataset celebdf --cross-data-root " in lines[0]
    assert shlex.split(lines[0])[shlex.split(lines[0]).index("--cross-data-root") + 1] == str(
        other.resolve())
    assert main(_argv(train, tmp_path / "R", "--launcher", "print", "--cross-dataset",
                      "none")) == 0
    assert "--cross" not in capsys.readouterr().out


@pytest.mark.slow
def test_reproduce_tests_the_runs_finished_before_and_names_those_it_cannot(
        tmp_path, data, capsys):
    train, other = data
    results = tmp_path / "R"
    assert main(_argv(train, results, "--seeds", "0,1,2")) == 0  # no cross test yet
    (results / RUN.format(1) / "best.pt").unlink()  # as in a clone: no checkpoints
    assert main(["eval", str(results / RUN.format(2)), "--dataset", "celebdf", "--data-root",
                 str(other), "--no-progress"]) == 0
    tested = (results / RUN.format(2) / "cross/celebdf.json").stat().st_mtime_ns
    capsys.readouterr()
    _cross_test_rest(results / "runs" / "ff_c40", "celebdf", other, None, False)
    err = capsys.readouterr().err
    assert _cross(results, 0)["test_dataset"] == "celebdf"  # tested now
    assert not (results / RUN.format(1) / "cross").exists()  # could not be
    assert "Table 7 lacks 1 finished run with no test on celebdf and no best.pt" in err
    assert "resnet18_thin/vanilla/none/seed1;" in err
    assert f"--restart --cross-dataset celebdf --cross-data-root {other}" in err
    assert (results / RUN.format(2) / "cross/celebdf.json").stat().st_mtime_ns == tested


def test_an_embedded_dataset_is_generated_by_one_process_at_a_time(tmp_path, monkeypatch):
    import kdbench.data.synthetic.prepare as prepare

    released, calls = threading.Event(), []

    def generate(root, size, frames, *rest):
        assert released.is_set()  # never while the other process holds the lock
        calls.append(root)
        (root / f"prepared-s{size}-f{frames}").mkdir()
        (root / f"prepared-s{size}-f{frames}" / "prepared.json").write_text("{}")

    monkeypatch.setattr(prepare, "ensure_synthetic", generate)
    monkeypatch.setattr("kdbench.data.datasets.load_prepared", lambda *a, **k: "opened")
    root, done = tmp_path / "c23", []
    with run_lock(root) as mine:  # another process generating it
        assert mine
        t = threading.Thread(target=lambda: done.append(
            open_dataset("synthetic_c23", root, 16, 2, progress=False)))
        t.start()
        t.join(0.2)
        released.set()
    t.join(10)
    assert done == ["opened"] and calls == [root]
    # once prepared, it is opened without the lock (a read-only cache works)
    with run_lock(root):
        t = threading.Thread(target=lambda: done.append(
            open_dataset("synthetic_c23", root, 16, 2, progress=False)))
        t.start()
        t.join(10)
        assert not t.is_alive() and done == ["opened", "opened"] and calls == [root]
