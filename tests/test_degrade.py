"""The cross-resolution degradation model: resize, blur, JPEG and noise as documented, repeatable
at evaluation, and a degraded student that keeps the student interface."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdbench.models.degrade import (
    Degradation,
    Degrade,
    DegradedStudent,
    gaussian_kernel,
)
from kdbench.models.students import create_student


def test_a_degradation_of_a_config_is_off_at_the_data_size():
    assert not Degradation.of({"size": None}, 64).active
    assert not Degradation.of({"size": 64}, 64).active
    d = Degradation.of({"size": 32, "blur": 0.5, "jpeg": 75, "noise": 2}, 64)
    assert d == Degradation(32, 0.5, 75, 2.0) and d.active


def test_resize_alone_is_torchs_antialiased_bilinear():
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    out = Degrade(Degradation(32))(x)
    ref = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(out, ref)


def test_blur_keeps_a_flat_image_and_smooths_noise():
    k = gaussian_kernel(1.0)
    assert len(k) == 7 and k.sum().item() == pytest.approx(1.0) and k.argmax() == 3
    flat = torch.full((1, 3, 16, 16), 0.25)
    assert torch.allclose(Degrade(Degradation(blur=1.0))(flat), flat, atol=1e-6)
    noise = torch.randn(1, 3, 32, 32)
    assert Degrade(Degradation(blur=1.0))(noise).std() < 0.5 * noise.std()


def test_jpeg_changes_the_image_a_little_and_returns_its_range():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = Degrade(Degradation(jpeg=50))(x)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert 0 < (out - x).abs().mean() < 0.5


def test_noise_is_fresh_in_training_and_repeatable_at_evaluation():
    x = torch.zeros(1, 3, 16, 16)
    deg = Degrade(Degradation(noise=2.0))
    a, b = deg.eval()(x), deg(x)
    assert torch.equal(a, b) and a.std().item() == pytest.approx(2 / 127.5, rel=0.2)
    two = deg(torch.zeros(2, 3, 16, 16))  # the same pattern whatever the batch
    assert torch.equal(two[0], a[0]) and torch.equal(two[1], a[0])
    deg.train()
    assert not torch.equal(deg(x), deg(x))


def test_a_degraded_student_reads_the_small_image():
    student = create_student("resnet18_thin").eval()
    wrapped = DegradedStudent(student, Degradation(32)).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out = wrapped(x)
        small = student(F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True,
                                      align_corners=False))
    assert torch.equal(out.logits, small.logits)
    assert out.feats[-1].shape[-1] == 1 and wrapped.stage_channels == student.stage_channels
