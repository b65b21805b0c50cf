"""Probability-flow ODE solvers: explicit Runge-Kutta steps in torch, and scipy's `solve_ivp`.

The ODE is `dx/dt = F(x, t) = f(x, t) - g(t)^2 score(x, t) / 2`, integrated from T down to t_min (h < 0).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import SampleResult, Solver, check_finite, NonFiniteError


class Euler(Solver):
    """x_{n+1} = x_n + h F(x_n, t_n). Order 1, 1 NFE per step."""

    name = "euler"
    order = 1
    probability_flow = True

    def step(self, term, x, t, t_next, context, generator):
        return x + (t_next - t) * term.drift(x, t)


class Heun(Solver):
    """Heun's method (explicit trapezoid): predictor Euler, corrector averaging the two slopes. Order 2, 2 NFE."""

    name = "heun"
    order = 2
    probability_flow = True

    def step(self, term, x, t, t_next, context, generator):
        h = t_next - t
        k1 = term.drift(x, t)
        k2 = term.drift(x + h * k1, t_next)
        return x + 0.5 * h * (k1 + k2)


class RK4(Solver):
    """The classical fourth-order Runge-Kutta method. Order 4, 4 NFE per step."""

    name = "rk4"
    order = 4
    probability_flow = True

    def step(self, term, x, t, t_next, context, generator):
        h = t_next - t
        k1 = term.drift(x, t)
        k2 = term.drift(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = term.drift(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = term.drift(x + h * k3, t_next)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


class ScipyODE(Solver):
    """scipy.integrate.solve_ivp on the flattened batch (one system, as in Song et al. 2021).

    Only the grid's endpoints are used; scipy picks its own steps. The NFE reported is what the wrapper counted
    (scipy's own `nfev` is in `stats`).
    """

    name = "scipy"
    order = 5
    probability_flow = True
    adaptive = True

    def __init__(self, method: str = "RK45", rtol: float = 1e-5, atol: float = 1e-5):
        if method not in ("RK23", "RK45", "DOP853", "Radau", "BDF", "LSODA"):
            raise ValueError(f"unknown solve_ivp method {method!r}; choose RK23, RK45, DOP853, Radau, BDF or LSODA")
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"rtol and atol must be positive; got rtol={rtol}, atol={atol}")
        self.method, self.rtol, self.atol = method, float(rtol), float(atol)

    def integrate(self, term, x, times, generator=None, *, keep_trajectory=False, progress=False):
        from scipy.integrate import solve_ivp

        shape, dtype, device = x.shape, x.dtype, x.device

        def rhs(t, y):
            state = torch.as_tensor(y, dtype=dtype, device=device).reshape(shape)
            dx = term.drift(state, torch.tensor(t, dtype=dtype, device=device))
            if not torch.isfinite(dx).all():
                raise NonFiniteError(f"scipy {self.method}: the drift is NaN or inf at t = {t:.6g}")
            return dx.detach().cpu().numpy().reshape(-1).astype(np.float64)

        t0, t1 = float(times[0]), float(times[-1])
        y0 = x.detach().cpu().numpy().reshape(-1).astype(np.float64)
        sol = solve_ivp(rhs, (t0, t1), y0, method=self.method, rtol=self.rtol, atol=self.atol)
        if not sol.success:
            raise RuntimeError(f"scipy {self.method} failed between t = {t0:g} and {t1:g}: {sol.message}")
        x = torch.as_tensor(sol.y[:, -1], dtype=dtype, device=device).reshape(shape)
        check_finite(x, self, len(sol.t) - 2, len(sol.t) - 1, sol.t[-2], sol.t[-1])
        trajectory = None
        if keep_trajectory:
            trajectory = [torch.as_tensor(y, dtype=dtype, device=device).reshape(shape) for y in sol.y.T]
        stats = {"scipy_nfev": int(sol.nfev), "accepted_steps": len(sol.t) - 1}
        return SampleResult(x, 0, torch.as_tensor(sol.t), trajectory, stats)
