"""The built-in distillers, installed as ``kdbench.methods`` (one file per method).

A method of your own derives from :class:`Distiller`::

    from kdbench.methods import Distiller
"""

from __future__ import annotations

from typing import Any

__all__ = ["Distiller"]


def __getattr__(name: str) -> Any:
    # lazy, so that `kdbench` checks its arguments before importing torch
    if name == "Distiller":
        from kdbench.methods.base import Distiller

        return Distiller
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
