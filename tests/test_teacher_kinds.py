"""Teacher kinds through the whole run: a single-branch teacher, a trained detector loaded from
its checkpoint, the modes they allow, and identities that leave stored runs found."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import timm
import torch

from kdbench import api
from kdbench.config import for_device, resolve_config
from kdbench.errors import KdbenchError
from kdbench.plan import plan
from kdbench.request import RunRequest
from kdbench.train.runner import comparable_config
from kdbench.train.teachers import teacher_folder
from tests.conftest import write_prepared

SINGLE = {"teacher.kind": "single", "teacher.backbone": "resnet18"}


def _base(tmp_path: Path, **settings) -> dict:
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    return {"dataset": "ff_c40", "data_root": data, "preset": "quick", "threads": 1,
            "results": tmp_path / "r", "progress": False,
            "settings": {"data.size": 32, "train.epochs": 1, **settings}}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_single_teacher_plans_rgb_only_and_refuses_both(tmp_path):
    base = _base(tmp_path, **SINGLE)
    p = plan(RunRequest.make("run", methods=["kd", "at"], **base))
    assert {run.spec.mode for run in p.runs} == {"rgb"}
    with pytest.raises(KdbenchError) as err:
        plan(RunRequest.make("run", methods=["kd"], modes=["both"], **base))
    assert "needs the frequency branch of a dual teacher" in str(err.value)
    dual = plan(RunRequest.make("run", methods=["kd"], **_base(tmp_path)))
    assert {run.spec.mode for run in dual.runs} == {"rgb", "both"}


def test_new_teacher_settings_at_their_defaults_leave_identities_unchanged():
    cfg = for_device(resolve_config("cpu", "synthetic", {}), "cpu")
    assert cfg["teacher"]["kind"] == "dual" and cfg["teacher"]["checkpoint"] is None
    old = {k: v for k, v in cfg["teacher"].items()  # a config stored before the new settings
           if k not in ("kind", "freq_backbone", "checkpoint", "key_prefix", "freq_view",
                        "wavelet", "levels")}
    assert comparable_config(cfg)["teacher"] == old
    assert teacher_folder(Path("r"), "synthetic", cfg).name == "resnet18_thin-db0623b7"  # stored
    single = for_device(resolve_config("cpu", "synthetic", {"teacher": {"kind": "single"}}),
                        "cpu")
    assert teacher_folder(Path("r"), "synthetic", single) != teacher_folder(Path("r"),
                                                                           "synthetic", cfg)


def test_a_loaded_detector_teaches_and_its_file_is_never_written(tmp_path, capsys):
    torch.manual_seed(0)
    detector = timm.create_model("resnet18", num_classes=1)  # a one-logit detector
    path = tmp_path / "detector.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in detector.state_dict().items()}},
               path)
    before = _sha(path)
    base = _base(tmp_path, **SINGLE, **{"teacher.checkpoint": str(path),
                                        "teacher.key_prefix": "backbone."})
    summary = api.run(methods=["kd", "pkt"], students=["mobilenetv3_small_050"], **base)
    assert summary.trained == 2
    err = capsys.readouterr().err
    assert "11.18 M of the teacher's 11.18 M parameters matched (100.0%), 0.00 M missing" in err
    assert _sha(path) == before  # never written
    teacher = json.loads((summary.teacher / "metrics.json").read_text())
    assert teacher["source"] == "checkpoint" and teacher["weights_sha256"] == before
    assert teacher["kind"] == "single" and teacher["best_epoch"] == 0
    assert teacher["load_counts"]["missing"] == 0 and "test" in teacher
    assert not (summary.teacher / "best.pt").exists() and not (summary.teacher / "last.pt").exists()
    for run in summary.runs:
        assert json.loads((run / "metrics.json").read_text())["teacher_sha256"] == before
    report = api.plan_report(summary)
    assert report.rows[0][0] == "teacher (single resnet18)"
    assert [r[0] for r in report.rows[1:]] == ["mobilenetv3_small_050 kd",
                                               "mobilenetv3_small_050 pkt"]
    # a second run tests nothing again: the recorded sha256 matches the file
    api.run(methods=["rkd"], students=["mobilenetv3_small_050"], **base)
    assert "tested before" in capsys.readouterr().err


def test_a_checkpoint_of_another_architecture_is_one_line_and_trains_nothing(tmp_path, capsys):
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("efficientnet_b0", num_classes=2).state_dict(), path)
    base = _base(tmp_path, **SINGLE, **{"teacher.checkpoint": str(path)})
    code = _cli(["run", "--methods", "kd", "--students", "mobilenetv3_small_050"], base)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("kdbench: error: teacher.checkpoint")
    assert "at least 90% must match" in err[-1]
    assert not (tmp_path / "r" / "runs").exists()


def test_a_missing_checkpoint_is_one_line_before_any_work(tmp_path, capsys):
    base = _base(tmp_path, **SINGLE, **{"teacher.checkpoint": str(tmp_path / "gone.pth")})
    code = _cli(["run", "--methods", "kd"], base)
    assert code == 2
    assert "teacher.checkpoint: file" in capsys.readouterr().err


def _cli(argv: list[str], base: dict) -> int:
    from kdbench.cli import main

    sets = [f"{k}={v}" for k, v in base["settings"].items()]
    return main([*argv, "--dataset", "ff_c40", "--data-root", str(base["data_root"]),
                 "--preset", "quick", "--threads", "1", "--results", str(base["results"]),
                 *[x for s in sets for x in ("--set", s)]])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("kdbench: error:") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_bad_backbone_inputs_are_one_line_exit_2_and_train_nothing(tmp_path, capsys,
                                                                   monkeypatch):
    base = _base(tmp_path)
    assert _cli(["run", "--methods", "kd", "--students", "mobilenetv3_smal_050"], base) == 2
    assert "unknown model 'mobilenetv3_smal_050' (closest: mobilenetv3_small_050" in _one_line(
        capsys)
    assert _cli(["run", "--methods", "at", "--students", "efficientvit_m0"], base) == 2
    assert "at reads 4 stage maps, but --students efficientvit_m0 gives 3" in _one_line(capsys)
    assert _cli(["run", "--methods", "kd", "--students", "vit_tiny_patch16_224"], base) == 2
    assert "vit_tiny_patch16_224 does not run at 32 px" in _one_line(capsys)
    assert _cli(["run", "--methods", "kd", "--set", "teacher.backbone=legacy_xception"],
                base) == 2
    assert "runs its stages inside timm's feature hooks" in _one_line(capsys)
    single = _base(tmp_path, **SINGLE)
    assert _cli(["run", "--methods", "kd", "--modes", "both"], single) == 2
    assert "teacher.kind=single has none" in _one_line(capsys)
    assert _cli(["run", "--methods", "kd", "--modes", "rgb,both"], single) == 2  # explicit
    assert "teacher.kind=single has none" in _one_line(capsys)
    from kdbench.models import timm_backbones

    monkeypatch.setattr(timm_backbones, "timm_names", lambda: ("plain_net",))
    monkeypatch.setattr(timm_backbones.timm, "create_model", _no_features)
    assert _cli(["run", "--methods", "kd", "--students", "plain_net"], base) == 2
    assert "does not give its stage maps through features_only" in _one_line(capsys)
    assert not (tmp_path / "r" / "runs").exists()


def _no_features(name, **kwargs):
    raise TypeError("PlainNet.__init__() got an unexpected keyword argument 'features_only'")
