"""Data parallel under torchrun: shards, collectives, the trainer and TOKD on 2 gloo ranks
against one process, and `torchrun -m kdbench run` end to end."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from kdbench import distributed
from kdbench.cli import main
from kdbench.data.loader import FrameSplit, epoch_batches
from kdbench.errors import KdbenchError
from kdbench.train import trainer as trainer_module
from kdbench.train.trainer import Trainer
from tests.conftest import write_prepared

RANKS = 2


# ------------------------------------------------------------------ one process


def test_the_ranks_slices_make_up_the_global_batch_and_the_blocks_the_split():
    batch = epoch_batches(30, 12, shuffle=True, seed=3, epoch=1, drop_last=True)[0]
    for n in (1, 2, 3, 5):
        parts = [distributed.shard_batch(batch, r, n) for r in range(n)]
        assert np.array_equal(np.concatenate([p[0] for p in parts]), batch[0])
        assert np.array_equal(np.concatenate([p[1] for p in parts]), batch[1])
        blocks = [distributed.shard_range(21, r, n) for r in range(n)]
        assert blocks[0][0] == 0 and blocks[-1][1] == 21
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))  # contiguous, in order


def test_one_process_is_the_identity():
    x = torch.arange(3.0)
    assert not distributed.active() and distributed.is_main() and distributed.size() == 1
    assert distributed.all_gather_cat(x) is x
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.mean_over_ranks({"a": 2.0}) == {"a": 2.0}
    learner = _Toy()
    assert distributed.data_parallel(learner, torch.device("cpu"), sync_bn=True) == \
        learner.forward_train  # sync_bn only acts on several ranks
    distributed.check_batch_size(7)


def test_torchruns_environment_is_read_and_checked(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.world() == distributed.World(rank=2, local_rank=0, size=4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(KdbenchError, match="not a rank of WORLD_SIZE=4"):
        distributed.world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(KdbenchError, match="must be integers"):
        distributed.world()


def test_under_torchrun_only_a_plain_run_or_reproduce_starts(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["table", "--results", str(tmp_path)]) == 2
    assert "kdbench table runs in one process" in capsys.readouterr().err
    assert main(["run", "--methods", "vanilla", "--launcher", "print", "--results",
                 str(tmp_path)]) == 2
    assert "drop --launcher print" in capsys.readouterr().err


def test_the_state_digest_sees_a_changed_buffer():
    a, b = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    assert distributed.state_digest(a) == distributed.state_digest(b)
    b.running_mean[1] = 1e-7
    assert distributed.state_digest(a) != distributed.state_digest(b)


# ------------------------------------------------------------------ two gloo ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, job: str, out: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(RANKS),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    device = distributed.setup(torch.device("cpu"))
    try:
        torch.save(globals()[job](out, device), out / f"rank{rank}.pt")
    finally:
        distributed.teardown()


def _on_two_ranks(job: str, out: Path) -> list[dict]:
    """``job(out, device)`` on two gloo ranks; each rank's return value."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, job, out)) for r in range(RANKS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * RANKS
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(RANKS)]


def _collectives(out: Path, device: torch.device) -> dict:
    r = distributed.rank()
    got = {"rank": r, "main": distributed.is_main(), "size": distributed.size(),
           "cat0": distributed.all_gather_cat(torch.arange(r + 1) + 10 * r),
           "cat1": distributed.all_gather_cat(torch.full((2, r + 1), float(r)), dim=1),
           "bcast": distributed.broadcast_object({"from": r}),
           "mean": distributed.mean_over_ranks({"a": float(r), "b": 4.0}),
           "any": distributed.any_rank(r == 1), "none": distributed.any_rank(False),
           "objects": distributed.gather_objects(f"r{r}")}

    def fails():
        raise KdbenchError("only rank 0 looks")

    try:
        distributed.on_main(fails)
    except distributed.RankZeroError as exc:
        got["shared_error"] = str(exc)
    try:
        distributed.data_parallel(_Toy(), device, sync_bn=True)
    except KdbenchError as exc:
        got["sync_bn"] = str(exc)
    try:
        distributed.check_batch_size(63)
    except distributed.RankZeroError as exc:
        got["batch"] = str(exc)
    return got


