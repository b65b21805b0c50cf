"""Solvers, found by name: `names()` lists them, `get(name, **options)` builds one.

The layer has four parts (see docs/architecture.md): the problems a solver integrates (`problems`), the solver as
a step (`base`), step-size controllers (`control`), and the one loop that composes them (`loop.integrate`).
The registry is a constant table; a new solver is added by importing its class here.
"""

from __future__ import annotations

from ..registry import build
from .adaptive import AdaptiveSDE, Bosh3, Dopri5, Tsit5
from .base import GridState, NonFiniteError, SampleResult, Solver, SolverState
from .control import AdaptiveController, FixedGrid, StepSizeController, StepSizeError
from .correctors import CORRECTORS, AnnealedLangevin, Corrector, Langevin, PredictorCorrector
from .edm import LMS, EDMHeun
from .exponential import (
    DDIM,
    AdaptiveDPMSolver,
    DPMSolver1,
    DPMSolver2,
    DPMSolver3,
    DPMSolverPP2M,
    DPMSolverPP2S,
    DPMSolverPP3M,
    SDEDPMSolverPP2M,
)
from .grids import GRIDS, EDMGrid, GivenGrid, LogSNRGrid, QuadraticGrid, ShiftedGrid, TimeGrid, UniformGrid, get_grid
from .loop import integrate
from .ode import RK4, Euler, Heun, ScipyODE
from .problems import Chart, DiffusionProblem, LogSNRChart, Term
from .sdeint import TorchSDE
from .stochastic import Ancestral, EulerMaruyama, ReverseDiffusion
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


REMOVED_OPTIONS = {
    "denoise_to_zero": "the final Tweedie step is sample(..., denoise=True) for every solver (from Hydra: sample.denoise=true)",
    "denoise": "the final Tweedie step is sample(..., denoise=True) for every solver (from Hydra: sample.denoise=true)",
}
"""Options that solvers no longer take, with what replaces them."""


def get(name: str | Solver, **options) -> Solver:
    """The solver `name` built with `options`; unknown names and options fail with the valid choices."""
    if isinstance(name, Solver):
        if options:
            raise ValueError(f"options {sorted(options)} given with an already-built solver {name!r}")
        return name
    for option, replacement in REMOVED_OPTIONS.items():
        if option in options:
            raise ValueError(f"solver option {option!r} was removed: {replacement}")
    return build("solver", SOLVERS, name, options)


__all__ = [
    "AdaptiveController", "AnnealedLangevin", "Ancestral", "CORRECTORS", "Chart", "Corrector", "DiffusionProblem",
    "EDMGrid", "Euler", "EulerMaruyama", "FixedGrid", "GRIDS", "GivenGrid", "GridState", "Heun", "Langevin",
    "LogSNRChart", "LogSNRGrid", "NonFiniteError", "PredictorCorrector", "QuadraticGrid", "RK4", "ReverseDiffusion",
    "SOLVERS", "SampleResult", "ScipyODE", "ShiftedGrid", "Solver", "SolverState", "StepSizeController", "StepSizeError", "Term",
    "TimeGrid", "TorchSDE", "UniformGrid", "get", "get_grid", "integrate", "names",
]
