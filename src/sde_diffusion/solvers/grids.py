"""Time grids: decreasing times from `t_max` (default T) to `t_min`, `steps + 1` of them.

Each grid is defined through the SDE's own coefficients, so it means the same thing for every linear SDE:
uniform in t, quadratic in t (dense near t_min; DDIM), uniform in log-SNR (DPM-Solver), the EDM grid
(Karras et al. 2022, eq. 5) uniform in `sigma_tilde^(1/rho)` with `sigma_tilde = sigma / alpha = exp(-log_snr)`, and
the power grid uniform in `sigma_tilde^kappa` for any real kappa (the EDM grid at kappa = 1 / rho, log-SNR at 0).
`PiecewiseGrid` picks one of them by the step count (a per-budget rule, as `benchmarks/default_grids.py` fits).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from ..registry import build
from ..sde import SDE, LinearSDE
from ..validation import ArgumentTypeError, real

MAX_STEPS = 100_000
"""The most steps a named grid takes: samplers converge within ~1000, and 10**7 steps would run for hours with no
sign of progress. A given grid of times (grid=[...]) may hold more, on purpose."""


def check_steps(steps) -> int:
    """`steps` as a positive int up to MAX_STEPS; a bool or float is a TypeError (True is not 1 step)."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ArgumentTypeError(f"steps must be a positive integer; got {type(steps).__name__} {steps!r}")
    if steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    if steps > MAX_STEPS:
        raise ValueError(f"steps={steps} is more than any sampler needs (they converge within ~1000 steps; this "
                         f"would run for hours): use steps <= {MAX_STEPS}, or pass grid=<a list of times> to take "
                         "that many on purpose")
    return steps


class TimeGrid:
    """Base class: `grid(sde, steps, t_min, t_max)` -> decreasing times of length steps + 1, in float64."""

    name = ""

    def __call__(self, sde: SDE, steps: int, t_min: float, t_max: float | None = None) -> torch.Tensor:
        t_max = sde.T if t_max is None else real("t_max", t_max)
        t_min = real("t_min", t_min)
        check_steps(steps)
        if not 0 <= t_min < t_max <= sde.T * (1 + 1e-12):
            raise ValueError(f"need 0 <= t_min < t_max <= T = {sde.T:g}; got t_min={t_min:g}, t_max={t_max:g}")
        u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
        times = self.times(sde, u, float(t_min), t_max)
        times[0], times[-1] = t_max, t_min
        return times

    def times(self, sde: SDE, u: torch.Tensor, t_min: float, t_max: float) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class UniformGrid(TimeGrid):
    """t_i = t_max + i / N (t_min - t_max)."""

    name = "uniform"

    def times(self, sde, u, t_min, t_max):
        return t_max + u * (t_min - t_max)


class QuadraticGrid(TimeGrid):
    """t_i = t_min + (t_max - t_min) (1 - i / N)^2, dense near t_min (Song et al. 2021, DDIM)."""

    name = "quadratic"

    def times(self, sde, u, t_min, t_max):
        return t_min + (t_max - t_min) * (1 - u) ** 2


def _linear(sde: SDE, grid: str) -> LinearSDE:
    if not isinstance(sde, LinearSDE):
        raise ValueError(f"the {grid!r} grid needs a LinearSDE (it is defined through log_snr); got {type(sde).__name__}")
    return sde


class LogSNRGrid(TimeGrid):
    """Uniform in lambda = log(alpha / sigma) (Lu et al. 2022, DPM-Solver)."""

    name = "log_snr"

    def times(self, sde, u, t_min, t_max):
        sde = _linear(sde, self.name)
        lam_max = sde.log_snr(torch.tensor(t_min, dtype=torch.float64))
        lam_min = sde.log_snr(torch.tensor(t_max, dtype=torch.float64))
        return sde.t_of_log_snr(lam_min + u * (lam_max - lam_min)).to(torch.float64)


