"""teacher.freq_view=dwt: the Haar transform is orthonormal (energy kept, exact inverse), its
bands match the formulas, the view stacks them at the input's size, a dual teacher reads it,
and bad settings are one line."""

from __future__ import annotations

import pytest
import torch

from kdbench.models.teacher import DualBranchTeacher
from kdbench.models.wavelet import WaveletView, haar_dwt, haar_idwt, wavedec, waverec


def test_haar_keeps_a_random_images_energy_and_its_inverse_reconstructs_it():
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    low, highs = wavedec(x, 3)
    energy = low.pow(2).sum() + sum(h.pow(2).sum() for h in highs)
    assert abs(energy.item() - x.pow(2).sum().item()) <= 1e-5 * x.pow(2).sum().item()
    assert torch.allclose(waverec(low, highs), x, atol=1e-12)
    assert low.shape == (2, 3, 4, 6) and [h.shape[-1] for h in highs] == [24, 12, 6]
    x32 = torch.randn(1, 3, 16, 16)
    assert (haar_idwt(*haar_dwt(x32)) - x32).abs().max() < 1e-5


def test_the_bands_are_the_documented_sums_of_each_2x2_block():
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0]]).view(1, 1, 2, 2)  # a, b / c, d
    low, highs = haar_dwt(x)
    a, b, c, d = 1.0, 2.0, 3.0, 5.0
    assert low.item() == pytest.approx((a + b + c + d) / 2)
    assert highs.flatten().tolist() == pytest.approx([(a + b - c - d) / 2, (a - b + c - d) / 2,
                                                      (a - b - c + d) / 2])


def test_the_view_stacks_the_bands_at_the_inputs_size_odd_sizes_too():
    view = WaveletView("haar", 2)
    assert view.channels(3) == 21
    x = torch.rand(2, 3, 32, 32)
    out = view(x)
    assert out.shape == (2, 21, 32, 32)
    low, highs = wavedec(x, 2)
    assert torch.equal(out[:, :3, ::4, ::4], low)  # LL repeated 4x4
    assert torch.equal(out[:, 3:6, ::2, ::2], highs[0][:, :, 0])  # LH of level 1, R, G, B
    assert view(torch.rand(1, 3, 29, 31)).shape == (1, 21, 29, 31)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert view(x.bfloat16()).dtype == torch.bfloat16


def test_a_dual_teacher_reads_the_wavelet_view_with_its_branches_aligned():
    teacher = DualBranchTeacher("resnet18_thin", 32, freq_view="dwt", levels=1).eval()
    assert teacher.freq_branch.stem[0].in_channels == 12
    with torch.no_grad():
        out = teacher(torch.rand(2, 3, 32, 32))
    assert out.logits.shape == (2, 2)
    assert [f.shape for f in out.freq] == [r.shape[:1] + f.shape[1:2] + r.shape[2:]
                                           for r, f in zip(out.rgb, out.freq)]


@pytest.mark.parametrize("setting, message", [
    ("teacher.wavelet=haarr", "teacher.wavelet"),
    ("teacher.levels=6", "64 px allow at most 5 wavelet levels"),
    ("teacher.freq_view=fft", "teacher.freq_view='fft' is not allowed"),
    ("teacher.kind=single", "teacher.kind=single has no frequency branch"),
])
def test_bad_wavelet_settings_are_one_line(tmp_path, capsys, setting, message):
    from kdbench.cli import main

    code = main(["run", "--methods", "kd", "--preset", "quick", "--results", str(tmp_path),
                 "--launcher", "print", "--set", "teacher.freq_view=dwt", "--set", setting])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_wavelet_settings_without_the_wavelet_view_are_one_line(tmp_path, capsys):
    from kdbench.cli import main

    code = main(["run", "--methods", "kd", "--preset", "quick", "--results", str(tmp_path),
                 "--launcher", "print", "--set", "teacher.levels=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "with teacher.freq_view=dwt" in err[0]


@pytest.mark.slow
def test_a_dwt_teacher_trains_at_the_quick_preset(tmp_path):
    from kdbench import api
    from kdbench.config import for_device, resolve_config
    from kdbench.train.teachers import teacher_folder

    summary = api.run("kd", "synthetic", preset="quick", modes=["both"], results=tmp_path,
                      settings={"teacher.freq_view": "dwt", "train.epochs": 1,
                                "data.frames": 2},
                      progress=False)
    assert summary.trained == 1 and summary.teacher is not None
    assert (summary.teacher / "best.pt").is_file()
    dct = for_device(resolve_config("quick", "synthetic", {}), "cpu")
    assert summary.teacher != teacher_folder(tmp_path, "synthetic", dct)  # its own teacher


def test_another_wavelet_comes_from_ptwt_with_the_same_layout():
    pytest.importorskip("ptwt", reason='the wavelet extra is not installed (pip install '
                        '"kdbench[wavelet]")')
    view = WaveletView("db2", 2)
    x = torch.rand(2, 3, 32, 32)
    assert view(x).shape == (2, 21, 32, 32)
    from kdbench.models.wavelet_library import transform

    haar_by_ptwt = WaveletView("haar", 1)
    haar_by_ptwt._other = transform("haar", 1)
    plain = WaveletView("haar", 1)(x)
    other = haar_by_ptwt(x)
    assert torch.allclose(other[:, :3], plain[:, :3], atol=1e-5)  # LL; highs: signs differ
    assert torch.allclose(other.abs(), plain.abs(), atol=1e-5)
