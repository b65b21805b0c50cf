"""Building an object by name from a constant table, with errors that name the valid choices."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any


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
    return factory(**options)
