"""Solvers, found by name: `names()` lists them, `get(name, **options)` builds one.

The registry is a constant table; a new solver is added by importing its class here.
"""

from __future__ import annotations

import difflib
import inspect

from .base import NonFiniteError, SampleResult, Solver, StepContext
from .adaptive import AdaptiveSDE, Bosh3, Dopri5, StepSizeError
from .correctors import CORRECTORS, AnnealedLangevin, Corrector, Langevin, PredictorCorrector
from .edm import LMS, EDMHeun
from .grids import GRIDS, EDMGrid, GivenGrid, LogSNRGrid, QuadraticGrid, TimeGrid, UniformGrid, get_grid
from .ode import RK4, Euler, Heun, ScipyODE
from .sdeint import TorchSDE
from .stochastic import Ancestral, EulerMaruyama, ReverseDiffusion

SOLVERS: dict[str, type[Solver]] = {
    cls.name: cls
    for cls in (
        EulerMaruyama,
        ReverseDiffusion,
        Ancestral,
        PredictorCorrector,
        Euler,
        Heun,
        RK4,
        ScipyODE,
        TorchSDE,
        EDMHeun,
        LMS,
        Bosh3,
        Dopri5,
        AdaptiveSDE,
    )
}


def names() -> list[str]:
    """Every solver name `get` accepts."""
    return sorted(SOLVERS)


def get(name: str | Solver, **options) -> Solver:
    """The solver `name` built with `options`; unknown names and options fail with the valid choices."""
    if isinstance(name, Solver):
        if options:
            raise ValueError(f"options {sorted(options)} given with an already-built solver {name!r}")
        return name
    if name not in SOLVERS:
        hint = difflib.get_close_matches(str(name), SOLVERS, n=1)
        raise ValueError(
            f"unknown solver {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "") + f" Known solvers: {names()}"
        )
    cls = SOLVERS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"solver {name!r} has no option(s) {unknown}; its options are {accepted or 'none'}")
    return cls(**options)


__all__ = [
    "AnnealedLangevin", "Ancestral", "CORRECTORS", "Corrector", "EDMGrid", "Euler", "EulerMaruyama", "GRIDS",
    "GivenGrid", "Heun", "Langevin", "LogSNRGrid", "NonFiniteError", "PredictorCorrector", "QuadraticGrid", "RK4",
    "ReverseDiffusion", "SOLVERS", "SampleResult", "ScipyODE", "Solver", "StepContext", "TimeGrid", "TorchSDE",
    "UniformGrid", "get", "get_grid", "names",
]
