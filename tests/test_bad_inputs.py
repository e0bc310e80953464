"""Every wrong input gives exit status 2, one line on stderr naming the problem and the fix, no
traceback, and leaves every finished run as it was (issue 11, item 4)."""

from __future__ import annotations

import argparse
import ast
import errno
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.cli import main
from kdbench.config import parse_set, resolve_config
from tests.conftest import write_prepared

FINISHED = "runs/ff_c40/resnet18_thin/vanilla/none/seed0"
QUICK = ["--preset", "quick", "--set", "data.size=16", "--no-progress"]


@dataclass
class Case:
    """``kdbench ARGV`` (``{data}``, ``{results}``, ``{tmp}`` filled in) after ``setup``; the
    error line must contain ``message``. ``before_work``: nothing else may be printed."""

    name: str
    argv: list[str]
    message: str
    setup: Callable[[Path], None] | None = None
    before_work: bool = True
    patches: dict[str, object] = field(default_factory=dict)


def _finished_store(results: Path) -> None:
    """A finished vanilla run with the settings of the quick preset at 16 px."""
    run = results / FINISHED
    run.mkdir(parents=True)
    config = resolve_config("quick", "ff_c40", parse_set(["data.size=16"]))
    metrics = {"status": "finished", "role": "student", "dataset": "ff_c40", "preset": "quick",
               "student": "resnet18_thin", "method": "vanilla", "variant": "", "mode": "none",
               "seed": 0, "hparams": {}, "config": config, "best_epoch": 1,
               "test": {"acc": 0.5, "auc": 0.5, "eer": 0.5, "video_auc": 0.5},
               "val": {"acc": 0.5, "auc": 0.5}, "wall_time_s": 1.0}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "history.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 0.7}) + "\n")
    (run / "best.pt").write_bytes(b"weights")


def _registry(text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "notd.py").write_text("class Thing:\n    pass\n")
        (tmp / "reg.yaml").write_text(text)
    return setup


