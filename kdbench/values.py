"""Typed values: a setting or hyper-parameter given on the command line (a YAML scalar) takes
the type of its default and must lie within its limits.

Limits are a mapping with any of ``min`` / ``max`` (inclusive), ``gt`` / ``lt`` (exclusive) and
``choices`` (a list); e.g. ``{min: 1}``, ``{gt: 0, lt: 1}``, ``{choices: [sum, mean]}``.
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Iterable
from typing import Any

from kdbench.errors import KdbenchError

LIMIT_KEYS = ("min", "max", "gt", "lt", "choices")
_BOUNDS = {"min": (operator.ge, ">="), "max": (operator.le, "<="), "gt": (operator.gt, ">"),
           "lt": (operator.lt, "<")}


def comma_list(value: Any) -> list[str]:
    """``"a, b"``, ``["a", "b"]`` or a single value -> ``["a", "b"]`` (blanks dropped; None: [])."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(
        value, (list, tuple, set)) else [value]
    return [str(v).strip() for v in items if str(v).strip()]


def did_you_mean_key(prefix: str, key: str, known: Iterable[Any]) -> str:
    """`` (did you mean 'prefix.x'?)`` for the closest of ``known`` to the misspelt ``key`` of
    ``prefix`` (a config section or a method), named by its full dotted key; or ""."""
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {f'{prefix}.{close[0]}'!r}?)" if close else ""


def coerce(value: Any, default: Any, name: str) -> Any:
    """``value`` in the type of ``default``: ``"3e-4"`` -> 0.0003 for a float, ``1e0`` -> 1 for
    an int, ``0``/``1`` -> false/true for a bool, so equal settings compare (and name folders)
    equal. A default of None takes any scalar."""
    if default is None:
        return value
    if default == "auto":  # a switch decided per device unless forced
        if value == "auto" or isinstance(value, bool):
            return value
        if value in (0, 1):
            return bool(value)
        raise KdbenchError(f"{name}={value!r} is not a switch; give {name}=auto, true or false")
    if value is None:
        raise KdbenchError(f"{name} needs a value of the type of its default {default!r}, e.g. "
                           f"{name}={default!r}")
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if value in (0, 1):
                return bool(value)
            raise ValueError
        if isinstance(default, int):
            if isinstance(value, bool):
                raise ValueError
            as_float = float(value)
            if not as_float.is_integer():
                raise ValueError
            return int(as_float)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(default, str):
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise KdbenchError(f"{name}={value!r} does not fit the type of its default "
                           f"{default!r} ({type(default).__name__}); give a "
                           f"{type(default).__name__} like {name}={default!r}") from None
    return value


def check_limits(value: Any, limits: dict[str, Any] | None, name: str) -> Any:
    """``value`` if it lies within ``limits``; a one-line error naming the allowed range
    otherwise."""
    if not limits or value is None:
        return value
    if "choices" in limits and value not in limits["choices"]:
        raise KdbenchError(f"{name}={value!r} is not allowed; choose one of "
                           + ", ".join(map(str, limits["choices"])))
    bounds = {k: v for k, v in limits.items() if k in _BOUNDS}
    if bounds and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise KdbenchError(f"{name}={value!r} must be a number")
    if any(not _BOUNDS[k][0](value, b) for k, b in bounds.items()):
        allowed = " and ".join(f"{_BOUNDS[k][1]} {b}" for k, b in bounds.items())
        raise KdbenchError(f"{name}={value!r} is out of range; it must be {allowed}")
    return value


def check_limit_spec(limits: Any, default: Any) -> str | None:
    """Why ``limits`` is not a valid limit mapping for a setting with ``default`` (None if it
    is)."""
    if not isinstance(limits, dict) or not limits or set(limits) - set(LIMIT_KEYS):
        return f"limits must be a mapping of {', '.join(LIMIT_KEYS)}"
    if "choices" in limits and not isinstance(limits["choices"], list):
        return "choices must be a list"
    for key in ("min", "max", "gt", "lt"):
        if key in limits and (isinstance(limits[key], bool)
                              or not isinstance(limits[key], (int, float))):
            return f"{key} must be a number"
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            check_limits(default, limits, "default")
        except KdbenchError:
            return f"the default {default!r} is outside them"
    return None
