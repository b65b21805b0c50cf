"""Checks of arguments at the library's boundary, each failing with a message that names the argument.

A bool is not taken for a number (`steps=True` is refused, not read as 1), strings are not parsed (`snr='0.1'` is a
TypeError naming `snr`), and NaN / inf are refused wherever a finite number is meant. Each check returns the value
in its canonical type (int or float).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. A TypeError, and a ValueError too, so code that catches the library's
    ValueError for a bad option keeps working."""


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.dtype.is_complex and value.dtype != torch.bool
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as an int in [minimum, maximum]; a bool, float or string is a TypeError naming `name`."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() and value.dtype != torch.bool:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an integer; got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}; got {value}")
    return value


def real(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
         positive: bool = False, below: float | None = None) -> float:
    """`value` as a finite float: >= minimum, <= maximum, > 0 if `positive`, < below; a TypeError for non-numbers."""
    if not _is_number(value):
        raise ArgumentTypeError(f"{name} must be a number; got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be positive; got {value:g}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}; got {value:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}; got {value:g}")
    if below is not None and not value < below:
        raise ValueError(f"{name} must be < {below:g}; got {value:g}")
    return value


def flag(name: str, value: Any) -> bool:
    """`value` if it is True or False; anything else (1, 'false', None) is a TypeError naming `name`."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}")
    return value


def choice(name: str, value: Any, choices) -> Any:
    """`value` if it is one of `choices`; else a ValueError listing them."""
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}; got {value!r}")
    return value