def _data(change: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda tmp: change(tmp / "prep")


def _truncate_frames(prep: Path) -> None:
    path = prep / "frames.npy"
    path.write_bytes(path.read_bytes()[:-100])


def _edit_index(edit: Callable) -> Callable[[Path], None]:
    def change(prep: Path) -> None:
        import pandas as pd

        index = pd.read_csv(prep / "index.csv")
        edit(index).to_csv(prep / "index.csv", index=False)
    return change


def _past_the_end(index):
    index.loc[0, "row"] = 10_000
    return index


def _no_val(index):
    index.loc[index["split"] == "val", "split"] = "train"
    return index


def _truncated_metrics(tmp: Path) -> None:
    path = tmp / "R2" / FINISHED / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"status": "finished", "test": {"ac')


def _unfinished_metrics(run: Path) -> None:
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"status": "running"}')


def _other_settings(tmp: Path, lr: str = "train.lr=0.5") -> None:
    """An unfinished run folder (its last.pt is no checkpoint) whose run.json names ``lr``."""
    run = tmp / "R2" / FINISHED
    run.mkdir(parents=True)
    config = resolve_config("quick", "ff_c40", parse_set(["data.size=16", lr]))
    from kdbench.config import for_device
    from kdbench.train.runner import comparable_config

    config = for_device(config, "cpu")

    (run / "run.json").write_text(json.dumps({"config": comparable_config(config),
                                              "hparams": {}}))
    (run / "last.pt").write_bytes(b"progress")


def _truncated_checkpoint(tmp: Path) -> None:
    """An unfinished run with this command's settings whose last.pt was cut short."""
    _other_settings(tmp, "train.lr=0.001")
    last = tmp / "R2" / FINISHED / "last.pt"
    torch.save({"epoch": 1, "learner": {"w": torch.zeros(1000)}}, last)
    last.write_bytes(last.read_bytes()[:2000])


def _pickled_weights(tmp: Path) -> None:
    torch.save({"model": argparse.Namespace(a=1)}, tmp / "evil.pt")


def _failing(code: int) -> Callable[..., None]:
    """A write that fails as the operating system would (``code``: ENOSPC, EACCES)."""
    def write(*args, **kwargs):
        where = args[0] if args else kwargs.get("dir")
        raise OSError(code, os.strerror(code), str(where))
    return write


RUN = ["run", "--dataset", "ff_c40", "--data-root", "{data}", "--results", "{results}"]
VANILLA = [*RUN, "--methods", "vanilla", *QUICK]
BAD_REGISTRY = [*RUN, "--registry", "{tmp}/reg.yaml", "--methods", "m", *QUICK]

CASES = [
    # names
    Case("unknown method", [*RUN, "--methods", "nope", *QUICK], "unknown method 'nope'"),
    Case("unknown dataset", ["run", "--dataset", "imagenet", "--results", "{results}"],
         "unknown dataset 'imagenet'"),
    Case("unknown preset", [*RUN, "--preset", "huge"], "invalid choice: 'huge'"),
    Case("unknown student", [*VANILLA, "--students", "mobilenet_v9"],
         "--students: unknown model 'mobilenet_v9' (closest: mobilenetv3_rw"),
    Case("unknown mode", [*VANILLA, "--modes", "fancy"], "unknown mode 'fancy'"),
    Case("unknown table kind", ["table", "--kind", "rotaton", "--results", "{results}"],
         "unknown table kind 'rotaton' (did you mean 'rotation'?)"),
    Case("unknown plot kind", ["plot", "gradsm", "--results", "{results}"],
         "unknown figure 'gradsm' (did you mean 'gradsim'?)"),
    Case("misspelt method", [*RUN, "--methods", "tokdd", *QUICK],
         "unknown method 'tokdd' (did you mean 'tokd'?)"),
    Case("misspelt setting", [*VANILLA, "--set", "train.epoch=3"],
         "unknown setting train.epoch (did you mean 'train.epochs'?)"),
    Case("misspelt hyper-parameter", [*RUN, "--methods", "tokd", *QUICK, "--set",
                                      "tokd.alpah1=3"],
         "unknown hyper-parameter tokd.alpah1 (did you mean 'tokd.alpha1'?)"),
    Case("two misspelt methods", [*RUN, "--methods", "atx,pkk", *QUICK],
         "unknown methods 'atx' (did you mean 'at'?), 'pkk' (did you mean 'pkt'?); known:"),
    Case("unknown option", ["run", "--epochs", "3"], "unrecognized arguments: --epochs"),
    Case("cost at size 0", ["table", "--kind", "cost", "--size", "0"],
         "argument --size: must be >= 8, got 0"),
    Case("prepare with a word for --frames", ["prepare", "ff++", "--root", "{tmp}", "--out",
                                              "{tmp}/o", "--frames", "many"],
         "argument --frames: expected an integer, got 'many'"),
    Case("prepare a missing folder", ["prepare", "folder", "--root", "{tmp}/nowhere", "--out",
                                      "{tmp}/o"], "image folder"),
    # --set / --seeds / --sweep
    Case("--set unknown key", [*VANILLA, "--set", "train.lrr=1"], "unknown setting train.lrr"),
    Case("--set key without its section", [*VANILLA, "--set", "lrr=1"],
         "unknown setting target 'lrr' (did you mean 'train.lr'?)"),
    Case("--set unknown section", [*VANILLA, "--set", "foo.x=1"], "unknown setting target 'foo'"),
    Case("--set malformed", [*VANILLA, "--set", "train.lr"], "--set expects key=value"),
    Case("--set empty key", [*VANILLA, "--set", "train.=1"], "--set expects key=value"),
    Case("--set wrong type", [*VANILLA, "--set", "train.lr=abc"],
         "train.lr='abc' does not fit the type"),
    Case("--set out of range", [*VANILLA, "--set", "train.epochs=-1"],
         "train.epochs=-1 is out of range; it must be >= 1"),
    Case("--set not a choice", [*VANILLA, "--set", "train.select=loss"],
         "train.select='loss' is not allowed"),
    Case("--set a list", [*VANILLA, "--set", "train.lr=[1, 2]"], "takes one value"),
    Case("method hyper-parameter out of range", [*RUN, "--methods", "tokd", *QUICK, "--set",
                                                 "tokd.d=0"], "tokd.d=0 is out of range"),
    Case("method hyper-parameter wrong type", [*RUN, "--methods", "tokd", *QUICK, "--set",
                                               "tokd.d=abc"], "tokd.d='abc' does not fit"),
    Case("method hyper-parameter unknown", [*RUN, "--methods", "at", *QUICK, "--set",
                                            "at.gamma=1"], "unknown hyper-parameter at.gamma"),
    Case("method hyper-parameter not a choice", [*RUN, "--methods", "tokd", *QUICK, "--set",
                                                 "tokd.kd_reduction=max"], "is not allowed"),
    Case("--sweep out of range", [*RUN, "--methods", "tokd", *QUICK, "--sweep", "d=128,-1"],
         "tokd.d=-1 is out of range"),
    Case("--sweep unknown key", [*RUN, "--methods", "at", *QUICK, "--sweep", "zz=1,2"],
         "no selected method"),
    Case("--sweep malformed", [*RUN, "--methods", "at", *QUICK, "--sweep", "beta="],
         "--sweep expects key=v1,v2"),
    Case("--seeds not integers", [*VANILLA, "--seeds", "x"], "seeds must be integers"),
    Case("--device cuda without one", [*VANILLA, "--device", "cuda"], "no CUDA device"),
    # registries
    Case("registry not YAML", BAD_REGISTRY, "malformed YAML", _registry("m: [\n")),
    Case("registry not a mapping", BAD_REGISTRY, "expected a mapping", _registry("- a\n")),
    Case("registry file missing", [*RUN, "--registry", "{tmp}/none.yaml", *QUICK],
         "registry file", None),
    Case("entry module missing", BAD_REGISTRY, "module 'no_such_mod' of method 'm' not found",
         _registry("m: {entry: no_such_mod:X, modes: [rgb]}\n")),
    Case("entry of the old layout", BAD_REGISTRY, "moved to kdbench.methods",
         _registry("m: {entry: methods.at:AT, modes: [rgb]}\n"),
         patches={"sys.path": "installed"}),  # no top-level `methods` outside the checkout
    Case("entry file missing", BAD_REGISTRY, "not found",
         _registry("m: {entry: gone.py:X, modes: [rgb]}\n")),
    Case("entry class missing", BAD_REGISTRY, "has no class 'Nope'",
         _registry("m: {entry: notd.py:Nope, modes: [rgb]}\n")),
    Case("entry not a Distiller", BAD_REGISTRY, "not a Distiller subclass",
         _registry("m: {entry: notd.py:Thing, modes: [rgb]}\n")),
    Case("entry modes unknown", BAD_REGISTRY, "has modes",
         _registry("m: {entry: notd.py:Thing, modes: [rgb, fancy]}\n")),
    Case("entry limits malformed", BAD_REGISTRY, "limits of 'w'",
         _registry("m: {entry: notd.py:Thing, defaults: {w: 1.0}, limits: {w: {above: 0}}}\n")),
    Case("entry default outside its limits", BAD_REGISTRY, "outside them",
         _registry("m: {entry: notd.py:Thing, defaults: {w: 1.0}, limits: {w: {min: 2}}}\n")),
    # prepared datasets
    Case("frames.npy missing", VANILLA, "has no frames.npy",
         _data(lambda p: (p / "frames.npy").unlink())),
    Case("frames.npy truncated", VANILLA, "frames.npy is truncated", _data(_truncate_frames)),
    Case("index.csv without a column", VANILLA, "lacks the column(s) label",
         _data(_edit_index(lambda i: i.drop(columns=["label"])))),
    Case("index.csv past the frames", VANILLA, "points at frame row 10000",
         _data(_edit_index(_past_the_end))),
    Case("empty split", VANILLA, "the val split is empty", _data(_edit_index(_no_val))),
    Case("prepared.json damaged", VANILLA, "prepared.json is not valid JSON",
         _data(lambda p: (p / "prepared.json").write_text("{"))),
    Case("synthetic --data-root missing", ["run", "--methods", "vanilla", "--data-root",
                                           "{tmp}/nowhere", "--results", "{results}"],
         "does not exist; create it"),
    Case("real --data-root missing", ["run", "--methods", "vanilla", "--dataset", "ff_c40",
                                      "--data-root", "{tmp}/nowhere"], "not found"),
    # result stores
    Case("truncated metrics.json", [*VANILLA, "--results", "{tmp}/R2"],
         "metrics.json is not valid JSON", _truncated_metrics, before_work=False),
    Case("folder of another run", [*VANILLA, "--results", "{tmp}/R2"],
         "holds an unfinished run with other settings", _other_settings, before_work=False),
    Case("read-only results folder", [*VANILLA, "--results", "{tmp}/ro"], "not writable",
         lambda tmp: (tmp / "ro").mkdir(mode=0o555),
         # root writes into a 0555 folder anyway: for root the write fails as for a user
         patches={"kdbench.files.tempfile.mkstemp": _failing(errno.EACCES)}
         if os.geteuid() == 0 else {}),
    Case("results folder is a file", [*VANILLA, "--results", "{tmp}/afile"],
         "afile is a file, not a folder; give --results a folder (or a path that does not exist "
         "yet)", lambda tmp: (tmp / "afile").write_text("x")),
    Case("results folder under a file", [*VANILLA, "--results", "{tmp}/afile/sub"],
         "afile/sub lies under", lambda tmp: (tmp / "afile").write_text("x")),
    Case("bench --json under a file", ["bench", "--json", "{tmp}/afile/b.json"],
         "afile is a file, not a folder; give --json a file name in a folder",
         lambda tmp: (tmp / "afile").write_text("x")),
    Case("disk full before work", VANILLA, "No space left on device",
         patches={"kdbench.files.tempfile.mkstemp": _failing(errno.ENOSPC)}),
    Case("disk full while training", [*VANILLA, "--seeds", "1"], "No space left on device",
         before_work=False, patches={"kdbench.files.os.fsync": _failing(errno.ENOSPC)}),
    Case("truncated last.pt", [*VANILLA, "--results", "{tmp}/R2"],
         "last.pt is damaged or truncated", _truncated_checkpoint, before_work=False),
    Case("--set a method without a key", [*RUN, "--methods", "tokd", *QUICK, "--set", "tokd=5"],
         "needs a hyper-parameter: tokd.<name>=value"),
    Case("--set without a value", [*VANILLA, "--set", "train.epochs="], "needs a value"),
    Case("--set null", [*VANILLA, "--set", "data.size=null"], "needs a value"),
    Case("--set a number as a path", [*VANILLA, "--set", "student.pretrained=123"],
         "takes a file path"),
    Case("--device not a device", [*VANILLA, "--device", "gpu"], "'gpu' is not a device"),
    Case("--device cuda:7 without one", [*VANILLA, "--device", "cuda:7"], "cuda:7"),
    Case("registry not UTF-8", BAD_REGISTRY, "not a UTF-8 text file",
         lambda tmp: (tmp / "reg.yaml").write_bytes(b"m: {entry: \xff\xfe:X}\n")),
    Case("index.csv with a bad label", VANILLA, "has the label",
         _data(_edit_index(lambda i: i.assign(label=i["label"].where(i.index > 0, 7))))),
    Case("index.csv with a fractional row", VANILLA, "points at frame row 0.5",
         _data(_edit_index(lambda i: i.assign(row=i["row"].astype(float).where(i.index > 0,
                                                                               0.5))))),
    Case("index.csv not a CSV", VANILLA, "index.csv is not a readable CSV",
         _data(lambda p: (p / "index.csv").write_bytes(b'"row\n\x00\xff'))),
    Case("reproduce with a misspelt cross dataset", ["reproduce", "--dataset", "ff_c40",
                                                     "--data-root", "{data}", "--cross-dataset",
                                                     "celebfd", "--results", "{results}",
                                                     "--preset", "quick"],
         "unknown dataset 'celebfd'"),
    Case("run with a cross dataset and no folder", [*VANILLA, "--cross-dataset", "celebdf"],
         "dataset celebdf needs --cross-data-root"),
    Case("run with a cross folder and no cross dataset", [*VANILLA, "--cross-data-root",
                                                          "{tmp}"],
         "--cross-data-root goes with --cross-dataset"),
    Case("weights need unpickling", [*VANILLA, "--seeds", "1", "--set",
                                     "student.pretrained={tmp}/evil.pt"],
         "needs unpickling", _pickled_weights, before_work=False),
    Case("weights file missing", [*VANILLA, "--set", "student.pretrained={tmp}/gone.pt"],
         "weights file"),
    # reports
    Case("table of an empty store", ["table", "--results", "{tmp}/empty"], "no runs under"),
    Case("comparison of an empty store", ["table", "--kind", "comparison", "--results",
                                          "{tmp}/empty"], "no runs under"),
    Case("plot of an empty store", ["plot", "curves", "--results", "{tmp}/empty"],
         "no result store"),
    Case("plot of a store without traces", ["plot", "gradsim", "--results", "{results}"],
         "no gradsim"),
    Case("plot to a text file", ["plot", "curves", "--results", "{results}", "--out",
                                 "{tmp}/x.txt"], "x.txt: a figure is written as .png"),
    Case("eval of a missing run", ["eval", "{tmp}/nowhere", "--dataset", "ff_c40",
                                   "--data-root", "{data}"], "no run folder"),
    Case("eval of a damaged run", ["eval", "{tmp}/R2/" + FINISHED, "--dataset", "ff_c40",
                                   "--data-root", "{data}"], "not valid JSON",
         _truncated_metrics),
    Case("eval of an unfinished run", ["eval", "{tmp}/R2/" + FINISHED, "--dataset", "ff_c40",
                                       "--data-root", "{data}"], "not a finished run",
         lambda tmp: _unfinished_metrics(tmp / "R2" / FINISHED)),
    # predict / export / quantize
    Case("predict a text file", ["predict", "{tmp}/notes.txt", "--run", "{results}/" + FINISHED],
         "notes.txt is not a video or image file by its extension; give files ending in .mp4",
         lambda tmp: (tmp / "notes.txt").write_text("my notes")),
    Case("predict with a missing run", ["predict", "{tmp}/v", "--run", "{tmp}/nowhere"],
         "run folder", lambda tmp: (tmp / "v").mkdir() or (tmp / "v/a.mp4").write_bytes(b"x")),
    Case("predict with a missing checkpoint", ["predict", "{tmp}/v", "--checkpoint",
                                               "{tmp}/gone.pt", "--student", "resnet18_thin"],
         "checkpoint", lambda tmp: (tmp / "v").mkdir() or (tmp / "v/a.mp4").write_bytes(b"x")),
    Case("export a missing run", ["export", "{tmp}/nowhere"], "run folder"),
    Case("quantize a missing run", ["quantize", "{tmp}/nowhere", "--int8"], "run folder"),
    # bench / threads
    Case("bench of an unknown student", ["bench", "--student", "resnet"],
         "--student: unknown model 'resnet' (closest: resnet"),
    Case("bench with no steps", ["bench", "--steps", "0"], "argument --steps: must be >= 1"),
    Case("bench of a misspelt method", ["bench", "--methods", "tokdd"],
         "unknown method 'tokdd' (did you mean 'tokd'?)"),
    Case("run with no threads", [*VANILLA, "--threads", "0"],
         "argument --threads: must be >= 1, got 0"),
    Case("amp that is no switch", [*VANILLA, "--set", "train.amp=fast"],
         "train.amp='fast' is not a switch; give train.amp=auto, true or false"),
]


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Content and modification time of each file of a run folder (not its lock file)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "run.lock"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_keeps_finished_runs(case, tmp_path, capsys,
                                                               monkeypatch):
    if "cuda" in case.name and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    results, data = tmp_path / "R", write_prepared(tmp_path / "prep", dataset="ff_c40")
    _finished_store(results)
    if case.setup is not None:
        case.setup(tmp_path)
    before = {p: _snapshot(p) for p in (results / FINISHED, tmp_path / "R2" / FINISHED)}
    for target, replacement in case.patches.items():
        if replacement == "installed":  # sys.path as an installed kdbench sees it
            root = Path(__file__).resolve().parent.parent
            replacement = [p for p in sys.path if Path(p or ".").resolve() != root]
        monkeypatch.setattr(target, replacement)
    argv = [a.format(data=data, results=results, tmp=tmp_path) for a in case.argv]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("kdbench: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    if case.before_work:
        assert len(lines) == 1, err
    assert case.message in errors[0]
    # the finished run, and a run folder the command refused, are untouched; no temp file left
    assert {p: _snapshot(p) for p in before} == before
    assert not [p for p in tmp_path.rglob(".*.tmp")]


def test_a_damaged_metrics_file_is_reported_by_table_and_skipped(tmp_path, capsys):
    results = tmp_path / "R"
    _finished_store(results)
    other = results / FINISHED.replace("seed0", "seed1")
    other.mkdir(parents=True)
    (other / "metrics.json").write_text('{"status": "fini')
    capsys.readouterr()
    assert main(["table", "--kind", "comparison", "--results", str(results)]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and str(other / "metrics.json") in captured.err
    assert "| ff_c40 | resnet18_thin | 50.00 (1) |" in captured.out  # the good run counts
    assert "damaged metrics.json" in captured.out  # and the damaged one is listed


def test_result_files_honour_the_umask(tmp_path):
    from kdbench.files import atomic_write_json

    for mask, mode in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
        old = os.umask(mask)
        try:
            atomic_write_json(tmp_path / f"m{mask:o}.json", {"a": 1})
        finally:
            os.umask(old)
        assert (tmp_path / f"m{mask:o}.json").stat().st_mode & 0o777 == mode


def test_every_torch_load_is_weights_only():
    root = Path(__file__).resolve().parent.parent
    loads = []
    for path in [p for folder in ("kdbench", "methods") for p in (root / folder).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                safe = [k for k in node.keywords if k.arg == "weights_only"
                        and isinstance(k.value, ast.Constant) and k.value.value is True]
                loads.append((f"{path.name}:{node.lineno}", bool(safe)))
    assert loads and all(safe for _, safe in loads), loads


def test_a_checkpoint_with_code_in_it_is_refused(tmp_path):
    from kdbench.errors import KdbenchError
    from kdbench.train.trainer import load_checkpoint

    torch.save({"epoch": 1, "x": argparse.Namespace(a=1)}, tmp_path / "last.pt")
    with pytest.raises(KdbenchError, match="not loaded") as info:
        load_checkpoint(tmp_path / "last.pt")
    assert "\n" not in str(info.value)
    torch.save({"epoch": 1, "w": torch.ones(2), "h": [{"acc": 0.5}], "r": (3, (1, 2), None),
                "n": np.float64(1.0).item()}, tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt")["h"] == [{"acc": 0.5}]
