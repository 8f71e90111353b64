"""Argument checks that several metrics share."""

from __future__ import annotations

from numbers import Integral
from typing import TYPE_CHECKING

from .._validation import shown

if TYPE_CHECKING:
    from collections.abc import Sequence


def _check_int(value, name: str, low: int) -> None:
    """Raise unless `value` is an integer (not a bool) of at least `low`."""
    if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"`{name}={value!r}` must be an integer >= {low}.")


def _check_methods(methods, known: Sequence[str], *, what: str = "method") -> list[str]:
    """`methods` (one name or several) as a list without repeats; a ValueError for an unknown or no name."""
    methods = [methods] if isinstance(methods, str) else list(methods)
    unknown = [method for method in methods if method not in known]
    if unknown or not methods:
        raise ValueError(
            f"Unknown {what}(s) {shown(unknown) if unknown else '(none given)'}; `methods=` takes some of "
            f"{shown(known)}."
        )
    return list(dict.fromkeys(methods))
