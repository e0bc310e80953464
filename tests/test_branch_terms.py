"""both_weighting (sum | mean) and the gradcos trace: the engine's view of a both-mode run's
two distillation terms, for any method."""

import json

import pytest
import torch

from kdbench.config import resolve_config, variant_tag
from kdbench.data.loader import FrameSplit
from kdbench.errors import KdbenchError
from kdbench.models.students import create_student
from kdbench.models.teacher import DualBranchTeacher
from kdbench.registry import load_registry
from kdbench.train.branch_terms import BranchCosine, per_sample_cosine, weigh_branches
from kdbench.train.trainer import Trainer, seed_everything


def _trainer(data, run_dir, learner, every=1):
    cfg = resolve_config("quick", "synthetic", {"train": {"epochs": 1, "batch_size": 4,
                                                          "gradcos_every": every}})
    splits = {s: FrameSplit(data.frames, data.split(s)) for s in ("train", "val", "test")}
    return Trainer(learner, splits, cfg["train"], 16, run_dir, torch.device("cpu"), seed=0,
                   progress=False)


def _distiller(method, mode="both", **hp):
    entry = load_registry()[method]
    seed_everything(0)
    teacher = DualBranchTeacher("resnet18_thin", proj_dim=8)
    return entry.resolve()(create_student("resnet18_thin"), teacher, mode,
                           **entry.hparams("synthetic", hp))


def test_every_method_with_a_both_mode_has_both_weighting_sum_ignored_elsewhere():
    registry = load_registry()
    for entry in registry.values():
        if "both" not in entry.modes:
            assert "both_weighting" not in entry.defaults
            continue
        assert entry.defaults["both_weighting"] == "sum"
        cls = entry.resolve()
        assert "both_weighting" in cls.ignored_hparams("rgb")
        assert "both_weighting" not in cls.ignored_hparams("both")
        mean = entry.hparams("synthetic", {"both_weighting": "mean"})
        assert variant_tag(mean, entry.hparams("synthetic")) == "both_weighting=mean"
    with pytest.raises(KdbenchError, match="both_weighting"):
        registry["kd"].hparams("synthetic", {"both_weighting": "half"})


def test_weigh_branches_halves_the_two_terms_and_nothing_else():
    losses = {"loss_ce": torch.tensor(1.0), "loss_kd_rgb": torch.tensor(2.0),
              "loss_kd_freq": torch.tensor(4.0)}
    assert weigh_branches(losses, 1.0, "x") is losses
    out = weigh_branches(losses, 0.5, "x")
    assert [float(out[k]) for k in losses] == [1.0, 1.0, 2.0]
    with pytest.raises(KdbenchError, match="no 'loss_kd_freq'"):
        weigh_branches({"loss_ce": torch.tensor(1.0), "loss_kd_rgb": torch.tensor(1.0)}, 0.5,
                       "x")


@pytest.mark.parametrize("method", ["kd", "at", "fitnet", "tokd"])
def test_mean_weighting_halves_each_branch_term_of_a_training_step(tiny_data, tmp_path, method):
    """The same first step under sum and mean: each branch term halves, CE is unchanged."""
    losses = {}
    for weighting in ("sum", "mean"):
        learner = _distiller(method, both_weighting=weighting)
        trainer = _trainer(tiny_data, tmp_path / weighting, learner, every=0)
        batch = next(trainer._batches("train", 4, shuffle=False))
        opt = torch.optim.SGD(learner.trainable_modules().parameters(), lr=0.0)
        learner.train()
        step = trainer.train_step(batch, opt, 1)[1]
        losses[weighting] = {k: float(v.detach()) for k, v in step.items()}
    s, m = losses["sum"], losses["mean"]
    assert m["loss_ce"] == s["loss_ce"]
    for term in ("loss_kd_rgb", "loss_kd_freq"):
        assert s[term] > 0 and m[term] == pytest.approx(0.5 * s[term], rel=1e-6)


def test_gradcos_picks_the_deepest_stage_both_terms_reach_and_changes_no_number(
        tiny_data, tmp_path):
    results = {}
    for every in (0, 1):
        learner = _distiller("kd")
        results[every] = _trainer(tiny_data, tmp_path / str(every), learner, every).fit()
        params = {k: v.clone() for k, v in learner.student.state_dict().items()}
        results[every]["params"] = params
    assert all(torch.equal(results[0]["params"][k], results[1]["params"][k])
               for k in results[0]["params"])
    assert results[0]["test"] == results[1]["test"]
    assert not (tmp_path / "0/gradcos.jsonl").exists()
    rows = [json.loads(line) for line in (tmp_path / "1/gradcos.jsonl").read_text().splitlines()]
    assert len(rows) >= 2 and {r["epoch"] for r in rows} == {1}
    assert all(r["stage"] == 4 and -1 <= r["cos"] <= 1 and r["norm_ratio"] > 0 for r in rows)


def test_gradcos_of_a_middle_stage_method_is_taken_at_that_stage(tiny_data, tmp_path):
    learner = _distiller("fitnet")  # reads the middle stage only: the last map gets no gradient
    _trainer(tiny_data, tmp_path, learner, 1).fit()
    rows = [json.loads(line) for line in (tmp_path / "gradcos.jsonl").read_text().splitlines()]
    assert rows and all(r["stage"] < 4 for r in rows)


def test_gradcos_is_not_recorded_in_rgb_mode():
    learner = _distiller("kd", mode="rgb")
    assert not BranchCosine(learner, 1).active
    assert "gradcos" not in learner.traces


def test_gradcos_equals_the_cosine_by_hand():
    """On a known graph: L_rgb = <a, z>, L_fre = <b, z> at z = the last map: the gradients are
    a and b, so the record is cos(a, b) per sample."""
    torch.manual_seed(0)
    z = torch.randn(3, 2, 2, 2, requires_grad=True)
    a, b = torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2)
    tracer = BranchCosine.__new__(BranchCosine)
    tracer.active, tracer.every, tracer.epoch, tracer.rows = True, 1, 1, []
    tracer.maps = [z * 1.0]
    m = tracer.maps[0]
    tracer.record({"loss_kd_rgb": (a * m).sum(), "loss_kd_freq": (b * m).sum()}, 0)
    expected = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).mean()
    assert torch.allclose(tracer.rows[0]["cos"], expected, atol=1e-6)
    assert torch.allclose(per_sample_cosine(a, a), torch.ones(3))


def test_gradcos_of_tokd_equals_its_own_cos_full(tiny_data, tmp_path):
    """TOKD's gradsim trace takes the same gradients at S_B(x) after its backward pass."""
    learner = _distiller("tokd", d=64, gradsim_every=1)
    _trainer(tiny_data, tmp_path, learner, 1).fit()
    ours = [json.loads(line) for line in (tmp_path / "gradcos.jsonl").read_text().splitlines()]
    theirs = [json.loads(line) for line in (tmp_path / "gradsim.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["cos_full"] for r in theirs}
    assert ours and all(r["stage"] == 4 for r in ours)
    for r in ours:
        assert r["cos"] == pytest.approx(by_step[r["step"]], abs=1e-5)
