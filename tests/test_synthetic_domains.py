"""The second embedded domain, synthetic_c23: its shift, its layout, and reproduce's default
cross-dataset test on it."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest

import kdbench.data.synthetic.domains as domains
from kdbench.cli import main
from kdbench.data.datasets import DATASETS, check_dataset, open_dataset
from kdbench.data.synthetic import SynthConfig, generate, real_path, synthesize
from kdbench.data.video import read_frames
from kdbench.plan import cross_name as _cross_dataset
from tests.conftest import write_prepared

C23 = domains.EMBEDDED["synthetic_c23"]


def tiny(cfg: SynthConfig) -> SynthConfig:
    return replace(cfg, pairs=(1, 1, 1), size=32, frames=4)


def test_the_first_domain_is_unchanged_and_the_second_is_shifted():
    base = domains.EMBEDDED["synthetic"]
    assert base == SynthConfig()  # what `synthetic` has always generated
    assert (base.seed, base.qp, base.traces.deepfakes_lowres) == (0, 40, 3)
    assert (C23.seed, C23.qp) == (23, 23) and C23.pairs == base.pairs
    changed = {k for k, v in asdict(C23.traces).items() if asdict(base.traces)[k] != v}
    assert changed == {"deepfakes_lowres"} and C23.traces.deepfakes_lowres == 2
    assert set(DATASETS) >= {"synthetic", "synthetic_c23"}
    assert domains.DEFAULT_CROSS == {"synthetic": "synthetic_c23"}


def test_c23_has_other_identities_and_lighter_compression(tmp_path):
    c23, c40 = tiny(C23), tiny(replace(C23, qp=40))
    root = generate(tmp_path / "c23", c23, workers=1, progress=False)
    assert (root / "original_sequences/youtube/c23/videos").is_dir()
    assert not (root / "original_sequences/youtube/c40").exists()
    generate(tmp_path / "c40", c40, workers=1, progress=False)
    ident = 0
    clean = synthesize(c23, ident, 1)["real"].astype(np.float64)
    err = {name: np.abs(read_frames(real_path(tmp_path / name, f"{ident:03d}", name))
                        - clean).mean() for name in ("c23", "c40")}
    assert err["c23"] < 0.6 * err["c40"]  # QP 23 keeps more of the frame than QP 40
    other = synthesize(tiny(SynthConfig()), ident, 1)["real"].astype(np.float64)
    assert np.abs(other - clean).mean() > 10  # another identity and scene, not noise


def test_unseen_deepfakes_upsampler_has_period_two():
    """The Deepfakes fake minus its real is periodic with the decoder's up-sampling factor."""
    def period_power(cfg: SynthConfig, period: int) -> float:
        videos = synthesize(replace(cfg, pairs=(1, 0, 0), size=48, frames=2), 0, 1)
        diff = videos["Deepfakes"].astype(np.float64) - videos["real"]
        spec = np.abs(np.fft.fft(diff.mean(axis=(0, 3)), axis=1)).mean(axis=0)
        return spec[48 // period] / spec[1:24].mean()

    assert period_power(C23, 2) > 2 * period_power(SynthConfig(), 2)


def test_open_c23_and_the_default_cross_dataset(tmp_path, monkeypatch):
    monkeypatch.setitem(domains.EMBEDDED, "synthetic_c23", tiny(C23))
    check_dataset("synthetic_c23", None)
    data = open_dataset("synthetic_c23", tmp_path, 16, 2, progress=False, require=("test",))
    assert data.meta["dataset"] == "synthetic_c23" and len(data.split("test")) == 20
    synth = json.loads((tmp_path / "videos/synth.json").read_text())
    assert synth["config"]["qp"] == 23
    assert _cross_dataset("auto", "synthetic") == "synthetic_c23"
    assert _cross_dataset("auto", "ff_c40") is None
    assert _cross_dataset("none", "synthetic") is None
    assert _cross_dataset("celebdf", "synthetic") == "celebdf"


@pytest.mark.slow
def test_eval_on_synthetic_c23_fills_the_cross_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(domains.EMBEDDED, "synthetic_c23", tiny(C23))
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "cache"))
    train, results = write_prepared(tmp_path / "ff", dataset="ff_c40"), tmp_path / "R"
    assert main(["run", "--methods", "vanilla", "--dataset", "ff_c40", "--data-root", str(train),
                 "--preset", "quick", "--set", "data.size=16", "--set", "train.epochs=1",
                 "--results", str(results), "--no-progress"]) == 0
    assert main(["eval", str(results / "runs"), "--dataset", "synthetic_c23",
                 "--no-progress"]) == 0
    rec = json.loads((results / "runs/ff_c40/resnet18_thin/vanilla/none/seed0/cross/"
                                "synthetic_c23.json").read_text())
    assert rec["test_dataset"] == "synthetic_c23" and rec["test"]["n_frames"] == 40
    assert (tmp_path / "cache/synthetic_c23/videos/synth.json").is_file()
    capsys.readouterr()
    assert main(["table", "--kind", "cross", "--results", str(results)]) == 0
    assert "synthetic_c23 AUC" in capsys.readouterr().out