@pytest.mark.slow
def test_collectives_on_two_ranks(tmp_path):
    got = _on_two_ranks("_collectives", tmp_path)
    assert [g["main"] for g in got] == [True, False] and got[1]["size"] == 2
    for g in got:
        assert g["cat0"].tolist() == [0, 10, 11]  # uneven sizes, rank order
        assert g["cat1"].tolist() == [[0.0, 1.0, 1.0]] * 2
        assert g["bcast"] == {"from": 0} and g["mean"] == {"a": 0.5, "b": 4.0}
        assert g["any"] is True and g["none"] is False and g["objects"] == ["r0", "r1"]
        assert g["shared_error"] == "only rank 0 looks"  # raised on both: all stop alike
        assert "sync_bn needs CUDA" in g["sync_bn"]
        assert "--set train.batch_size=64" in g["batch"]


class _Toy(nn.Module):
    """A learner without BatchNorm, so one process and two ranks compute the same step."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 8), nn.Tanh(),
                                 nn.Linear(8, 2))

    def forward_train(self, batch):
        logits = self.net(batch["image"])
        return logits, {"loss_ce": F.cross_entropy(logits, batch["label"])}

    def after_backward(self, step):
        return {"grad_norm": float(self.net[1].weight.grad.norm())}

    def trainable_modules(self):
        return nn.ModuleDict({"net": self.net})

    def predict(self, x):
        return self.net(x)


def _splits() -> dict[str, FrameSplit]:
    """Uneven evaluation splits (21 and 19 frames), a brighter corner on fake frames."""
    rng = np.random.default_rng(0)
    sizes = {"train": 48, "val": 21, "test": 19}
    n = sum(sizes.values())
    labels = np.arange(n) // 2 % 2
    frames = rng.integers(0, 200, size=(n, 8, 8, 3)).astype(np.uint8)
    frames[labels == 1, :3, :3] += 40
    rows = pd.DataFrame({"row": np.arange(n), "label": labels, "video": np.arange(n) // 2})
    out, start = {}, 0
    for split, k in sizes.items():
        out[split] = FrameSplit(frames, rows.iloc[start:start + k])
        start += k
    return out


TOY_CFG = {"epochs": 3, "batch_size": 16, "lr": 0.02, "step_size": 2, "gamma": 0.5,
           "weight_decay": 0.0, "select": "auc", "eval_batch_size": 7, "amp": False,
           "channels_last": False, "compile": False, "teacher_cache_gb": 0}


def _fit(run_dir: Path) -> tuple[nn.Module, dict]:
    learner = _Toy()
    result = Trainer(learner, _splits(), TOY_CFG, 8, run_dir, torch.device("cpu"), seed=0,
                     label="toy", progress=False).fit()
    return learner, result


def _fit_on_ranks(out: Path, device: torch.device) -> dict:
    writes = []
    for name in ("atomic_torch_save", "atomic_write_jsonl"):  # count this rank's writes
        real = getattr(trainer_module, name)
        setattr(trainer_module, name,
                lambda path, *a, _real=real, **k: (writes.append(Path(path).name),
                                                   _real(path, *a, **k)))
    learner, result = _fit(out / "run")
    return {"state": learner.state_dict(), "result": result, "writes": writes}


@pytest.mark.slow
def test_two_ranks_train_the_same_model_as_one_process_and_only_rank_0_writes(tmp_path):
    torch.set_num_threads(1)
    one, single = _fit(tmp_path / "one")
    ranks = _on_two_ranks("_fit_on_ranks", tmp_path)
    for k, v in one.state_dict().items():  # the same global batch: the same steps
        assert torch.equal(ranks[0]["state"][k], ranks[1]["state"][k])
        assert torch.allclose(ranks[0]["state"][k], v, atol=1e-5), k
    result = ranks[0]["result"]
    for split in ("val", "test"):  # gathered in order: the video AUC pairs frames right
        got = result[split] if split == "test" else result["val"]
        for metric, value in (single[split]).items():
            assert got[metric] == pytest.approx(value, abs=1e-6), (split, metric)
    assert [h["train_loss"] for h in result["history"]] == pytest.approx(
        [h["train_loss"] for h in single["history"]], rel=1e-5)
    assert result["world_size"] == 2 and single["world_size"] == 1
    digests = result["data_parallel"]["state_sha256_by_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert ranks[1]["writes"] == [] and "best.pt" in ranks[0]["writes"]
    assert ranks[0]["writes"].count("last.pt") == TOY_CFG["epochs"]


def _tokd_steps(out: Path, device: torch.device | None) -> dict:
    from kdbench.methods.tokd import TOKD
    from tests.test_tokd import TRAIN_CFG, ToyStudent, ToyTeacher, _batch

    torch.manual_seed(0)
    m = TOKD(ToyStudent(), ToyTeacher(), "both", d=8, projectors=False, gradsim_every=0)
    m.on_fit_start(TRAIN_CFG, steps_per_epoch=10)
    forward = distributed.data_parallel(m, torch.device("cpu"), sync_bn=False)
    opt = torch.optim.SGD(m.trainable_modules().parameters(), lr=0.05)
    for step in range(4):
        batch = _batch(b=8, seed=step)
        lo, hi = distributed.shard_range(8, distributed.rank(), distributed.size())
        _, losses = forward({k: v[lo:hi] for k, v in batch.items()})
        opt.zero_grad()
        sum(losses.values()).backward()
        m.after_backward(step)
        opt.step()
    return {b: m.rotations[b].matrix().clone() for b in m.rotations} | {
        "student": m.student.state_dict()}


@pytest.mark.slow
def test_tokd_keeps_the_same_rotation_on_every_rank_and_that_of_one_process(tmp_path):
    torch.set_num_threads(1)
    one = _tokd_steps(tmp_path, None)
    ranks = _on_two_ranks("_tokd_steps", tmp_path)
    for b in ("rgb", "freq"):
        assert torch.equal(ranks[0][b], ranks[1][b])  # bit for bit
        assert not torch.allclose(one[b], torch.eye(8), atol=1e-3)  # R did move
        assert torch.allclose(ranks[0][b], one[b], atol=1e-5)
    for k, v in one["student"].items():  # and the student's weights
        assert torch.allclose(ranks[0]["student"][k], v, atol=1e-5), k


# ------------------------------------------------------------------ torchrun, end to end


@pytest.mark.slow
def test_torchrun_writes_each_run_once_from_rank_0_with_one_state_on_both_ranks(tmp_path):
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    results = tmp_path / "R"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port", str(_free_port()), "-m", "kdbench", "run", "--methods",
           "vanilla,tokd", "--modes", "both", "--dataset", "ff_c40", "--data-root", str(data),
           "--preset", "quick", "--set", "data.size=16", "--set", "train.epochs=2",
           "--results", str(results), "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    log = done.stdout + done.stderr
    runs = ["vanilla/none", "tokd/both", "tokd@rotation=false/both"]
    assert log.count("done teacher:") == 1
    for run in runs:  # rank 1 prints nothing
        assert log.count(f"done resnet18_thin/{run}/seed0:") == 1, run
        metrics = json.loads((results / "runs" / "ff_c40" / "resnet18_thin" / run / "seed0"
                              / "metrics.json").read_text())
        assert metrics["world_size"] == 2
        digests = metrics["data_parallel"]["state_sha256_by_rank"]
        assert digests[0] == digests[1]  # TOKD's R and every weight, the same on both ranks
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "trained 0, found finished 3" in again.stderr
    at = cmd.index("--results") + 1
    fresh = [*cmd[:at], str(tmp_path / "B"), *cmd[at + 1:]]
    bad = subprocess.run([*fresh, "--set", "train.batch_size=63"], capture_output=True,
                         text=True, env=env, timeout=600)
    assert bad.returncode != 0
    assert bad.stderr.count("does not split over 2 ranks") == 1  # said once, by rank 0
