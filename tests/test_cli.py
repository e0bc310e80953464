import argparse
import json

import pytest

from kdbench import __version__
from kdbench.cli import main
from kdbench.config import resolve_config
from kdbench.errors import KdbenchError
from kdbench.files import read_jsonl
from kdbench.report.listing import collect_runs
from tests.conftest import write_prepared


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["run", "--dataset", "ff_c40", "--methods", "vanilla"], "kdbench prepare ff++"),
        (["run", "--methods", "nope"], "unknown method 'nope'"),
        (["run", "--methods", "vanilla", "--set", "train.lrr=1"], "unknown setting train.lrr"),
        (["run", "--methods", "vanilla", "--set", "foo.x=1"], "unknown setting target 'foo'"),
        (["run", "--methods", "vanilla", "--students", "vgg"], "unknown model 'vgg' (closest: vgg"),
        (["run", "--methods", "vanilla", "--seeds", "a"], "seeds must be integers"),
    ],
)
def test_bad_input_gives_one_line_error_and_exit_2(capsys, argv, message):
    code, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdbench: error:")
    assert message in lines[0]


def test_missing_data_folder_names_the_fix(capsys, tmp_path):
    code, err = _run(capsys, "run", "--methods", "vanilla", "--dataset", "ff_c40",
                     "--data-root", str(tmp_path / "nowhere"))
    assert code == 2 and "not found" in err and "--dataset synthetic" in err
    raw = tmp_path / "ff"
    (raw / "original_sequences").mkdir(parents=True)
    code, err = _run(capsys, "run", "--methods", "vanilla", "--dataset", "ff_c40",
                     "--data-root", str(raw))
    assert code == 2 and "raw download" in err and "kdbench prepare ff++" in err


