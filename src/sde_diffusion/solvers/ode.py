"""Explicit Runge-Kutta steps for any ODE term, and scipy's `solve_ivp` as a step.

For sampling the term is the probability flow `dx/dt = F(x, t) = f(x, t) - g(t)^2 score(x, t) / 2`, integrated from
T down to t_min (h < 0); for the likelihood it is the augmented ODE, integrated upwards. The steps read only
`term.drift`, so they integrate any term on any SDE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import NonFiniteError, Solver, SolverState


class Euler(Solver):
    """x_{n+1} = x_n + h F(x_n, t_n). Order 1, 1 NFE per step."""

    name = "euler"
    order = 1

    def step(self, term, x, t, t_next, state, generator):
        return x + (t_next - t) * term.drift(x, t), None, state


class Heun(Solver):
    """Heun's method (explicit trapezoid): predictor Euler, corrector averaging the two slopes. Order 2, 2 NFE."""

    name = "heun"
    order = 2

    def step(self, term, x, t, t_next, state, generator):
        h = t_next - t
        k1 = term.drift(x, t)
        k2 = term.drift(x + h * k1, t_next)
        return x + 0.5 * h * (k1 + k2), None, state


class RK4(Solver):
    """The classical fourth-order Runge-Kutta method. Order 4, 4 NFE per step."""

    name = "rk4"
    order = 4

    def step(self, term, x, t, t_next, state, generator):
        h = t_next - t
        k1 = term.drift(x, t)
        k2 = term.drift(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = term.drift(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = term.drift(x + h * k3, t_next)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None, state


@dataclass
class ScipyState(SolverState):
    """What scipy reported over the solve."""

    nfev: int = 0
    steps: int = 0

    def stats(self):
        return {"scipy_nfev": self.nfev, "accepted_steps": self.steps}


class ScipyODE(Solver):
    """scipy.integrate.solve_ivp on the flattened batch (one system, as in Song et al. 2021), as one step over the
    whole interval: scipy chooses its own steps inside it, so `sample` hands it only the grid's end points.
    The NFE reported is what the wrapper counted (scipy's own `nfev` is in `stats`).
    """

    name = "scipy"
    order = 5
    adaptive = True
    separable = False  # one system for the batch; under seeds each sample is solved alone

    def __init__(self, method: str = "RK45", rtol: float = 1e-5, atol: float = 1e-5):
        if method not in ("RK23", "RK45", "DOP853", "Radau", "BDF", "LSODA"):
            raise ValueError(f"unknown solve_ivp method {method!r}; choose RK23, RK45, DOP853, Radau, BDF or LSODA")
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"rtol and atol must be positive; got rtol={rtol}, atol={atol}")
        self.method, self.rtol, self.atol = method, float(rtol), float(atol)

    def controller(self, times):
        from .control import FixedGrid

        return FixedGrid(times[[0, -1]])

    def init(self, term, x, times):
        return ScipyState()

    def step(self, term, x, t, t_next, state, generator):
        from scipy.integrate import solve_ivp

        shape, dtype, device = x.shape, x.dtype, x.device

        def rhs(s, y):
            value = torch.as_tensor(y, dtype=dtype, device=device).reshape(shape)
            dx = term.drift(value, torch.tensor(s, dtype=dtype, device=device))
            if not torch.isfinite(dx).all():
                raise NonFiniteError(f"scipy {self.method}: the drift is NaN or inf at t = {s:.6g}")
            return dx.detach().cpu().numpy().reshape(-1).astype(np.float64)

        t0, t1 = float(t), float(t_next)
        sol = solve_ivp(rhs, (t0, t1), x.detach().cpu().numpy().reshape(-1).astype(np.float64),
                        method=self.method, rtol=self.rtol, atol=self.atol)
        if not sol.success:
            raise RuntimeError(f"scipy {self.method} failed between t = {t0:g} and {t1:g}: {sol.message}")
        state.nfev += int(sol.nfev)
        state.steps += len(sol.t) - 1
        return torch.as_tensor(sol.y[:, -1], dtype=dtype, device=device).reshape(shape), None, state
