"""Solvers, found by name: `names()` lists them, `get(name, **options)` builds one.

The registry is a constant table; a new solver is added by importing its class here.
"""

from __future__ import annotations

from ..registry import build
from .base import NonFiniteError, SampleResult, Solver, StepContext
from .adaptive import AdaptiveSDE, Bosh3, Dopri5, StepSizeError, Tsit5
from .correctors import CORRECTORS, AnnealedLangevin, Corrector, Langevin, PredictorCorrector
from .edm import LMS, EDMHeun
from .grids import GRIDS, EDMGrid, GivenGrid, LogSNRGrid, QuadraticGrid, TimeGrid, UniformGrid, get_grid
from .ode import RK4, Euler, Heun, ScipyODE
from .sdeint import TorchSDE
from .stochastic import Ancestral, EulerMaruyama, ReverseDiffusion
from .exponential import (
    DDIM, AdaptiveDPMSolver, DPMSolver1, DPMSolver2, DPMSolver3, DPMSolverPP2M, DPMSolverPP2S, DPMSolverPP3M,
    SDEDPMSolverPP2M,
)
from .unipc import UniPC

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
        DDIM,
        DPMSolver1,
        DPMSolver2,
        DPMSolver3,
        DPMSolverPP2S,
        DPMSolverPP2M,
        DPMSolverPP3M,
        SDEDPMSolverPP2M,
        UniPC,
        AdaptiveDPMSolver,
        EDMHeun,
        LMS,
        Bosh3,
        Dopri5,
        Tsit5,
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
    return build("solver", SOLVERS, name, options)


__all__ = [
    "AnnealedLangevin", "Ancestral", "CORRECTORS", "Corrector", "EDMGrid", "Euler", "EulerMaruyama", "GRIDS",
    "GivenGrid", "Heun", "Langevin", "LogSNRGrid", "NonFiniteError", "PredictorCorrector", "QuadraticGrid", "RK4",
    "ReverseDiffusion", "SOLVERS", "SampleResult", "ScipyODE", "Solver", "StepContext", "TimeGrid", "TorchSDE",
    "UniformGrid", "get", "get_grid", "names",
]
