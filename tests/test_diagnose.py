"""`kdbench diagnose`: the gradient cosine of a both-mode distiller's two terms in a few
steps from the plan's teacher, and the sentence it gives for choosing a mode."""

from __future__ import annotations

import math

import pytest
import yaml

from kdbench.diagnose import Diagnosis, diagnose
from kdbench.errors import KdbenchError
from kdbench.registry import load_registry
from tests.conftest import write_prepared

TINY = {"data.size": 16, "train.batch_size": 4, "train.epochs": 1, "teacher.proj_dim": 8}


def _tiny(tmp_path, settings=TINY, **kw):
    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    return diagnose(dataset="ff_c40", data_root=data, preset="quick", results=tmp_path / "R",
                    settings=settings, progress=False, threads=1, **kw)


def _both_method() -> str:
    """A method with a both mode whose terms reach the last stage at 16 px (logits)."""
    return "kd"


def _write_registry(path, entries: dict) -> str:
    path.write_text(yaml.safe_dump(entries))
    return str(path)


def _plain(entry, **reports) -> dict:
    """``entry`` as a registry mapping (its reports replaced by ``reports``)."""
    return {"entry": entry.entry, "modes": list(entry.modes), "defaults": dict(entry.defaults),
            "reports": reports}


def test_a_few_steps_give_one_diagnosis_per_method_and_no_run_folder(tmp_path):
    method = _both_method()
    found = _tiny(tmp_path, methods=method, steps=20, every=5)
    assert [d.method for d in found] == [method]
    d = found[0]
    assert -1 <= d.cos_mean <= 1 and d.cos_std >= 0 and d.norm_ratio > 0
    # steps 0, 5, 10, 15: the first 10 % (step < 2) is warm-up
    assert (d.records, d.steps, d.student) == (3, 20, "resnet18_thin")
    assert d.stage in (1, 2, 3, 4) and d.seconds > 0
    assert d.sentence().startswith("cos = ") and "\n" not in d.sentence()
    results = tmp_path / "R"
    assert not (results / "runs").exists()  # the measurement is no run of the store
    teachers = list((results / "teachers/ff_c40").iterdir())
    assert len(teachers) == 1 and (teachers[0] / "best.pt").is_file()
    stamp = (teachers[0] / "best.pt").stat().st_mtime_ns
    again = _tiny(tmp_path, methods=method, steps=20, every=5)  # the teacher is reused
    assert (teachers[0] / "best.pt").stat().st_mtime_ns == stamp
    assert again[0].cos_mean == pytest.approx(d.cos_mean, abs=1e-5)  # seeded


def test_a_declared_diagnose_set_is_the_default_and_names_the_label(tmp_path):
    reg = load_registry()
    declared = {e.name: _plain(e) for e in reg.values() if e.reports.get("diagnose")}
    declared["kd"] = _plain(reg["kd"], diagnose={"mode": "both", "set": {"alpha": 0.5}})
    extra = _write_registry(tmp_path / "extra.yaml", declared)
    found = _tiny(tmp_path, registry=extra, steps=10, every=3)
    assert [d.method for d in found] == ["kd@alpha=0.5"]
    assert found[0].records == 3  # steps 3, 6, 9: step 0 is in the warm-up (10 // 10 = 1)
    again = _tiny(tmp_path, registry=extra, methods="kd", steps=10, every=3,
                  settings={**TINY, "kd.alpha": 0.25})  # a named method gets its set too;
    assert [d.method for d in again] == ["kd@alpha=0.25"]  # --set wins over it


@pytest.mark.parametrize("cos_mean, cos_std, words", [
    (-0.21, 0.05, "conflict"), (0.3, 0.1, "agree"), (0.02, 0.1, "near-orthogonal"),
    (-0.05, 0.1, "near-orthogonal"), (-0.2, math.nan, "conflict")])
def test_the_sentence_follows_the_sign_and_the_spread(cos_mean, cos_std, words):
    d = Diagnosis("m", cos_mean, cos_std, 36, 200, 4, 1.0, 1.0)
    text = d.sentence()
    assert words in text and text.startswith(f"cos = {cos_mean:+.2f}")
    assert "\n" not in text and text.endswith(".") and text.count(": ") == 1
    others = {"conflict", "agree", "near-orthogonal"} - {words}
    assert not any(f"terms {w}" in text or f"are {w}" in text for w in others)
    if words == "conflict":
        assert "rotation" in text and "rgb mode" in text
    elif words == "agree":
        assert "both mode adds" in text
    else:
        assert "compare rgb and both" in text


def test_a_method_without_a_both_mode_and_an_unknown_one_are_one_line_errors(tmp_path):
    reg = load_registry()
    rgb_only = next(e.name for e in reg.values() if "both" not in e.modes)
    for methods, words in ((rgb_only, "has no both mode"), ("nosuchmethod", "unknown method"),
                           (f"{_both_method()},{rgb_only}", "has no both mode")):
        with pytest.raises(KdbenchError, match=words) as err:
            diagnose(methods=methods, results=tmp_path / "R", progress=False)
        assert "\n" not in str(err.value)
    with pytest.raises(KdbenchError, match="every="):
        diagnose(methods=_both_method(), every=0, results=tmp_path / "R")
    with pytest.raises(KdbenchError, match="no record after the warm-up"):
        diagnose(methods=_both_method(), steps=10, every=20, results=tmp_path / "R")
    assert not (tmp_path / "R").exists()  # nothing planned, nothing written


def test_no_declared_method_and_none_named_asks_for_methods(tmp_path):
    reg = load_registry()
    # the methods that declare reports.diagnose, declared again without it
    undeclared = {e.name: _plain(e) for e in reg.values() if e.reports.get("diagnose")}
    extra = _write_registry(tmp_path / "extra.yaml", undeclared)
    with pytest.raises(KdbenchError, match="--methods") as err:
        diagnose(registry=extra, results=tmp_path / "R", progress=False)
    assert "\n" not in str(err.value) and "reports.diagnose" in str(err.value)


def test_the_command_prints_the_cosine_its_spread_and_one_sentence(tmp_path, capsys):
    from kdbench.cli import main

    data = write_prepared(tmp_path / "prep", dataset="ff_c40")
    argv = ["diagnose", "--dataset", "ff_c40", "--data-root", str(data), "--preset", "quick",
            "--methods", _both_method(), "--steps", "20", "--every", "5", "--no-progress",
            "--results", str(tmp_path / "R")]
    for item in TINY.items():
        argv += ["--set", "=".join(map(str, item))]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"resnet18_thin {_both_method()} both, ff_c40: cos(grad L_rgb, "
                             "grad L_fre) at stage ") and " ± " in out[0]
    assert out[1].startswith("cos = ") and len(out) == 2
    assert main(["diagnose", "--methods", "vanilla", "--results", str(tmp_path / "R")]) == 2
    assert "both mode" in capsys.readouterr().err
