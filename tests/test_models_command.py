"""`kdbench models [PATTERN]`: the backbones a student or teacher branch can use, with their
stage maps and cost; a model that fails is a row with its reason, a pattern matching nothing
one line and exit status 2. Tiny input sizes keep each test to a few seconds."""

from __future__ import annotations

import pytest

from kdbench import api
from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.models import catalog
from kdbench.models.cost import count_params
from kdbench.models.students import create_student

SMALL = ["mobilenetv3_small_050", "mobilenetv3_small_075", "mobilenetv3_small_100"]


def _one_error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdbench: error:"), captured.err
    assert captured.out == ""
    return lines[0]


def test_a_pattern_lists_timm_backbones_with_their_stages_and_cost(capsys):
    result = api.models("mobilenetv3_small*", size=32, progress=False)
    assert [r.name for r in result.rows] == SMALL and result.matched == 3
    row = result.rows[0]
    assert row.problem is None and not row.builtin
    assert row.stages == 4 and row.channels == [8, 16, 24, 288]
    assert row.params == count_params(create_student("mobilenetv3_small_050"))
    assert 0 < row.gflops < 0.01
    assert row.imagenet and row.sequential and row.preact
    frame = result.frame()
    assert list(frame["name"]) == SMALL and frame.loc[0, "params"] == row.params
    assert "models" in api.__all__

    assert main(["models", "mobilenetv3_small_050", "--size", "32", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mobilenetv3_small_050" in out and "8,16,24,288" in out
    assert f"{row.params / 1e6:.2f}" in out and "problem" not in out  # no failure column
    assert "more backbone" not in out  # the one name matched


def test_without_a_pattern_the_built_in_three_and_how_to_search(capsys):
    assert main(["models", "--size", "32", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet18_thin", "resnet34_thin", "xception"):
        assert name in out
    assert "32,64,128,256" in out and "728,728,728,2048" in out
    assert "kdbench models 'mobilenet*'" in out
    assert "mobilenetv3" not in out


def test_limit_lists_the_first_and_says_how_many_more_matched(capsys):
    result = api.models("mobilenetv3_small*", size=16, limit=1, progress=False)
    assert [r.name for r in result.rows] == SMALL[:1] and result.matched == 3
    assert any("2 more backbones matched 'mobilenetv3_small*'" in n and "--limit" in n
               for n in result.notes)


def test_a_pattern_matching_nothing_is_one_line_with_close_names(capsys):
    line = _one_error_line(capsys, ["models", "mobilnetv3_small*"])
    assert "no backbone matches 'mobilnetv3_small*'" in line and "mobilenetv3_small" in line
    with pytest.raises(KdbenchError, match="no backbone matches 'zzz_nothing'"):
        api.models("zzz_nothing", progress=False)


@pytest.mark.parametrize(("argv", "message"), [
    (["models", "--size", "4"], "argument --size: must be >= 8, got 4"),
    (["models", "--limit", "0"], "argument --limit: must be >= 1, got 0"),
])
def test_bad_size_or_limit_is_one_line(capsys, argv, message):
    assert message in _one_error_line(capsys, argv)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"size": 4}, "size=4; give a whole number >= 8"),
    ({"limit": 0}, "limit=0; give a whole number >= 1"),
    ({"size": 32.5}, "size=32.5"),
])
def test_the_api_checks_its_arguments(kwargs, message):
    with pytest.raises(KdbenchError, match=message.replace(".", r"\.")):
        api.models("mobilenetv3_small*", progress=False, **kwargs)


def test_a_model_that_fails_is_a_row_with_its_reason(monkeypatch, capsys):
    real = catalog.create_student

    def flaky(name: str):
        if name == "mobilenetv3_small_075":
            raise RuntimeError("no features_only here\nsecond line")
        student = real(name)
        if name == "mobilenetv3_small_100":
            def broken(x, preact=False):
                raise ValueError("spatial size too small")
            monkeypatch.setattr(student, "forward", broken)
        return student

    monkeypatch.setattr(catalog, "create_student", flaky)
    assert main(["models", "mobilenetv3_small*", "--size", "16", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    rows = {r.name: r for r in catalog.catalog("mobilenetv3_small*", 16, progress=False).rows}
    assert rows["mobilenetv3_small_050"].problem is None
    assert rows["mobilenetv3_small_075"].problem == (
        "cannot be built: RuntimeError: no features_only here second line")
    assert rows["mobilenetv3_small_100"].problem == (
        "does not run at 16 px: ValueError: spatial size too small")
    assert rows["mobilenetv3_small_100"].params is None
    out = " ".join(captured.out.split())
    assert "problem" in out and "cannot be built: RuntimeError" in out
    assert "2 of 3 cannot serve as a backbone" in out
