"""The paper preset's code path (Xception at 299 px, channels-last, bf16 autocast, the shared
teacher cache) runs a training step on the CPU, so what runs on a GPU is what is tested here."""

import numpy as np
import pandas as pd
import pytest
import torch

from kdbench.config import for_device, resolve_config
from kdbench.data.loader import FrameSplit
from kdbench.registry import load_registry
from kdbench.train.teacher_cache import ensure
from kdbench.train.teachers import build_teacher
from kdbench.train.trainer import Trainer, seed_everything


@pytest.mark.slow
def test_paper_preset_trains_a_tokd_step_at_299_px_with_xception(tmp_path):
    cfg = for_device(resolve_config("paper", "ff_c40", {}), "cuda")  # the GPU's settings
    assert cfg["train"]["amp"] is True and cfg["train"]["channels_last"] is True
    cfg["train"].update(batch_size=2, eval_batch_size=2)
    size = cfg["data"]["size"]
    assert size == 299 and cfg["teacher"]["backbone"] == "xception"
    assert cfg["teacher"]["pretrained"] == "imagenet"
    cfg["teacher"]["pretrained"] = None  # tests never download (test_models fakes the cache)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    rows = pd.DataFrame({"row": [0, 1], "label": [0, 1], "video": ["a", "b"]})
    split = FrameSplit(frames, rows)
    seed_everything(0)
    teacher = build_teacher(cfg).eval()
    entry = load_registry()["tokd"]
    from kdbench.models.students import create_student

    learner = entry.resolve()(create_student("xception"), teacher, "both",
                              **entry.hparams("ff_c40"))
    cpu = torch.device("cpu")
    trainer = Trainer(learner, {"train": split}, cfg["train"], size, tmp_path, cpu, 0,
                      progress=False)
    assert trainer.amp and trainer.channels_last  # forced on, as on CUDA
    trainer._prepare_models()
    got = ensure(teacher, learner.teacher_needs(), split, size, cpu, 2, tmp_path / "c", 1 << 30,
                 channels_last=True)
    assert got.cache is not None and got.built == ["freq_proj", "logits", "rgb_proj"]
    trainer.lookup = got.cache.read
    opt = torch.optim.Adam(learner.trainable_modules().parameters(), lr=1e-4)
    learner.on_fit_start(cfg["train"], 1)
    learner.train()
    before = learner.rotations["rgb"].r.clone()
    batch = next(trainer._batches("train", 2, shuffle=True, lookup=trainer.lookup))
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert batch["teacher.rgb_proj"].dtype == torch.float32  # fp16 on disk
    logits, losses, extras = trainer.train_step(batch, opt, 0)
    assert logits.shape == (2, 2) and logits.dtype == torch.bfloat16  # the model ran in bf16
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert set(losses) == {"loss_ce", "loss_kd_rgb", "loss_kd_freq"}
    assert isinstance(extras["rot_cos"], torch.Tensor)  # not read: no host sync
    r = learner.rotations["rgb"].r
    assert r.dtype == torch.float32 and not torch.equal(r, before)
    torch.testing.assert_close(r.T @ r, torch.eye(len(r)), atol=1e-5, rtol=0)
