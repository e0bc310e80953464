"""`kdbench transfer`: a finished run's student adapted to other generators by each strategy,
as new runs that record what they trained; LoRA merged and exported to ONNX; the transfer
table against full fine-tuning; the one-line errors."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from kdbench import api
from kdbench.cli import main
from kdbench.data.synthetic import generated
from kdbench.errors import KdbenchError
from kdbench.models.students import create_student
from kdbench.train.evaluate import load_student
from kdbench.transfer.child import TRANSFERRED, Transfer, child_dir, take_shots
from kdbench.transfer.strategies import parse_strategy

RUN = "runs/synthetic_gen@train=nearest-up+periodic/resnet18_thin/vanilla/none/seed0"
SOURCE, TARGET = "nearest-up,periodic", ("bilinear-up", "denoised")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A 1-epoch vanilla student trained on two of synthetic_gen's generators at 16 px:
    (store, data folder)."""
    root = tmp_path_factory.mktemp("transfer")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generated, "PER_SPLIT", {"train": 8, "val": 3, "test": 3})
        (root / "data").mkdir()
        api.run("vanilla", "synthetic_gen", data_root=root / "data", preset="quick",
                results=root / "R", train_generators=SOURCE, progress=False,
                settings={"data.size": 16, "train.epochs": 1})
        yield root / "R", root / "data"


def _transfer(store, strategy, **kw):
    results, data = store
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generated, "PER_SPLIT", {"train": 8, "val": 3, "test": 3})
        kw.setdefault("train_generators", TARGET)
        kw.setdefault("test_generators", TARGET)
        return api.transfer(results / RUN, to="synthetic_gen", strategy=strategy, epochs=1,
                            data_root=data, progress=False, threads=1, **kw)


def test_shots_take_n_training_frames_per_class_and_keep_the_other_splits():
    index = pd.DataFrame({"row": range(12), "label": [0, 1] * 6,
                          "split": ["train"] * 8 + ["val"] * 2 + ["test"] * 2})
    kept = take_shots(index, 3, seed=0)
    train = kept[kept.split == "train"]
    assert train.label.value_counts().to_dict() == {0: 3, 1: 3}
    assert (kept.split != "train").sum() == 4 and kept["row"].is_monotonic_increasing
    assert take_shots(index, 3, seed=0).equals(kept) and take_shots(index, None, 0) is index
    with pytest.raises(KdbenchError, match="--shots 5 is more than .* \\(4 real, 4 fake\\); "
                       "give --shots 4 or less"):
        take_shots(index, 5, seed=0)


def test_a_transfer_is_named_by_its_parent_target_and_strategy(tmp_path):
    parent = tmp_path / "runs/ds/s/m/rgb/seed2"
    parent.mkdir(parents=True)
    t = Transfer("synthetic_gen", parse_strategy("lora:4"), 3, 16, ("b", "a"))
    assert child_dir(parent, t) == tmp_path / TRANSFERRED / "ds/s/m/rgb/seed2" \
        / "synthetic_gen@train=a+b" / "lora4-e3-shots16"


@pytest.mark.slow
def test_each_strategy_trains_what_it_says_and_the_table_pairs_them_with_full(store):
    pytest.importorskip("peft", reason='the transfer extra is not installed (pip install '
                        '"kdbench[transfer]")')
    results, _ = store
    made = {s: _transfer(store, s, shots=4) for s in ("linear", "partial:1", "full", "lora:2",
                                                      "adapter")}
    full = made["full"][1]["transfer"]
    for out, m in made.values():
        tr = m["transfer"]
        assert m["role"] == "transferred" and m["parent"]["path"] == RUN
        assert tr["train_frames"] == 8 and 0 < tr["trainable_params"] <= tr["all_params"]
        assert (out / "best.pt").is_file() and (out / "predictions.npz").is_file()
        student, loaded = load_student(out)
        assert loaded["dataset"] == "synthetic_gen"
        with torch.no_grad():
            assert student(torch.zeros(1, 3, 16, 16)).logits.shape == (1, 2)
    head = create_student("resnet18_thin").fc
    assert made["linear"][1]["transfer"]["trainable_params"] == sum(p.numel()
                                                                    for p in head.parameters())
    assert full["trainable_params"] == full["all_params"]
    assert made["lora:2"][1]["transfer"]["trainable_params"] < 0.1 * full["trainable_params"]
    assert made["lora:2"][1]["params"] == made["full"][1]["params"]  # merged: the student again
    report = api.report("transfer", results=results)
    rows = {r[2]: r for r in report.rows}
    assert set(rows) == {"linear", "partial:1", "full", "lora:2", "adapter"}
    assert rows["full"][-1] == "" and "[" in rows["lora:2"][-1]
    assert rows["lora:2"][6] == f"{100 * made['lora:2'][1]['transfer']['trainable_params'] / full['trainable_params']:.2f}"  # noqa: E501
    assert _transfer(store, "full", shots=4)[1]["finished_at"] == made["full"][1]["finished_at"]


@pytest.mark.slow
def test_a_lora_run_exports_to_onnx_with_parity(store):
    pytest.importorskip("peft", reason='the transfer extra is not installed (pip install '
                        '"kdbench[transfer]")')
    pytest.importorskip("onnxruntime", reason='the onnx extra is not installed (pip install '
                        '"kdbench[onnx]")')
    results, data = store
    out, _ = _transfer(store, "lora:2", shots=4)
    record = api.export(out, data_root=data, threads=1, repeats=(2, 2), teacher=False)
    assert record["formats"]["onnx_fp32"]["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("argv, message", [
    (["--strategy", "partial:7"], "does not fit resnet18_thin: it has 4 stages"),
    (["--strategy", "lora"], "unknown --strategy 'lora'"),
    (["--strategy", "full", "--shots", "999"], "--shots 999 is more than"),
    (["--strategy", "full", "--train-generators", "bilinear"],
     "unknown generator 'bilinear' (did you mean 'bilinear-up'?)"),
])
def test_bad_transfers_are_one_line(store, capsys, argv, message, monkeypatch):
    results, data = store
    monkeypatch.setattr(generated, "PER_SPLIT", {"train": 8, "val": 3, "test": 3})
    code = main(["transfer", str(results / RUN), "--to", "synthetic_gen", "--data-root",
                 str(data), "--no-progress", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
