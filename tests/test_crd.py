"""CRD (contrastive representation distillation): the NCE loss and the memory bank against
the reference's formulas written out here, the negatives drawn from every frame or the other
class, the banks in the state dict, and the distiller's wiring (embeddings trained, banks
not)."""

import math

import pytest
import torch
from torch import nn

from kdbench.errors import KdbenchError
from kdbench.methods.crd import CRD, ContrastBank, contrast_scores, crd_nce_loss
from kdbench.models.outputs import StudentOut, TeacherOut
from kdbench.models.students import create_student
from kdbench.registry import load_registry

LABELS = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 0, 1])  # N = 10: four real, six fake frames


def _reference_nce(x: torch.Tensor, n_data: int, eps: float = 1e-7) -> float:
    """RepDistiller's ContrastLoss, one score at a time."""
    bsz, m = x.shape[0], x.shape[1] - 1
    pn = 1.0 / n_data
    total = 0.0
    for b in range(bsz):
        p_pos = float(x[b, 0])
        total += math.log(p_pos / (p_pos + m * pn + eps))
        for j in range(1, m + 1):
            total += math.log((m * pn) / (float(x[b, j]) + m * pn + eps))
    return -total / bsz


def test_nce_loss_matches_the_reference_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 6, generator=g, dtype=torch.float64).float() * 0.5 + 1e-3
    assert crd_nce_loss(x, 50).item() == pytest.approx(_reference_nce(x, 50), abs=1e-4)
    # by hand: K = 1, N = 10 -> m Pn = 0.1; -(log(0.5 / 0.6) + log(0.1 / 0.2))
    tiny = torch.tensor([[0.5, 0.1]])
    expected = -(math.log(0.5 / (0.6 + 1e-7)) + math.log(0.1 / (0.2 + 1e-7)))
    assert crd_nce_loss(tiny, 10).item() == pytest.approx(expected, rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 under mixed precision
        assert crd_nce_loss(tiny.bfloat16(), 10).dtype == torch.float32


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def test_bank_scores_normaliser_and_momentum_update():
    torch.manual_seed(0)
    bank = ContrastBank(feat_dim=4, nce_t=0.07, nce_m=0.5)
    bank.allocate(6)
    stdv = 1 / math.sqrt(4 / 3)
    assert bank.memory_s.abs().max() <= stdv and bank.z.tolist() == [-1.0, -1.0]
    old_s, old_t = bank.memory_s.clone(), bank.memory_t.clone()
    e_s, e_t = _unit(torch.randn(2, 4)), _unit(torch.randn(2, 4))
    idx = torch.tensor([[1, 0, 2], [4, 3, 5]])
    out_s, out_t = bank(e_s, e_t, idx)
    raw_s = torch.stack([torch.exp(old_t[idx[b]] @ e_s[b] / 0.07) for b in range(2)])
    raw_t = torch.stack([torch.exp(old_s[idx[b]] @ e_t[b] / 0.07) for b in range(2)])
    z_s, z_t = raw_s.mean().item() * 6, raw_t.mean().item() * 6  # first call: mean * N
    assert bank.z.tolist() == pytest.approx([z_s, z_t], rel=1e-5)
    torch.testing.assert_close(out_s, raw_s / z_s, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out_t, raw_t / z_t, rtol=1e-5, atol=1e-7)
    pos, rest = [1, 4], [0, 2, 3, 5]
    torch.testing.assert_close(bank.memory_s[pos], _unit(0.5 * old_s[pos] + 0.5 * e_s))
    torch.testing.assert_close(bank.memory_t[pos], _unit(0.5 * old_t[pos] + 0.5 * e_t))
    assert torch.equal(bank.memory_s[rest], old_s[rest])
    assert torch.equal(bank.memory_t[rest], old_t[rest])
    z = bank.z.clone()
    bank(e_s, e_t, idx)  # Z is fixed after the first call
    assert torch.equal(bank.z, z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert contrast_scores(bank.memory_t, idx, e_s.bfloat16(), 0.07).dtype == torch.float32


class TinyStudent(nn.Module):
    stage_channels = [8]

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        f = self.conv(x)
        pooled = f.mean((2, 3))
        return StudentOut(logits=self.fc(pooled), feats=[f], pooled=pooled)


class StubTeacher(nn.Module):
    """Thin-ResNet-shaped pooled vectors; asking for the frequency branch raises."""

    stage_channels = [32, 64, 128, 256]

    def __init__(self):
        super().__init__()
        self.calls: list[set] = []

    def forward(self, x, needs=None):
        needs = set(needs or ())
        self.calls.append(needs)
        if {"freq", "freq_proj"} & needs:
            raise AssertionError("frequency branch touched")
        g = torch.Generator().manual_seed(0)
        pooled = torch.rand(x.shape[0], self.stage_channels[-1], generator=g)
        return TeacherOut(logits=torch.zeros(x.shape[0], 2), rgb_pooled=pooled)


class BothTeacher(StubTeacher):
    def forward(self, x, needs=None):
        needs = set(needs or ())
        out = super().forward(x, needs - {"freq"})
        if "freq" in needs:
            out.freq_pooled = out.rgb_pooled.flip(1)
        return out


HP = {"beta": 0.8, "feat_dim": 16, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5}


def _batch(size: int = 16):
    pos = torch.tensor([0, 3, 5, 8])
    return {"image": torch.randn(4, 3, size, size), "label": LABELS[pos], "pos": pos}


def test_negatives_come_from_the_other_class_and_are_seeded():
    d = CRD(TinyStudent(), StubTeacher(), "rgb", **{**HP, "negatives": "other_class"})
    d.on_train_data(LABELS)
    # round(16384 * 10 / 50000) = 3 <= the smaller other-class pool (4 real frames)
    assert d.k_eff == 3 and d.run_info["nce_k_effective"] == 3
    pos = torch.tensor([0, 3, 5, 8, 9])
    torch.manual_seed(1)
    idx = d.contrast_indices(pos)
    assert idx.shape == (5, 4) and torch.equal(idx[:, 0], pos)
    assert (LABELS[idx[:, 1:]] != LABELS[pos][:, None]).all()
    assert all(len(set(row.tolist())) == 3 for row in idx[:, 1:])  # without replacement
    torch.manual_seed(1)
    assert torch.equal(d.contrast_indices(pos), idx)
    assert not torch.equal(d.contrast_indices(pos), idx)  # a fresh draw each step
    big = CRD(TinyStudent(), StubTeacher(), "rgb",
              **{**HP, "nce_k": 10**6, "negatives": "other_class"})
    big.on_train_data(LABELS)
    assert big.k_eff == 4  # capped by the 4 real frames: a fake frame contrasts with all
    rows = big.contrast_indices(torch.tensor([3, 4]))[:, 1:]
    assert [sorted(r.tolist()) for r in rows] == [[0, 1, 2, 8]] * 2
    big.k_eff = 6  # more than the 4 real frames: drawn with replacement, still real only
    rows = big.contrast_indices(torch.tensor([3, 4]))[:, 1:]
    assert rows.shape == (2, 6) and (LABELS[rows] == 0).all()
    with pytest.raises(KdbenchError, match="two classes"):
        CRD(TinyStudent(), StubTeacher(), "rgb", **HP).on_train_data(torch.zeros(5).long())


def test_negatives_any_draw_from_every_frame():
    d = CRD(TinyStudent(), StubTeacher(), "rgb", **HP)  # the default: any
    d.on_train_data(LABELS)
    assert d.k_eff == 3  # round(16384 * 10 / 50000), under the 10 frames of the pool
    torch.manual_seed(0)
    pos = torch.tensor([0, 3, 5, 8, 9])
    drawn = torch.cat([d.contrast_indices(pos)[:, 1:] for _ in range(50)])
    assert set(drawn.flatten().tolist()) == set(range(10))  # both classes, every frame
    assert all(len(set(row.tolist())) == 3 for row in drawn)  # without replacement


def test_banks_are_in_the_state_dict_and_a_resume_continues_exactly():
    torch.manual_seed(0)
    d = CRD(TinyStudent(), BothTeacher(), "both", **HP)
    with pytest.raises(RuntimeError, match="on_train_data"):
        d.forward_train(_batch())
    d.on_train_data(LABELS)
    state = d.state_dict()
    for branch in ("rgb", "freq"):
        for side in ("s", "t"):
            assert state[f"banks.{branch}.memory_{side}"].shape == (10, 16)
        assert state[f"banks.{branch}.z"].tolist() == [-1.0, -1.0]
    assert not any(k.startswith(("frame_labels", "negatives")) for k in state)
    d.forward_train(_batch())
    state = {k: v.clone() for k, v in d.state_dict().items()}
    assert (state["banks.rgb.z"] > 0).all() and (state["banks.freq.z"] > 0).all()
    fresh = CRD(TinyStudent(), BothTeacher(), "both", **HP)
    fresh.on_train_data(LABELS)
    assert not torch.equal(fresh.banks["rgb"].memory_s, state["banks.rgb.memory_s"])
    fresh.load_state_dict(state)
    for k, v in state.items():
        assert torch.equal(fresh.state_dict()[k], v), k
    batch = _batch()
    torch.manual_seed(7)
    _, a = d.forward_train(batch)
    torch.manual_seed(7)
    _, b = fresh.forward_train(batch)
    assert {k: v.item() for k, v in a.items()} == {k: v.item() for k, v in b.items()}
    for k, v in d.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_rgb_mode_never_touches_frequency_features():
    teacher = StubTeacher()
    d = CRD(create_student("resnet18_thin"), teacher, "rgb", **HP)
    d.on_train_data(LABELS)
    assert d.teacher_needs() == {"rgb"}
    _, losses = d.forward_train(_batch(64))
    assert set(losses) == {"loss_ce", "loss_kd_rgb"}
    assert teacher.calls == [{"rgb"}]
    assert set(d.banks) == {"rgb"} and set(d.adaptors) == {"rgb"}


def test_both_mode_trains_student_and_embeddings_but_not_the_banks():
    d = CRD(create_student("resnet18_thin"), BothTeacher(), "both", **HP)
    d.on_train_data(LABELS)
    assert d.run_info["nce_k_effective"] == 3
    _, losses = d.forward_train(_batch(64))
    assert set(losses) == {"loss_ce", "loss_kd_rgb", "loss_kd_freq"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    owned = {id(p) for p in d.trainable_modules().parameters()}
    for name, p in d.named_parameters():
        assert id(p) in owned, f"{name} is not in the optimizer"
        assert p.grad is not None, f"{name} received no gradient"
    for branch in ("rgb", "freq"):
        for side in ("s", "t"):
            assert d.adaptors[branch][side].linear.weight.grad.abs().sum() > 0
    assert not list(d.banks.parameters())
    banks = {t.data_ptr() for t in d.banks.buffers()}
    assert len(banks) == 6
    assert banks.isdisjoint(p.data_ptr() for p in d.trainable_modules().parameters())
    rgb = {id(p) for p in d.adaptors["rgb"].parameters()}  # separate embeddings per branch
    assert rgb.isdisjoint(id(p) for p in d.adaptors["freq"].parameters())


@pytest.mark.parametrize("mode", ["rgb", "both"])
def test_registry_resolves_crd(mode):
    entry = load_registry()["crd"]
    assert entry.resolve() is CRD and entry.modes == ["rgb", "both"]
    hp = entry.hparams("synthetic")
    assert hp == {"beta": 0.8, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5,
                  "negatives": "any", "both_weighting": "sum"}
    assert entry.legacy == {"negatives": "other_class"}  # what runs stored before it used
    teacher = BothTeacher() if mode == "both" else StubTeacher()
    d = entry.resolve()(TinyStudent(), teacher, mode, **hp)
    assert d.weight == 0.8 and set(d.banks) == ({"rgb", "freq"} if mode == "both" else {"rgb"})
    with pytest.raises(KdbenchError):
        entry.hparams("synthetic", {"nce_m": 1.0})
    with pytest.raises(KdbenchError):
        entry.hparams("synthetic", {"nce_t": 0.0})


def _trainer(data, run_dir):
    from kdbench.config import resolve_config
    from kdbench.data.loader import FrameSplit
    from kdbench.models.teacher import DualBranchTeacher
    from kdbench.train.trainer import Trainer, seed_everything

    cfg = resolve_config("quick", "synthetic", {"train": {"epochs": 2, "batch_size": 4,
                                                          "select": "acc"}})
    splits = {s: FrameSplit(data.frames, data.split(s)) for s in ("train", "val", "test")}
    seed_everything(0)
    learner = CRD(create_student("resnet18_thin"), DualBranchTeacher("resnet18_thin", proj_dim=8),
                  "both", **HP)
    trainer = Trainer(learner, splits, cfg["train"], 16, run_dir, torch.device("cpu"), seed=0,
                      progress=False)
    return trainer, learner


@pytest.mark.slow
def test_a_resumed_training_run_continues_exactly(tiny_data, tmp_path):
    trainer, learner = _trainer(tiny_data, tmp_path / "a")
    full = trainer.fit()
    assert learner.run_info["nce_k_effective"] == 4  # round(16384 * 12 / 50000), 6 per class
    assert _trainer(tiny_data, tmp_path / "b")[0].fit(stop_after=1) is None
    resumed = _trainer(tiny_data, tmp_path / "b")[0].fit(resume=True)
    timing = {"train_images_per_s", "train_time_s"}
    assert [{k: v for k, v in row.items() if k not in timing} for row in resumed["history"]] == [
        {k: v for k, v in row.items() if k not in timing} for row in full["history"]]
    a = torch.load(tmp_path / "a/last.pt", weights_only=True)["learner"]
    b = torch.load(tmp_path / "b/last.pt", weights_only=True)["learner"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (a["banks.rgb.z"] > 0).all() and a["banks.freq.memory_t"].shape == (12, 16)


def test_a_stored_run_without_negatives_is_taken_for_the_reference_rule(tmp_path):
    """registry `legacy`: runs stored before `negatives` existed drew from the other class, so
    they are not the new default's runs."""
    import json
    from types import SimpleNamespace

    from kdbench.config import RunSpec, resolve_config
    from kdbench.train import runner

    entry = load_registry()["crd"]
    ctx = SimpleNamespace(config=resolve_config("cpu", "synthetic", {}))
    old = {k: v for k, v in entry.hparams("synthetic").items() if k != "negatives"}
    (tmp_path / "metrics.json").write_text(json.dumps(
        {"status": "finished", "config": ctx.config, "hparams": old}))
    for negatives, same in (("any", False), ("other_class", True)):
        hp = entry.hparams("synthetic", {"negatives": negatives})
        spec = RunSpec("synthetic", "resnet18_thin", "crd", "rgb", 0, hp)
        ignored = CRD.ignored_hparams("rgb")
        identity = runner._identity(ctx, spec, ignored)
        if same:
            assert runner._finished_as(ctx, tmp_path, spec, entry, ignored, identity)
        else:
            with pytest.raises(KdbenchError, match="negatives: 'other_class' -> 'any'"):
                runner._finished_as(ctx, tmp_path, spec, entry, ignored, identity)
