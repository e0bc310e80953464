import json

import pytest
import torch

from kdbench.config import resolve_config
from kdbench.data.loader import FrameSplit, epoch_batches
from kdbench.errors import KdbenchError
from kdbench.methods.vanilla import Vanilla
from kdbench.models.students import create_student
from kdbench.train.trainer import Trainer, seed_everything

TIMING_KEYS = {"train_images_per_s", "train_time_s"}


def _trainer(data, run_dir, learner=None, epochs=3):
    cfg = resolve_config("quick", "synthetic", {"train": {"epochs": epochs, "batch_size": 4,
                                                          "select": "acc"}})
    splits = {s: FrameSplit(data.frames, data.split(s)) for s in ("train", "val", "test")}
    seed_everything(0)
    learner = learner or Vanilla(create_student("resnet18_thin"), None, "none")
    return Trainer(learner, splits, cfg["train"], 16, run_dir, torch.device("cpu"), seed=0,
                   progress=False)


def _strip(history):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def test_resume_equals_uninterrupted_run(tiny_data, tmp_path):
    full = _trainer(tiny_data, tmp_path / "a").fit()
    assert _trainer(tiny_data, tmp_path / "b").fit(stop_after=1) is None
    first = [json.loads(line) for line in (tmp_path / "b/history.jsonl").read_text().splitlines()]
    assert len(first) == 1
    resumed = _trainer(tiny_data, tmp_path / "b").fit(resume=True)
    assert resumed["test"] == full["test"]
    assert resumed["best_epoch"] == full["best_epoch"]
    assert _strip(resumed["history"]) == _strip(full["history"])
    a = torch.load(tmp_path / "a/best.pt", weights_only=True)
    b = torch.load(tmp_path / "b/best.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("last.pt", "best.pt", "history.jsonl"):
        assert (tmp_path / "b" / name).is_file()


def _tokd():
    from kdbench.methods.tokd import TOKD
    from kdbench.models.teacher import DualBranchTeacher

    seed_everything(0)
    teacher = DualBranchTeacher("resnet18_thin", proj_dim=8)
    return TOKD(create_student("resnet18_thin"), teacher, "both", d=64, gradsim_every=1)


def test_tokd_resume_restores_the_rotations_and_the_trace(tiny_data, tmp_path):
    full = _trainer(tiny_data, tmp_path / "a", learner=_tokd()).fit()
    assert _trainer(tiny_data, tmp_path / "b", learner=_tokd()).fit(stop_after=1) is None
    resumed = _trainer(tiny_data, tmp_path / "b", learner=_tokd()).fit(resume=True)
    assert _strip(resumed["history"]) == _strip(full["history"])
    trace_a = (tmp_path / "a/gradsim.jsonl").read_text()
    assert trace_a == (tmp_path / "b/gradsim.jsonl").read_text()
    assert len(trace_a.splitlines()) == 3 * 3  # 3 epochs x 3 steps, one record per step
    a = torch.load(tmp_path / "a/last.pt", weights_only=True)["learner"]
    b = torch.load(tmp_path / "b/last.pt", weights_only=True)["learner"]
    assert torch.equal(a["rotations.rgb.r"], b["rotations.rgb.r"])
    assert (a["rotations.rgb.r"] - torch.eye(64)).abs().sum() > 0  # the rotation moved


def test_training_learns_the_tiny_task(tiny_data, tmp_path):
    result = _trainer(tiny_data, tmp_path, epochs=4).fit()
    h = result["history"]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert 0.0 <= result["test"]["acc"] <= 1.0 and 0.0 <= result["test"]["auc"] <= 1.0
    best = max(range(len(h)), key=lambda i: (h[i]["val_acc"], h[i]["val_auc"], -i))
    assert result["best_epoch"] == best + 1
    assert 0.0 <= result["threshold"] <= 1.0  # chosen on validation, for kdbench predict


class _NanAfterFirstEpoch(Vanilla):
    calls = 0

    def forward_train(self, batch):
        logits, losses = super().forward_train(batch)
        type(self).calls += 1
        if type(self).calls > 3:  # 3 steps = one epoch of 12 frames at batch 4
            losses["loss_kd"] = torch.tensor(float("nan"))
        return logits, losses


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tiny_data, tmp_path):
    learner = _NanAfterFirstEpoch(create_student("resnet18_thin"), None, "none")
    with pytest.raises(KdbenchError, match=r"loss_kd became NaN/inf at epoch 2"):
        _trainer(tiny_data, tmp_path, learner=learner).fit()
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1


def test_selection_prefers_accuracy_then_auc_then_the_earlier_epoch():
    from kdbench.train.trainer import _better

    best = {"val": {"acc": 0.8, "auc": 0.6}}
    assert _better({"acc": 0.81, "auc": 0.1}, best, "acc")
    assert _better({"acc": 0.8, "auc": 0.7}, best, "acc")
    assert not _better({"acc": 0.8, "auc": 0.6}, best, "acc")
    assert not _better({"acc": float("nan"), "auc": 0.9}, best, "acc")
    assert _better({"eer": 0.1, "auc": 0.5}, {"val": {"eer": 0.2, "auc": 0.9}}, "eer")
    assert _better({"acc": 0.5, "auc": 0.5}, None, "acc")


def test_epoch_batches_are_deterministic_and_cover_the_data():
    a = epoch_batches(10, 4, shuffle=True, seed=3, epoch=2, drop_last=True)
    b = epoch_batches(10, 4, shuffle=True, seed=3, epoch=2, drop_last=True)
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(a, b))
    assert [len(p) for p, _ in a] == [4, 4]
    c = epoch_batches(10, 4, shuffle=True, seed=3, epoch=3, drop_last=True)
    assert any((x[0] != y[0]).any() for x, y in zip(a, c))
    ordered = epoch_batches(10, 4, shuffle=False, seed=0, epoch=0, drop_last=False)
    assert [p.tolist() for p, _ in ordered] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert not any(f.any() for _, f in ordered)


def test_flip_flag_mirrors_the_image(tiny_data):
    split = FrameSplit(tiny_data.frames, tiny_data.split("train"))
    import numpy as np

    pos = np.array([1, 0])
    out = split[(pos, np.array([True, False]))]
    ref = split[(pos, np.array([False, False]))]
    assert torch.equal(out["image"][0], ref["image"][0].flip(-1))
    assert torch.equal(out["image"][1], ref["image"][1])
    assert out["label"].tolist() == split.labels[pos].tolist()


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    import random

    import numpy as np

    from kdbench.files import atomic_torch_save
    from kdbench.train.trainer import _rng_state, _set_rng_state, load_checkpoint

    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    atomic_torch_save(tmp_path / "new.pt", {"rng": _rng_state()})
    # the form kdbench 0.1 wrote: numpy's state as arrays, numpy floats in the history
    torch.save({"rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                        "torch": torch.get_rng_state()},
                "history": [{"val_acc": np.float64(0.5)}]}, tmp_path / "old.pt")
    expected = draw()
    for name in ("new.pt", "old.pt"):
        draw(), draw()  # move every generator on
        ckpt = load_checkpoint(tmp_path / name)
        assert ckpt["rng"]["torch"].device.type == "cpu"
        _set_rng_state(ckpt["rng"])
        assert draw() == expected, name
