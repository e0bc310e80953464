"""A torch/torchvision pair that does not match is one line with the fix."""

import pytest

from kdbench.compat import check_torch_pair
from kdbench.errors import KdbenchError


def test_the_installed_pair_matches():
    check_torch_pair()  # the pair pip resolved together imports


def test_a_mismatched_pair_is_one_line_with_the_fix():
    def broken(name: str):
        raise RuntimeError("operator torchvision::nms does not exist\n<40 lines of traceback>")

    with pytest.raises(KdbenchError) as err:
        check_torch_pair(broken)
    text = str(err.value)
    assert "\n" not in text and "do not match" in text and "torchvision::nms" in text
    assert "pip install --force-reinstall torch torchvision" in text


def test_a_missing_torchvision_says_to_install_it():
    def missing(name: str):
        raise ModuleNotFoundError("No module named 'torchvision'", name="torchvision")

    with pytest.raises(KdbenchError, match="torchvision is not installed"):
        check_torch_pair(missing)
