"""tools/gpu_check.sh, the maintainers' check on a CUDA machine: without a CUDA device it stops
at once with one line and exit status 2, writing nothing; it names the steps it runs."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.sh"
NO_CUDA = re.compile(r"^gpu_check: no CUDA device visible \(.+\); run it on a GPU machine$")


def _run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The script with no CUDA device (CUDA_VISIBLE_DEVICES empty, so also on a GPU machine)
    and this interpreter's environment first on PATH."""
    full = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "TMPDIR": str(cwd / "tmp")}
    full.pop("GPU_CHECK_JSON", None)
    full.update(env)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("how", ["argument", "env"])
def test_without_cuda_it_stops_at_once_with_one_line_and_writes_nothing(tmp_path, how):
    args = [str(tmp_path / "out" / "check.json")] if how == "argument" else []
    env = {"GPU_CHECK_JSON": str(tmp_path / "env.json")} if how == "env" else {}
    (tmp_path / "out").mkdir()
    (tmp_path / "tmp").mkdir()
    done = _run(tmp_path, *args, **env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and NO_CUDA.match(lines[0]), done.stderr
    assert "CUDA_VISIBLE_DEVICES=''" in lines[0]
    assert done.stdout == ""
    # no JSON, no work folder
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "tmp"]


def test_the_script_is_executable_strict_bash():
    assert SCRIPT.stat().st_mode & stat.S_IXUSR
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout


def test_the_script_names_its_steps():
    """The bench of the paper's student and of a mobile one, the train step's precision and
    compile settings and one epoch of the paper preset, each under a time limit."""
    text = " ".join(SCRIPT.read_text().replace("\\\n", " ").split())
    assert "PRESET=paper" in text and "DEVICE=cuda" in text and "MOBILE=mobilenetv3_large_100" \
        in text
    assert ('kdbench bench --preset "$PRESET" --student "$student" --methods vanilla,kd'
            in text)
    assert 'for student in xception "$MOBILE"; do' in text
    assert ('kdbench run --methods vanilla,kd --modes rgb --preset "$PRESET" --students '
            '"xception,$MOBILE" --set train.epochs=1' in text)
    for step in ("data", "bench_$student", "paper_epoch", "train_step_settings"):
        assert f'run_step {step} ' in text or f'run_step "{step}" ' in text, step
    for setting in ("fp32", "bf16_channels_last", "bf16_channels_last_compile"):
        assert f'("{setting}",' in text
    assert 'timeout --kill-after=10 "$limit"' in text
    assert "BUDGET_S=${GPU_CHECK_BUDGET_S:-450}" in text  # under 8 minutes on one H100
