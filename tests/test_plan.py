"""Run planning: registry variants, --sweep, aliases, and the folder each run gets."""

import pytest

from kdbench.config import RunSpec, variant_tag
from kdbench.errors import KdbenchError
from kdbench.plan import parse_sweep, plan_runs
from kdbench.registry import load_registry


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


def test_sweep_key_no_selected_method_knows_is_an_error():
    with pytest.raises(KdbenchError, match="no selected method"):
        _plan(["at"], sweeps=["d=128"])
    with pytest.raises(KdbenchError, match="key=v1,v2"):
        parse_sweep("d")


def test_set_override_lands_in_a_variant_folder():
    (run,) = [p for p in _plan(["at"], modes=("rgb",), overrides={"at": {"beta": 500}})]
    assert run.variant == "beta=500"
    spec = RunSpec("synthetic", "resnet18_thin", "at", "rgb", 0, run.hparams, run.variant)
    assert spec.relpath == "runs/synthetic/resnet18_thin/at@beta=500/rgb/seed0"
    assert variant_tag({"a": True, "b": 2.0}, {"a": False, "b": 1}) == "a=true,b=2"
