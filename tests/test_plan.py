"""Run planning: registry variants, --sweep, aliases, and the folder each run gets."""

import pytest

from kdbench.config import RunSpec, variant_tag
from kdbench.errors import KdbenchError
from kdbench.registry import load_registry
from kdbench.variants import default_plan_labels, parse_sweep, plan_runs


def _plan(names, modes=("rgb", "both"), overrides=None, sweeps=()):
    reg = load_registry()
    pairs = [(reg[n], m) for n in names for m in reg[n].modes if m == "none" or m in modes]
    return plan_runs(pairs, "synthetic", overrides or {}, [parse_sweep(s) for s in sweeps])


def test_tokd_runs_its_rotation_off_variant_in_both_mode_only():
    runs = [(p.entry.name, p.mode, p.variant) for p in _plan(["tokd"])]
    assert runs == [("tokd", "rgb", ""), ("tokd", "both", ""),
                    ("tokd", "both", "rotation=false")]


def test_sweep_of_d_gives_one_run_per_value_and_reuses_the_default_folder():
    runs = _plan(["tokd"], modes=("both",), sweeps=["d=256,1024,2048"])
    variants = [p.variant for p in runs]
    assert variants == ["", "rotation=false", "d=256", "d=2048"]  # d=1024 is the default run
    assert [p.hparams["d"] for p in runs] == [1024, 1024, 256, 2048]


def test_alpha_alias_sets_both_weights():
    runs = _plan(["tokd"], modes=("both",), sweeps=["alpha=1,100"])
    swept = [p for p in runs if "alpha" in p.variant]
    assert [(p.hparams["alpha1"], p.hparams["alpha2"]) for p in swept] == [(1, 1), (100, 100)]
    assert swept[0].variant == "alpha1=1,alpha2=1"
    reg = load_registry()
    assert reg["tokd"].hparams("synthetic", {"alpha": 5})["alpha2"] == 5
    assert reg["tokd"].hparams("celebdf")["alpha1"] == 200  # per-dataset default


def test_rgb_mode_is_not_swept_over_settings_it_ignores():
    runs = [(p.mode, p.variant) for p in _plan(["tokd"], sweeps=["d=256,1024"])]
    assert runs == [("rgb", ""), ("both", ""), ("both", "rotation=false"), ("both", "d=256")]
    (logged,) = [p for p in _plan(["tokd"], modes=("both",),
                                  overrides={"tokd": {"gradsim_every": 1}}) if not p.variant]
    assert logged.hparams["gradsim_every"] == 1  # logging interval: same folder, new value


def test_values_take_the_type_of_the_default_so_one_setting_names_one_folder():
    a = _plan(["tokd"], modes=("both",), sweeps=["rotation=0"])
    b = _plan(["tokd"], modes=("both",), sweeps=["rotation=false"])
    assert [p.variant for p in a] == [p.variant for p in b] == ["", "rotation=false"]
    (lr,) = _plan(["tokd"], modes=("both",), overrides={"tokd": {"rot_lr_scale": "1e0"}})[:1]
    assert lr.variant == "" and lr.hparams["rot_lr_scale"] == 1.0
    with pytest.raises(KdbenchError, match="does not fit the type of its default 1024"):
        _plan(["tokd"], modes=("both",), sweeps=["d=12.5"])


def test_sweep_key_no_selected_method_knows_is_an_error():
    with pytest.raises(KdbenchError, match="no selected method"):
        _plan(["at"], sweeps=["d=128"])
    with pytest.raises(KdbenchError, match="key=v1,v2"):
        parse_sweep("d")
    with pytest.raises(KdbenchError, match="given twice"):
        _plan(["tokd"], sweeps=["d=128", "d=256"])
    with pytest.raises(KdbenchError, match="not a number"):
        parse_sweep("d=[1")


def test_set_override_lands_in_a_variant_folder():
    (run,) = [p for p in _plan(["at"], modes=("rgb",), overrides={"at": {"beta": 500}})]
    assert run.variant == "beta=500"
    spec = RunSpec("synthetic", "resnet18_thin", "at", "rgb", 0, run.hparams, run.variant)
    assert spec.relpath == "runs/synthetic/resnet18_thin/at@beta=500/rgb/seed0"
    assert variant_tag({"a": True, "b": 2.0}, {"a": False, "b": 1}) == "a=true,b=2"


def test_default_plan_labels_are_the_folders_a_plain_run_makes():
    reg = load_registry()
    for mode in ("rgb", "both"):
        planned = {p.entry.name + (f"@{p.variant}" if p.variant else "")
                   for p in _plan(list(reg), modes=(mode,)) if p.mode == mode}
        labels = default_plan_labels(reg, "synthetic", mode)
        assert planned <= labels and "tokd@d=256" not in labels
    assert "tokd@rotation=false" in default_plan_labels(reg, "synthetic", "both")
    assert "tokd@rotation=false" not in default_plan_labels(reg, "synthetic", "rgb")
