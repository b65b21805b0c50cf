"""Building an object by name from a constant table, with errors that name the valid choices."""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from .validation import ArgumentTypeError


def simple_types(annotation) -> set[type] | None:
    """The simple types an annotation allows ({int, float, bool, str, NoneType}), or None if it is not that simple."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    if origin is typing.Literal:
        args = tuple({type(a) for a in typing.get_args(annotation)})
    simple = {int, float, bool, str, type(None)}
    if not args or any(a not in simple for a in args):
        return None
    return set(args)


def type_ok(value, allowed: set[type]) -> bool:
    """Whether `value` fits the simple types `allowed`: a bool only where bool is, an int where int or float is."""
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int):
        return int in allowed or float in allowed
    return type(value) in allowed


def check_option_types(kind: str, name: str, factory: Callable, options: Mapping[str, Any]) -> None:
    """A TypeError naming the option whose value contradicts a simple annotation of `factory` (int, float, bool,
    str, or a union of them): `snr='0.1'` is refused here, not by a comparison deep inside the solver."""
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # an annotation that cannot be resolved: nothing to check against
        return
    for option, value in options.items():
        allowed = simple_types(hints[option]) if option in hints else None
        if allowed is not None and not type_ok(value, allowed):
            names = " or ".join(sorted("True or False" if t is bool else t.__name__ if t is not type(None) else "None"
                                       for t in allowed))
            raise ArgumentTypeError(f"{kind} {name!r}: option {option} must be {names}; got {type(value).__name__} {value!r}")


def build(kind: str, table: Mapping[str, Callable[..., Any]], name: str, options: Mapping[str, Any]) -> Any:
    """`table[name](**options)`; an unknown name gets the closest known one, an unknown option the accepted ones."""
    if name not in table:
        hint = difflib.get_close_matches(str(name), list(table), n=1)
        raise ValueError(f"unknown {kind} {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "") + f" Known: {sorted(table)}")
    factory = table[name]
    parameters = inspect.signature(factory).parameters  # a class's signature is its constructor's, less self
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        accepted = list(parameters)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(f"{kind} {name!r} has no option(s) {unknown}; its options are {accepted or 'none'}")
    check_option_types(kind, name, factory, options)
    return factory(**options)