class EDMGrid(TimeGrid):
    """sigma_i = (sigma_max^(1/rho) + i / N (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho in sigma = sigma / alpha."""

    name = "edm"

    def __init__(self, rho: float = 7.0):
        if rho <= 0:
            raise ValueError(f"rho must be positive; got {rho}")
        self.rho = float(rho)

    def times(self, sde, u, t_min, t_max):
        sde = _linear(sde, self.name)
        s_max = torch.exp(-sde.log_snr(torch.tensor(t_max, dtype=torch.float64)))
        s_min = torch.exp(-sde.log_snr(torch.tensor(t_min, dtype=torch.float64)))
        r = 1 / self.rho
        sig = (s_max**r + u * (s_min**r - s_max**r)) ** self.rho
        return sde.t_of_log_snr(-torch.log(sig)).to(torch.float64)

    def __repr__(self):
        return f"EDMGrid(rho={self.rho})"


class PowerGrid(TimeGrid):
    """Uniform in sigma_tilde^kappa (sigma_tilde = sigma / alpha = exp(-lambda)): one family through the grids above.
    kappa = 1 / rho is the EDM grid (Karras: kappa = 1/7), kappa -> 0 the log-SNR grid (uniform in log sigma_tilde,
    the limit taken exactly at kappa = 0), and kappa < 0 (uniform in a power of the SNR) puts steps where the EDM
    grid is sparse, at low noise: in lambda its steps shrink towards t_min, where the EDM grid's grow.

        kappa != 0:  sigma_i = (sigma_max^kappa + i / N (sigma_min^kappa - sigma_max^kappa))^(1 / kappa)
        kappa == 0:  log sigma_i = log sigma_max + i / N (log sigma_min - log sigma_max)
    """

    name = "power"

    def __init__(self, kappa: float = 1 / 7):
        if not (isinstance(kappa, (int, float)) and math.isfinite(kappa)):
            raise ValueError(f"kappa must be a finite number; got {kappa!r}")
        self.kappa = float(kappa)

    def times(self, sde, u, t_min, t_max):
        sde = _linear(sde, self.name)
        ends = -sde.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))  # log sigma_tilde at both ends
        span = ends[1] - ends[0]
        if self.kappa == 0:
            log_sig = ends[0] + u * span
        else:  # log(a + u (b - a)) / kappa with a, b = sigma_max^kappa, sigma_min^kappa, stable as kappa -> 0
            log_sig = ends[0] + torch.log1p(u * torch.expm1(self.kappa * span)) / self.kappa
        return sde.t_of_log_snr(-log_sig).to(torch.float64)

    def __repr__(self):
        return f"PowerGrid(kappa={self.kappa:g})"


class ShiftedGrid(TimeGrid):
    """Uniform in an unshifted time u, then shifted by a constant log-SNR offset: t_i = t(lambda(u_i) - log(shift)),
    u_i uniform between the unshifted ends, so the grid still runs from t_max to t_min. On rectified flow
    (lambda = log((1 - t) / t)) it is the timestep shift of SD3 and Flux (Esser et al. 2024), t = shift u / (1 +
    (shift - 1) u); shift > 1 spends more steps at high noise."""

    name = "shifted"

    def __init__(self, shift: float = 3.0):
        if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
            raise ValueError(f"shift must be a positive number; got {shift!r}")
        self.shift = float(shift)

    def times(self, sde, u, t_min, t_max):
        sde = _linear(sde, self.name)
        offset = math.log(self.shift)
        ends = torch.tensor([t_max, t_min], dtype=torch.float64)
        u_max, u_min = sde.t_of_log_snr(sde.log_snr(ends) + offset).to(torch.float64)
        unshifted = u_max + u * (u_min - u_max)
        return sde.t_of_log_snr(sde.log_snr(unshifted) - offset).to(torch.float64)

    def __repr__(self):
        return f"ShiftedGrid(shift={self.shift})"


