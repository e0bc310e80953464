import numpy as np
import pytest
import torch

from kdbench.config import resolve_config
from kdbench.data.loader import FrameSplit, to_model_input
from kdbench.methods.at import AT
from kdbench.models.students import create_student
from kdbench.models.teacher import DualBranchTeacher
from kdbench.train.teacher_cache import TeacherCache, flatten, unflatten
from kdbench.train.trainer import Trainer, seed_everything

SIZE = 16


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return DualBranchTeacher("resnet18_thin", proj_dim=8).eval()


def test_flatten_round_trip(teacher):
    out = teacher(torch.randn(2, 3, SIZE, SIZE))
    back = unflatten(flatten(out))
    assert len(back.rgb) == len(back.freq) == 4 and set(back.aux_logits) == {"rgb", "freq"}
    for a, b in zip(flatten(out).values(), flatten(back).values()):
        assert a is b


def test_cache_matches_the_live_teacher_for_every_frame_and_flip(tiny_data, teacher):
    split = FrameSplit(tiny_data.frames, tiny_data.split("train"))
    cache = TeacherCache.build(teacher, {"rgb", "freq"}, split, SIZE, torch.device("cpu"), 5,
                               1 << 30)
    assert cache is not None and set(cache.store) >= {"logits", "rgb.0", "freq.3"}
    assert "rgb_proj" not in cache.store  # only what was asked for
    pos, flips = np.array([3, 0, 7]), np.array([True, False, True])
    batch = to_model_input(split[(pos, flips)], torch.device("cpu"), SIZE)
    got = cache.lookup(batch["key"])
    with torch.no_grad():
        want = teacher(batch["image"], needs={"rgb", "freq"})
    for a, b in zip(flatten(got).values(), flatten(want).values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_cache_over_budget_is_refused(tiny_data, teacher):
    split = FrameSplit(tiny_data.frames, tiny_data.split("train"))
    assert TeacherCache.build(teacher, {"rgb"}, split, SIZE, torch.device("cpu"), 8, 1000) is None


def _fit(data, run_dir, teacher, cache_mb, stop_after=None, resume=False):
    cfg = resolve_config("quick", "synthetic", {"train": {"epochs": 3, "batch_size": 4,
                                                          "teacher_cache_mb": cache_mb}})
    splits = {s: FrameSplit(data.frames, data.split(s)) for s in ("train", "val", "test")}
    seed_everything(0)
    learner = AT(create_student("resnet18_thin"), teacher, "both", beta=1000.0)
    trainer = Trainer(learner, splits, cfg["train"], SIZE, run_dir, torch.device("cpu"), 0,
                      progress=False)
    return trainer.fit(resume=resume, stop_after=stop_after), learner


def test_cached_training_resumes_exactly_and_tracks_the_live_teacher(tiny_data, teacher,
                                                                      tmp_path):
    full, learner = _fit(tiny_data, tmp_path / "a", teacher, 64)
    assert learner.teacher_cache is not None
    assert _fit(tiny_data, tmp_path / "b", teacher, 64, stop_after=1)[0] is None
    resumed, _ = _fit(tiny_data, tmp_path / "b", teacher, 64, resume=True)
    assert resumed["test"] == full["test"]
    live, learner = _fit(tiny_data, tmp_path / "c", teacher, 0)
    assert learner.teacher_cache is None
    for a, b in zip(full["history"], live["history"]):
        assert a["train_loss_kd_freq"] == pytest.approx(b["train_loss_kd_freq"], rel=1e-3)


def test_cache_budget_does_not_change_the_teacher_identity(tiny_data, tmp_path):
    from kdbench.train.runner import Context, teacher_dir

    def tdir(overrides):
        cfg = resolve_config("quick", "synthetic", overrides)
        return teacher_dir(Context(tiny_data, "synthetic", cfg, tmp_path, torch.device("cpu")))

    assert tdir({"train": {"teacher_cache_mb": 0}}) == tdir({})
    assert tdir({"train": {"lr": 0.5}}) != tdir({})