def test_malformed_user_registry(capsys, tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("x: [\n")
    code, err = _run(capsys, "methods", "--registry", str(bad))
    assert code == 2 and "malformed YAML" in err


@pytest.mark.slow
def test_run_on_a_prepared_folder_writes_the_result_store(capsys, tmp_path):
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    results = tmp_path / "R"
    argv = ["run", "--methods", "vanilla,fitnet", "--modes", "rgb", "--dataset", "ff_c40",
            "--data-root", str(data), "--preset", "quick", "--set", "data.size=16",
            "--results", str(results), "--no-progress"]
    assert main(argv) == 0
    run = results / "runs/ff_c40/resnet18_thin/vanilla/none/seed0"
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "finished" and m["method"] == "vanilla" and m["preset"] == "quick"
    for key in ("acc", "auc", "eer", "video_auc"):
        assert 0.0 <= m["test"][key] <= 1.0
    assert m["params"] > 1e6 and m["gflops"] > 0 and m["wall_time_s"] > 0
    assert {"torch", "torch_threads", "cpu_model", "kdbench"} <= set(m["versions"])
    epochs = resolve_config("quick", "ff_c40", {})["train"]["epochs"]
    assert (run / "history.jsonl").read_text().count("\n") == epochs
    teachers = list((results / "teachers/ff_c40").glob("*/metrics.json"))
    assert len(teachers) == 1 and json.loads(teachers[0].read_text())["role"] == "teacher"
    # a second run skips finished work without loading the teacher; the table lists the runs
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "skip resnet18_thin/vanilla/none/seed0" in err and "teacher" not in err
    assert main(["table", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "vanilla" in out and "teacher" in out and "finished" in out


LOGIT_KD = '''
import torch.nn.functional as F

from kdbench.methods import Distiller


class LogitKD(Distiller):
    def teacher_needs(self):
        return set()

    def forward_train(self, batch):
        out = self.student(batch["image"])
        t = self.teacher_forward(batch).logits
        kd = F.kl_div(F.log_softmax(out.logits / 4, 1), F.softmax(t / 4, 1),
                      reduction="batchmean") * 16
        return out.logits, {"loss_ce": self.ce(out, batch), "loss_kd": self.hparams["w"] * kd}
'''


@pytest.mark.slow
def test_user_registry_method_runs_without_touching_the_repo(capsys, tmp_path):
    ext = tmp_path / "elsewhere"
    ext.mkdir()
    (ext / "logit_kd.py").write_text(LOGIT_KD)
    (ext / "my.yaml").write_text(
        "logit_kd:\n  entry: logit_kd.py:LogitKD\n  modes: [rgb]\n  defaults: {w: 0.5}\n"
    )
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    results = tmp_path / "R"
    argv = ["run", "--methods", "logit_kd", "--dataset", "ff_c40", "--data-root", str(data),
            "--preset", "quick", "--set", "data.size=16", "--set", "logit_kd.w=2.0",
            "--registry", str(ext / "my.yaml"), "--results", str(results), "--no-progress"]
    assert main(argv) == 0
    m = json.loads((results / "runs/ff_c40/resnet18_thin/logit_kd@w=2/rgb/seed0/metrics.json")
                   .read_text())
    assert m["hparams"] == {"w": 2.0} and m["entry"] == "logit_kd.py:LogitKD"
    hist = (results / "runs/ff_c40/resnet18_thin/logit_kd@w=2/rgb/seed0/history.jsonl").read_text()
    assert "train_loss_kd" in hist


def test_unwritable_results_folder_is_a_one_line_error(capsys, tmp_path):
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    blocker = tmp_path / "R"
    blocker.write_text("a file where the results folder should be")
    code, err = _run(capsys, "run", "--methods", "vanilla", "--dataset", "ff_c40",
                     "--data-root", str(data), "--preset", "quick", "--set", "data.size=16",
                     "--results", str(blocker), "--no-progress")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("kdbench: error:")
    assert f"{blocker} is a file, not a folder; give --results a folder" in err


@pytest.mark.slow
def test_teacher_without_checkpoint_is_trained_again(capsys, tmp_path):
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    results = tmp_path / "R"
    argv = ["run", "--methods", "fitnet", "--modes", "rgb", "--dataset", "ff_c40",
            "--data-root", str(data), "--preset", "quick", "--set", "data.size=16", "--set",
            "train.epochs=1", "--results", str(results), "--no-progress"]
    assert main(argv) == 0
    (teacher,) = (results / "teachers/ff_c40").iterdir()
    first = json.loads((teacher / "metrics.json").read_text())
    sha = first["weights_sha256"]
    run = results / "runs/ff_c40/resnet18_thin/fitnet/rgb/seed0/metrics.json"
    assert json.loads(run.read_text())["teacher_sha256"] == sha  # the weights it distilled from
    (teacher / "best.pt").unlink()  # as in a committed result store (no checkpoints)
    capsys.readouterr()
    assert main([*argv, "--seeds", "1"]) == 0  # a new distillation run needs the teacher
    assert "training it again" in capsys.readouterr().err
    again = json.loads((teacher / "metrics.json").read_text())
    assert again["test"] == first["test"]
    # deterministic on the CPU: the same weights, so the first run is not marked
    assert again["weights_sha256"] == again["recorded_sha256"] == sha
    assert not collect_runs(results)["other_teacher"].any()


@pytest.mark.slow
def test_tokd_run_writes_gradient_traces_and_the_plot(capsys, tmp_path):
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    results = tmp_path / "R"
    argv = ["run", "--methods", "tokd", "--dataset", "ff_c40", "--data-root", str(data),
            "--preset", "quick", "--set", "data.size=16", "--set", "tokd.gradsim_every=1",
            "--results", str(results), "--no-progress"]
    assert main(argv) == 0
    root = results / "runs/ff_c40/resnet18_thin"
    # the logging interval does not name the folder; rotation=false (the variant) does
    on_dir, off_dir = "tokd", "tokd@rotation=false"
    for sub in (f"{on_dir}/rgb", f"{on_dir}/both", f"{off_dir}/both"):
        m = json.loads((root / sub / "seed0/metrics.json").read_text())
        assert m["status"] == "finished"
    assert not (root / on_dir / "rgb/seed0/gradsim.jsonl").exists()
    on = [json.loads(x) for x in (root / on_dir / "both/seed0/gradsim.jsonl").read_text()
          .splitlines()]
    off = [json.loads(x) for x in (root / off_dir / "both/seed0/gradsim.jsonl").read_text()
           .splitlines()]
    epochs = resolve_config("quick", "ff_c40", {})["train"]["epochs"]
    steps = epochs * (6 * 2 // 64 or 1)  # 12 training frames < one batch of 64
    assert len(on) == len(off) == steps  # one record per step (gradsim_every=1)
    assert all(r["rotation"] for r in on) and not any(r["rotation"] for r in off)
    m = json.loads((root / on_dir / "both/seed0/metrics.json").read_text())
    assert m["run_info"]["d_effective"] == 256  # S_B(x) is 256 x 1 x 1 at 16 px
    assert m["variant"] == "" and m["hparams"]["gradsim_every"] == 1
    assert m["finished_at"].endswith("+00:00")  # UTC, ISO 8601
    hist = (root / on_dir / "both/seed0/history.jsonl").read_text()
    assert "rot_cos" in hist and "train_loss_kd_freq" in hist
    capsys.readouterr()
    png = tmp_path / "g.png"
    assert main(["plot", "gradsim", "--results", str(results), "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert f"{on_dir}/both" in out and f"{off_dir}/both" in out
    # a run recorded before a hyper-parameter existed counts as having had its default
    path = root / on_dir / "both/seed0/metrics.json"
    m = json.loads(path.read_text())
    del m["hparams"]["kd_reduction"]
    path.write_text(json.dumps(m))
    capsys.readouterr()
    assert main(argv) == 0
    assert "skip resnet18_thin/tokd/both/seed0: finished" in capsys.readouterr().err
    # the same folder with other settings is refused, not silently reused
    code, err = _run(capsys, *argv[:-1], "--set", "train.lr=0.5", "--no-progress")
    assert code == 2 and "holds a finished run with other settings" in err


def test_plot_without_traces_names_the_fix(capsys, tmp_path):
    code, err = _run(capsys, "plot", "gradsim", "--results", str(tmp_path))
    assert code == 2 and "kdbench run --methods tokd" in err


@pytest.fixture
def two_datasets(tmp_path):
    """A tiny prepared ff_c40 to train on, a celebdf to test on, and a results folder."""
    return (write_prepared(tmp_path / "ff", dataset="ff_c40"),
            write_prepared(tmp_path / "cd", dataset="celebdf", seed=5), tmp_path / "R")


@pytest.mark.slow
def test_eval_on_another_dataset_fills_the_cross_table(capsys, two_datasets):
    train, other, results = two_datasets
    assert main(["run", "--methods", "vanilla", "--dataset", "ff_c40", "--data-root", str(train),
                 "--preset", "quick", "--set", "data.size=16", "--seeds", "0,1",
                 "--results", str(results), "--no-progress"]) == 0
    assert main(["eval", str(results / "runs"), "--dataset", "celebdf", "--data-root",
                 str(other), "--no-progress"]) == 0
    for seed in (0, 1):
        rec = json.loads((results / f"runs/ff_c40/resnet18_thin/vanilla/none/seed{seed}/cross/"
                                    "celebdf.json").read_text())
        assert rec["train_dataset"] == "ff_c40" and rec["test_dataset"] == "celebdf"
        assert rec["test"]["n_frames"] == 8 and 0 <= rec["test"]["auc"] <= 1
    capsys.readouterr()
    assert main(["table", "--kind", "cross", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "celebdf AUC" in out and "| ff_c40 | resnet18_thin | vanilla | none |" in out
    assert "(2) |" in out
    (results / "runs/ff_c40/resnet18_thin/vanilla/none/seed0/best.pt").unlink()
    code, err = _run(capsys, "eval", str(results / "runs/ff_c40/resnet18_thin/vanilla/none/seed0"),
                     "--dataset", "celebdf", "--data-root", str(other))
    assert code == 2 and "has no best.pt" in err


@pytest.mark.slow
def test_reproduce_runs_what_the_tables_need_and_writes_them(capsys, two_datasets):
    data, other, results = two_datasets
    assert main(["reproduce", "--dataset", "ff_c40", "--data-root", str(data), "--preset",
                 "quick", "--set", "data.size=16", "--set", "train.epochs=1", "--seeds", "0",
                 "--cross-dataset", "celebdf", "--cross-data-root", str(other),
                 "--results", str(results), "--no-progress"]) == 0
    root = results / "runs/ff_c40/resnet18_thin"
    for sub in ("tokd@use_rgb=false/both", "tokd@projectors=false/both", "tokd@d=128/both",
                "tokd@alpha1=1,alpha2=1/both", "tokd@rotation=false/both", "sp/both"):
        assert (root / sub / "seed0/metrics.json").is_file(), sub
        assert (root / sub / "seed0/cross/celebdf.json").is_file(), sub
    for kind in ("comparison", "ablation", "rotation", "alpha", "teacher", "cross", "cost"):
        text = (results / "tables" / f"{kind}.md").read_text()
        assert "| " in text and "(1)" in text or kind == "cost", kind
    ablation = (results / "tables/ablation.md").read_text()
    assert ablation.count("(1) |") == 6  # every row has its run
    for fig in ("gradsim", "alpha", "rotation", "curves"):
        assert (results / f"{fig}.png").stat().st_size > 1000, fig
    log = read_jsonl(results / "reproduce.jsonl")  # one record of this invocation
    assert len(log) == 1 and log[0]["command"].startswith("kdbench reproduce --dataset ff_c40")
    n_runs = len(list((results / "runs").rglob("metrics.json")))
    assert (log[0]["trained"], log[0]["finished_before"]) == (n_runs, 0) and n_runs > 10
    assert log[0]["wall_s"] > 0 and log[0]["finished_at"] >= log[0]["started_at"]


@pytest.mark.slow
def test_the_python_api_runs_tables_and_plots_from_a_notebook(tmp_path):
    import kdbench.api as k

    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    results = tmp_path / "R"
    summary = k.run(methods=["vanilla", "at"], dataset="ff_c40", data_root=data, modes=["rgb"],
                    preset="quick", results=results, settings={"data.size": 16, "train.lr": 3e-4},
                    progress=False)
    assert (summary.trained, summary.finished_before, len(summary.runs)) == (2, 0, 2)
    again = k.run(methods="vanilla,at", dataset="ff_c40", data_root=data, modes="rgb",
                  preset="quick", results=results, settings=["data.size=16", "train.lr=3e-4"],
                  progress=False)
    assert (again.trained, again.finished_before) == (0, 2)  # dict and strings: one setting
    df = k.table("comparison", results=results)
    assert list(df.columns) == ["dataset", "student", "vanilla", "at rgb"]
    assert df.iloc[0]["vanilla"].endswith("(1)")
    runs = k.table("runs", results=results)
    assert set(runs["method"]) == {"vanilla", "at", "teacher"}
    path = k.plot("curves", results=results)
    assert path == results / "curves.png" and path.stat().st_size > 1000
    listed = k.methods().set_index("name")  # the description: the docstring's first line
    assert listed.loc["vanilla", "description"].startswith("Vanilla: the student trained")
    assert listed.loc["at", "description"].startswith("AT: attention transfer")
    with pytest.raises(KdbenchError, match="unknown method 'atx'"):
        k.run(methods=["atx"], results=results)


def test_each_preset_names_its_students():
    from kdbench.config import preset_students

    assert preset_students("quick") == ["resnet18_thin"]
    assert preset_students("paper") == ["resnet18_thin", "resnet34_thin", "xception"]


def test_help_text_and_defaults_on_every_option(capsys):
    from kdbench.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.dest in ("help",) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, (name, action.dest)
        command.format_help()  # every command's --help renders (a bare % in a help breaks it)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"kdbench {__version__}"
    assert main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # as wrapped for any terminal width
    assert "(default: synthetic)" in text and "(default: kdbench-results)" in text
