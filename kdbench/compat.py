"""The installed torch and torchvision must be a pair: checked before timm imports them."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache
from types import ModuleType

from kdbench.errors import KdbenchError


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "?"


def check_torch_pair(load: Callable[[str], ModuleType] = importlib.import_module) -> None:
    """Import torchvision (timm does); a torchvision built for another torch (a CPU torch beside
    a CUDA torchvision, say) fails there with a long traceback: say it in one line instead."""
    try:
        load("torchvision")
    except (RuntimeError, ImportError, AttributeError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, ModuleNotFoundError) and exc.name == "torchvision":
            raise KdbenchError("torchvision is not installed; install it with torch: pip "
                               "install torch torchvision") from None
        raise KdbenchError(
            f"torch {_version('torch')} and torchvision {_version('torchvision')} do not match "
            f"({first[:120]}); install them together from one index: pip install "
            "--force-reinstall torch torchvision") from None


checked_torch_pair = cache(check_torch_pair)  # once per process
