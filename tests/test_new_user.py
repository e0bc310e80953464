"""What a new user ran into (issue 11, item 6): typed settings, a user results folder, errors
before the heavy imports, unwrapped log lines, and plots of every method in the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdbench.cli import main
from kdbench.registry import load_registry
from kdbench.report.figures import seed_mean_curves
from tests.conftest import write_prepared

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_readme_lr_override_trains_into_the_user_results_folder(tmp_path, monkeypatch,
                                                                     capsys):
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--methods", "vanilla", "--dataset", "ff_c40", "--data-root", str(data),
                 "--preset", "quick", "--set", "data.size=16", "--set", "train.lr=3e-4",
                 "--set", "train.epochs=1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"results go to {tmp_path / 'kdbench-results'}" in err
    m = json.loads((tmp_path / "kdbench-results/runs/ff_c40/resnet18_thin/vanilla/none/seed0/"
                               "metrics.json").read_text())
    assert m["status"] == "finished" and m["config"]["train"]["lr"] == 0.0003
    assert isinstance(m["config"]["train"]["lr"], float)
    assert not (tmp_path / "results").exists()  # the reference store is written only if named


def test_every_default_results_folder_is_the_user_one():
    from kdbench.cli import build_parser
    from kdbench.request import RunRequest, request_options

    parser = build_parser()
    for argv in (["run"], ["reproduce"]):  # a request's defaults are filled by the request
        request = RunRequest.make(argv[0], **request_options(parser.parse_args(argv)))
        assert request.results == Path("kdbench-results").resolve(), argv
    for argv in (["table"], ["plot", "curves"]):
        assert parser.parse_args(argv).results == "kdbench-results", argv


ERRORS_BEFORE_TORCH = [
    ["run", "--methods", "nope"],
    ["run", "--set", "train.lr=abc"],
    ["run", "--set", "train.epochs=-1"],
    ["run", "--methods", "tokd", "--set", "tokd.d=0"],
    ["run", "--seeds", "x"],
    ["run", "--students", "resnet18_thin,xception", "--preset", "huge"],
    ["run", "--dataset", "imagenet"],
    ["run", "--dataset", "ff_c40"],
    ["run", "--data-root", "/nonexistent/kdbench-data"],
    ["run", "--preset", "huge"],
    ["run", "--sweep", "d=1,x"],
    ["run", "--registry", "/nonexistent.yaml"],
    ["plot", "curves", "--out", "x.txt"],
    ["eval", "/nonexistent/run", "--dataset", "ff_c40"],
    # the paths of predict, export and quantize (issue 11, item 11): checked before torch
    ["predict", "nope.mp4", "--run", "nothere"],
    ["predict", "notes.txt", "--run", "nothere"],  # a file that is no video or image
    ["predict", "clips", "--run", "nothere"],
    ["predict", "clips", "--checkpoint", "gone.pt", "--student", "resnet18_thin"],
    ["export", "nothere"],
    ["quantize", "nothere", "--int8"],
]
TAKES_RESULTS = ("run", "plot")


def test_argument_errors_come_before_torch_is_imported(tmp_path):
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"a video")
    script = textwrap.dedent(f"""
        import json, sys
        from kdbench.cli import main
        out = []
        for argv in {ERRORS_BEFORE_TORCH!r}:
            code = main(argv + ["--results", {str(tmp_path / "R")!r}]
                        if argv[0] in {TAKES_RESULTS!r} else argv)
            out.append([code, "torch" in sys.modules, "timm" in sys.modules])
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for argv, (code, torch_loaded, timm_loaded) in zip(ERRORS_BEFORE_TORCH, results):
        assert code == 2, argv
        assert not torch_loaded and not timm_loaded, argv
    errors = proc.stderr.splitlines()  # one line each, and nothing else
    assert len(errors) == len(ERRORS_BEFORE_TORCH), proc.stderr
    assert all(line.startswith("kdbench: error:") for line in errors), proc.stderr
    assert "nope.mp4 does not exist" in errors[-6] and "notes.txt is not a video" in errors[-5]
    assert "run folder nothere not found" in errors[-4] and "gone.pt not found" in errors[-3]
    assert all("run folder nothere not found" in line for line in errors[-2:])
    assert not (tmp_path / "R").exists()  # nothing created for a refused command


def test_a_logged_path_stays_on_one_line_in_a_log_file(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for label in ("real", "fake"):
        for k in range(10):
            path = root / label / f"img{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((24, 24, 3), 20 * k, np.uint8)).save(path)
    broken = root / "fake" / ("a_file_name_long_enough_to_be_wrapped_by_an_eighty_column_"
                              "console_if_it_were_" + "x" * 40 + ".png")
    broken.write_bytes(b"not an image")
    with open(tmp_path / "log.txt", "w") as log:  # stderr to a file, as `2> log.txt` does
        proc = subprocess.run([sys.executable, "-m", "kdbench.cli", "prepare", "folder",
                               "--root", str(root), "--out", str(tmp_path / "out"),
                               "--size", "16", "--workers", "1", "--no-progress"],
                              stdout=log, stderr=subprocess.STDOUT, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"})
    assert proc.returncode == 0
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert any(str(broken) in line and "skipped" in line for line in lines), lines


def test_a_store_method_from_another_registry_is_drawn_without_it(tmp_path):
    rows = []
    for method, variant, mode in (("vanilla", "", "none"), ("logit_kd", "", "rgb"),
                                  ("logit_kd", "w=2", "rgb"), ("at", "beta=5", "rgb")):
        folder = tmp_path / method / variant / mode
        folder.mkdir(parents=True)
        (folder / "history.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 0.5,
                                                          "val_acc": 0.8}) + "\n")
        rows.append({"dataset": "d", "student": "s", "method": method, "variant": variant,
                     "mode": mode, "seed": 0, "status": "finished", "path": str(folder)})
    curves = seed_mean_curves(pd.DataFrame(rows), load_registry())
    # logit_kd is unknown to the built-in registry: its plain run is drawn, not its variant;
    # at@beta=5 is a known method's variant outside the default plan
    assert sorted(curves) == ["d/s/logit_kd/rgb", "d/s/vanilla/none"]
