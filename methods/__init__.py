"""The built-in distillers, installed as ``kdbench.methods`` (one file per method).

A method of your own derives from :class:`Distiller` and decorates its loss function with
:func:`full_precision` (fp32 also under mixed precision)::

    from kdbench.methods import Distiller, full_precision
"""

from __future__ import annotations

from typing import Any

__all__ = ["Distiller", "full_precision"]


def __getattr__(name: str) -> Any:
    # lazy, so that `kdbench` checks its arguments before importing torch
    if name in __all__:
        from kdbench.methods import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
