"""Argument checks shared by the packages (curvature is the lowest layer that needs them)."""

from __future__ import annotations

import numpy as np


def is_integer(value: object) -> bool:
    """A Python or NumPy integer, not a bool (``True`` is an ``int`` to Python)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def positive_int(name: str, value: object, detail: str = "") -> int:
    """``value`` as an ``int`` when it is an integer >= 1; otherwise a ValueError naming it."""
    if not is_integer(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer{detail} (got {value!r}).")
    return int(value)


def integer_at_least(
    name: str, value: object, minimum: int, *, optional: bool = False
) -> int | None:
    """``value`` as an ``int`` when it is an integer >= ``minimum`` (or None, when
    ``optional``); otherwise a ValueError naming it and the allowed range."""
    if optional and value is None:
        return None
    if not is_integer(value) or value < minimum:
        suffix = " or None" if optional else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{suffix} (got {value!r}).")
    return int(value)