class PiecewiseGrid(TimeGrid):
    """A grid chosen by the step count: `pieces` are (first step count, grid) in increasing order, and a solve of N
    steps uses the grid of the last piece whose first step count is <= N (the first piece below its own start).
    This is how a per-budget rule from `benchmarks/default_grids.py` is written. A piece defined through the
    log-SNR (log_snr, edm, shifted) needs a `LinearSDE`: on any other SDE the SDE's own `default_grid` is used."""

    name = "piecewise"

    def __init__(self, pieces: Sequence[tuple[int, str | TimeGrid]]):
        if not pieces or any(a >= b for (a, _), (b, _) in itertools.pairwise(pieces)):
            raise ValueError(f"pieces must be (first step count, grid) pairs in increasing order; got {pieces!r}")
        self.pieces = [(int(first), get_grid(grid)) for first, grid in pieces]

    def grid_for(self, sde: SDE, steps: int) -> TimeGrid:
        """The grid a solve of `steps` steps on `sde` uses."""
        if not isinstance(sde, LinearSDE):
            return get_grid(sde.default_grid)
        chosen = self.pieces[0][1]
        for first, grid in self.pieces:
            if steps >= first:
                chosen = grid
        return chosen

    def times(self, sde, u, t_min, t_max):
        return self.grid_for(sde, len(u) - 1).times(sde, u, t_min, t_max)

    def __repr__(self):
        return f"PiecewiseGrid({[(first, grid) for first, grid in self.pieces]!r})"


class GivenGrid(TimeGrid):
    """A user's own decreasing times; `steps`, `t_min` and `t_max` are read from them. Given as well, each must agree
    with the times (steps = len(times) - 1, t_min = times[-1], t_max = times[0]), never silently overridden."""

    name = "given"

    def __init__(self, times: Sequence[float] | torch.Tensor):
        try:
            self.values = torch.as_tensor(times, dtype=torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError):
            raise ArgumentTypeError(f"grid must be a grid name, a TimeGrid or a sequence of times; got {type(times).__name__} {times!r}") from None
        if not torch.isfinite(self.values).all():
            raise ValueError("a given time grid holds NaN or inf; every time must be finite")
        if len(self.values) < 2 or not (self.values[1:] < self.values[:-1]).all():
            raise ValueError("a given time grid needs at least two strictly decreasing times")

    def __call__(self, sde, steps=None, t_min=None, t_max=None):
        lo, hi = self.values[-1].item(), self.values[0].item()
        given = {"steps": (steps, len(self.values) - 1), "t_min": (t_min, lo), "t_max": (t_max, hi)}
        clash = [f"{k}={v!r} (the times give {mine:g})" for k, (v, mine) in given.items()
                 if v is not None and not (v == mine or (k != "steps" and math.isclose(float(v), mine, rel_tol=1e-9, abs_tol=1e-12)))]
        if clash:
            raise ValueError(f"a given grid of times fixes steps, t_min and t_max, but {', '.join(clash)} disagree: "
                             "leave them out, or change the times")
        if lo < 0 or hi > sde.T * (1 + 1e-12):
            raise ValueError(f"given times must lie in [0, T] = [0, {sde.T:g}]; got [{lo:g}, {hi:g}]")
        return self.values.clone()


GRIDS: dict[str, type[TimeGrid]] = {g.name: g for g in (UniformGrid, QuadraticGrid, LogSNRGrid, EDMGrid, PowerGrid, ShiftedGrid)}


def get_grid(grid: str | TimeGrid | Sequence[float] | torch.Tensor, **options) -> TimeGrid:
    """A grid from its name (uniform, quadratic, log_snr, edm, power, shifted), an instance, or explicit times."""
    if isinstance(grid, TimeGrid):
        return grid
    if isinstance(grid, str):
        return build("time grid", GRIDS, grid, options)
    return GivenGrid(grid)
