import textwrap

import pytest

from kdbench.errors import KdbenchError
from kdbench.methods import Distiller
from kdbench.registry import load_registry, read_registry, select_methods

USER_METHOD = '''
from kdbench.methods import Distiller


class Mine(Distiller):
    def forward_train(self, batch):
        out = self.student(batch["image"])
        return out.logits, {"loss_ce": self.ce(out, batch)}
'''


def test_builtin_registry_has_vanilla():
    reg = load_registry()
    assert "vanilla" in reg
    assert issubclass(reg["vanilla"].resolve(), Distiller)


def test_method_from_a_file_path_outside_the_repo(tmp_path):
    (tmp_path / "mine.py").write_text(USER_METHOD)
    (tmp_path / "my.yaml").write_text(textwrap.dedent("""
        mine:
          entry: mine.py:Mine
          modes: [rgb]
          defaults: {w: 2.0}
          datasets: {celebdf: {w: 5.0}}
    """))
    reg = load_registry([tmp_path / "my.yaml"])
    assert set(reg) >= {"vanilla", "mine"}
    cls = reg["mine"].resolve()
    assert cls.__name__ == "Mine" and issubclass(cls, Distiller)
    assert reg["mine"].hparams("synthetic") == {"w": 2.0}
    assert reg["mine"].hparams("celebdf") == {"w": 5.0}
    assert reg["mine"].hparams("celebdf", {"w": 1.0}) == {"w": 1.0}
    with pytest.raises(KdbenchError, match="unknown hyper-parameter mine.v"):
        reg["mine"].hparams("synthetic", {"v": 1})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [unclosed\n", "malformed YAML"),
        ("- just a list\n", "expected a mapping"),
        ("m: {modes: [rgb]}\n", "needs an 'entry"),
        ("m: {entry: x:Y, modes: [rgb, fancy]}\n", "has modes"),
    ],
)
def test_malformed_registry_is_a_one_line_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(KdbenchError, match=message) as info:
        read_registry(path)
    assert "\n" not in str(info.value)


def test_bad_entries_fail_on_resolve(tmp_path):
    (tmp_path / "notd.py").write_text("class Thing:\n    pass\n")
    (tmp_path / "r.yaml").write_text(
        "a: {entry: notd.py:Thing}\nb: {entry: missing.py:X}\nc: {entry: no_such_module:X}\n"
        "d: {entry: nocolon}\n"
    )
    reg = read_registry(tmp_path / "r.yaml")
    with pytest.raises(KdbenchError, match="not a Distiller subclass"):
        reg["a"].resolve()
    with pytest.raises(KdbenchError, match="not found"):
        reg["b"].resolve()
    with pytest.raises(KdbenchError, match="module 'no_such_module' of method 'c' not found"):
        reg["c"].resolve()
    with pytest.raises(KdbenchError, match="expected module:Class"):
        reg["d"].resolve()
    (tmp_path / "broken.py").write_text("import no_such_dependency\n")
    (tmp_path / "r2.yaml").write_text("e: {entry: broken.py:X}\nf: {entry: notd.py:Nope}\n")
    reg = read_registry(tmp_path / "r2.yaml")
    with pytest.raises(KdbenchError, match="cannot import .*no_such_dependency"):
        reg["e"].resolve()
    with pytest.raises(KdbenchError, match="has no class 'Nope'"):
        reg["f"].resolve()


def test_select_methods():
    reg = load_registry()
    assert [e.name for e in select_methods(reg, "all")] == list(reg)
    with pytest.raises(KdbenchError, match="unknown method 'nope'"):
        select_methods(reg, "vanilla,nope")


def test_every_unknown_method_is_named_with_its_suggestion():
    reg = load_registry()
    with pytest.raises(KdbenchError) as info:
        select_methods(reg, "atx,vanilla,pkk,atx")
    message = str(info.value)
    assert message.startswith("unknown methods 'atx' (did you mean 'at'?), 'pkk' (did you "
                              "mean 'pkt'?); known: vanilla,")
    assert "\n" not in message


def test_a_misspelt_setting_or_hyper_parameter_suggests_its_full_dotted_key():
    from kdbench.config import resolve_config

    with pytest.raises(KdbenchError, match=r"unknown setting train\.lrr \(did you mean "
                       r"'train\.lr'\?\); known: train\.epochs"):
        resolve_config("quick", "synthetic", {"train": {"lrr": 0.1}})
    with pytest.raises(KdbenchError, match=r"unknown hyper-parameter tokd\.alpah1 \(did you "
                       r"mean 'tokd\.alpha1'\?\); known: tokd\.alpha1"):
        load_registry()["tokd"].hparams("synthetic", {"alpah1": 3})
    with pytest.raises(KdbenchError) as info:  # nothing close: no suggestion
        resolve_config("quick", "synthetic", {"data": {"zzz": 1}})
    assert "did you mean" not in str(info.value)


def test_malformed_variants_and_aliases_are_one_line_errors(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("m:\n  entry: kdbench.methods.vanilla:Vanilla\n  defaults: {w: 1}\n"
                   "  variants: [{set: {nope: 1}}]\n")
    with pytest.raises(KdbenchError, match="'variants' must be"):
        read_registry(bad)
    bad.write_text("m:\n  entry: kdbench.methods.vanilla:Vanilla\n  defaults: {w: 1}\n"
                   "  aliases: {x: [nope]}\n")
    with pytest.raises(KdbenchError, match="'aliases' must map"):
        read_registry(bad)


def test_the_documented_import_is_the_interface():
    import kdbench.methods
    from kdbench.methods.base import Distiller as Defined

    assert Distiller is Defined and "Distiller" in kdbench.methods.__all__
    with pytest.raises(AttributeError):
        kdbench.methods.Nope  # noqa: B018
