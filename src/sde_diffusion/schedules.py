"""Schedules brought from elsewhere, as continuous linear SDEs: marginal coefficients, discrete DDPM tables, and
rectified flow. Each is a `LinearSDE`, so every solver, loss and likelihood runs on it unchanged.

- `MarginalLinearSDE` (`LinearSDE.from_alpha_sigma`): any schedule given by alpha(t) and sigma(t). The SDE's
  coefficients follow from x_t = alpha x_0 + sigma eps (the seeds' marginal, differentiated):

      f = d log alpha / dt,     g^2 = d sigma^2 / dt - 2 f sigma^2,

  both by autograd through the given tensor functions (exact derivatives of what was given).
- `DiscreteScheduleSDE` (`LinearSDE.from_alphas_cumprod`): a table abar_0 > ... > abar_{N-1} (diffusers'
  `alphas_cumprod`, the seeds' alpha_bar) as a variance-preserving SDE. Entry i sits at t_i = (i + 1) / N (the
  discrete-time convention of DPM-Solver, Lu et al. 2022, and of its diffusers port), T = 1, and a network trained on
  integer timesteps is called with `timestep(t) = N t - 1`. The log-SNR lambda_i = log(abar_i / (1 - abar_i)) / 2 is
  interpolated by a monotone C1 cubic (Fritsch-Carlson, as scipy's PCHIP) and extended linearly below t_0; alpha,
  sigma, f and g^2 follow from lambda alone (alpha^2 = sigmoid(2 lambda), sigma^2 = sigmoid(-2 lambda),
  f = sigma^2 lambda', g^2 = -2 sigma^2 lambda'), and the inverse is Newton on the cubic inside its node interval, to
  rounding. A zero-terminal-SNR table (last entry 0, Lin et al. 2024) has its last entry replaced by 2^-24, as
  diffusers' schedulers do, so that lambda stays finite.
- `RectifiedFlowSDE`: alpha = 1 - t, sigma = t, the interpolation of rectified flow and flow matching (Liu et al.
  2023; Lipman et al. 2023; SD3, Flux), whose probability-flow velocity is the "flow" prediction eps - x0. T stops at
  1 - 1e-3 (alpha = 0 at t = 1 makes f = d log alpha / dt infinite), and t_min is 1e-3. SD3 / Flux's `shift` is a
  constant offset of the log-SNR of the time grid (`ShiftedGrid`): the SDE stays alpha = 1 - t, sigma = t, so a
  network trained on sigma = t is called with its own t.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .sde import LinearSDE, _positive
from .tensors import Time, as_time

CoefficientFn = Callable[[torch.Tensor], torch.Tensor]

ZERO_TERMINAL_ALPHA_BAR = 2.0**-24
"""What a zero last entry of an `alphas_cumprod` table becomes (diffusers' choice for zero-terminal-SNR tables)."""


class MarginalLinearSDE(LinearSDE):
    """A linear SDE given by its marginal coefficients alpha(t), sigma(t) on [0, T] (see the module docstring)."""

    def __init__(self, alpha: CoefficientFn, sigma: CoefficientFn, T: float = 1.0, t_min: float = 1e-3, checks: int = 4097):
        self._alpha, self._sigma, self.T = alpha, sigma, _positive("T", T)
        if not 0 < t_min < self.T:
            raise ValueError(f"t_min must lie in (0, T); got {t_min!r}")
        self.default_t_min, self.default_grid = float(t_min), "log_snr"
        t = torch.linspace(0.0, self.T, checks, dtype=torch.float64)
        a, s = self._values(alpha, t, "alpha"), self._values(sigma, t[1:], "sigma")
        if not (a > 0).all():
            raise ValueError(f"alpha(t) must be positive on [0, T]; got alpha({t[(a <= 0).nonzero()[0, 0]].item():g}) <= 0")
        if not (s > 0).all():
            raise ValueError(f"sigma(t) must be positive on (0, T]; got sigma({t[1:][(s <= 0).nonzero()[0, 0]].item():g}) <= 0")
        lam = a[1:].log() - s.log()
        if not (lam[1:] < lam[:-1]).all():
            bad = t[1:][1:][(lam[1:] >= lam[:-1]).nonzero()[0, 0]].item()
            raise ValueError(f"the log-SNR log(alpha / sigma) must decrease strictly in t; it does not at t = {bad:g}")
        self._check_differentiable(t[1:-1:max(1, checks // 8)])

    def _check_differentiable(self, t: torch.Tensor) -> None:
        """autograd's derivatives against central differences: a function computed outside torch (numpy, .item(),
        .detach()) would otherwise give f = 0 or g^2 = 0 silently."""
        h = 1e-6 * self.T
        for fn, name in ((self._alpha, "alpha"), (self._sigma, "sigma")):
            value, derivative = self._with_derivative(fn, t)
            central = (self._values(fn, t + h, name) - self._values(fn, t - h, name)) / (2 * h)
            if not torch.allclose(derivative, central, rtol=1e-4, atol=1e-6 * float(value.abs().max())):
                raise ValueError(
                    f"{name}(t) must be differentiable by autograd (torch operations on t, no numpy or .detach()): its "
                    f"autograd derivative {derivative.tolist()[:3]} disagrees with differences {central.tolist()[:3]}"
                )

    @staticmethod
    def _values(fn: CoefficientFn, t: torch.Tensor, name: str) -> torch.Tensor:
        try:
            out = torch.as_tensor(fn(t))
        except Exception as e:  # a user's function: say which one failed
            raise ValueError(f"{name}(t) failed on a float64 tensor of times: {e}") from e
        out = out.expand_as(t) if out.ndim == 0 else out
        if out.shape != t.shape or not torch.isfinite(out).all():
            raise ValueError(f"{name}(t) must return one finite value per time (shape {tuple(t.shape)})")
        return out.to(torch.float64)

    def _with_derivative(self, fn: CoefficientFn, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        t = as_time(t)
        with torch.enable_grad():
            leaf = t.detach().to(torch.float64).requires_grad_(True)
            value = torch.as_tensor(fn(leaf)).expand_as(leaf)
            derivative = None
            if value.requires_grad:  # else a constant (torch.ones_like(t)): derivative 0, which __init__ has checked
                (derivative,) = torch.autograd.grad(value.sum(), leaf, allow_unused=True)
        derivative = torch.zeros_like(leaf) if derivative is None else derivative
        return value.detach().to(t.dtype), derivative.to(t.dtype)

    def alpha(self, t):
        t = as_time(t)
        return torch.as_tensor(self._alpha(t)).expand_as(t)

    def sigma(self, t):
        t = as_time(t)
        return torch.as_tensor(self._sigma(t)).expand_as(t)

    def f(self, t):
        alpha, d_alpha = self._with_derivative(self._alpha, t)
        return d_alpha / alpha

    def g2(self, t):
        sigma, d_sigma = self._with_derivative(self._sigma, t)
        return 2 * sigma * d_sigma - 2 * self.f(t) * sigma**2

    def __repr__(self):
        return f"MarginalLinearSDE(T={self.T})"


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The node derivatives of the monotone cubic interpolant (Fritsch & Carlson 1980, as scipy's PCHIP)."""
    from scipy.interpolate import PchipInterpolator

    return PchipInterpolator(x, y).derivative()(x)


class DiscreteScheduleSDE(LinearSDE):
    """A discrete DDPM table `alphas_cumprod` as a continuous variance-preserving SDE (see the module docstring).

    `timestep(t)` is the network's own timestep for continuous t (N t - 1: entry i at t = (i + 1) / N), and
    `time_of_timestep(i)` its inverse."""

    def __init__(self, alphas_cumprod: Sequence[float] | torch.Tensor | np.ndarray):
        table = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64) if not isinstance(alphas_cumprod, torch.Tensor)
                                else alphas_cumprod.detach().cpu().to(torch.float64))
        if table.ndim != 1:
            raise ValueError(f"alphas_cumprod must be a 1-D table, one entry per timestep; got shape {tuple(table.shape)}")
        if len(table) < 2:
            raise ValueError(f"alphas_cumprod needs at least 2 entries; got {len(table)}")
        if not torch.isfinite(table).all():
            raise ValueError("alphas_cumprod holds NaN or inf")
        if table[-1] == 0:
            table = table.clone()
            table[-1] = ZERO_TERMINAL_ALPHA_BAR
        if not ((table > 0) & (table <= 1)).all():
            raise ValueError(f"alphas_cumprod must lie in (0, 1] (a zero is allowed as the last entry only); "
                             f"got values in [{table.min().item():g}, {table.max().item():g}]")
        if not (table[1:] < table[:-1]).all():
            i = int((table[1:] >= table[:-1]).nonzero()[0, 0])
            raise ValueError(f"alphas_cumprod must decrease strictly; entry {i + 1} ({table[i + 1].item():g}) is not "
                             f"below entry {i} ({table[i].item():g})")
        if table[0] == 1:
            raise ValueError("alphas_cumprod[0] = 1 means no noise at the first timestep, where the log-SNR is infinite")
        self.alphas_cumprod, self.N = table, len(table)
        self.T, self.default_t_min, self.default_grid = 1.0, 1.0 / self.N, "log_snr"
        self._t = (torch.arange(self.N, dtype=torch.float64) + 1) / self.N
        self._lam = 0.5 * (table.log() - torch.log1p(-table))
        self._slope = torch.as_tensor(_pchip_slopes(self._t.numpy(), self._lam.numpy()))

    # -- the network's timesteps ----------------------------------------------------------------------------------
    def timestep(self, t: Time) -> torch.Tensor:
        """The network's timestep at continuous t: N t - 1 (an integer on the table's times)."""
        return self.N * as_time(t) - 1

    def time_of_timestep(self, timestep: Time) -> torch.Tensor:
        """Continuous t of a network timestep: (timestep + 1) / N."""
        return (as_time(timestep) + 1) / self.N

    # -- the log-SNR interpolant ----------------------------------------------------------------------------------
    def _segment(self, t64: torch.Tensor):
        k = torch.clamp(torch.searchsorted(self._t, t64.contiguous(), right=True) - 1, 0, self.N - 2)
        h = self._t[k + 1] - self._t[k]
        return k, h, (t64 - self._t[k]) / h

    def _lam_and_slope(self, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        t = as_time(t)
        t64 = t.to(torch.float64).cpu()
        k, h, s = self._segment(t64)
        y0, y1, d0, d1 = self._lam[k], self._lam[k + 1], self._slope[k], self._slope[k + 1]
        lam = (1 + 2 * s) * (1 - s) ** 2 * y0 + s * (1 - s) ** 2 * h * d0 + s**2 * (3 - 2 * s) * y1 + s**2 * (s - 1) * h * d1
        slope = (6 * s * (s - 1) * (y0 - y1)) / h + (1 - s) * (1 - 3 * s) * d0 + s * (3 * s - 2) * d1
        below = t64 < self._t[0]  # linear below the first entry
        lam = torch.where(below, self._lam[0] + (t64 - self._t[0]) * self._slope[0], lam)
        slope = torch.where(below, self._slope[0].expand_as(slope), slope)
        dtype = t.dtype if t.is_floating_point() else torch.float64
        return lam.to(dtype=dtype, device=t.device), slope.to(dtype=dtype, device=t.device)

    def log_snr(self, t):
        return self._lam_and_slope(t)[0]

    def t_of_log_snr(self, log_snr):
        """Newton on the cubic of the node interval that holds lambda (bisection where Newton would leave it)."""
        lam = torch.as_tensor(log_snr)
        target = lam.to(torch.float64).cpu()
        k = torch.clamp(torch.searchsorted(-self._lam, -target.contiguous()) - 1, -1, self.N - 2)
        first = k < 0  # above lambda_0: the linear extension
        k = k.clamp(min=0)
        lo, hi = self._t[k], self._t[k + 1]
        t = torch.where(first, self._t[0] + (target - self._lam[0]) / self._slope[0], 0.5 * (lo + hi))
        lo = torch.where(first, torch.zeros_like(lo), lo)
        hi = torch.where(first, self._t[0].expand_as(hi), hi)
        for _ in range(50):
            value, slope = self._lam_and_slope(t)
            residual = value - target
            lo, hi = torch.where(residual > 0, t, lo), torch.where(residual > 0, hi, t)  # lambda decreases in t
            newton = t - residual / slope
            t = torch.where((newton > lo) & (newton < hi), newton, 0.5 * (lo + hi))
        return t.to(dtype=lam.dtype if lam.is_floating_point() else torch.float64, device=lam.device)

    # -- the coefficients -----------------------------------------------------------------------------------------
    def alpha(self, t):
        return torch.sigmoid(2 * self.log_snr(t)).sqrt()

    def sigma(self, t):
        return torch.sigmoid(-2 * self.log_snr(t)).sqrt()

    def f(self, t):
        lam, slope = self._lam_and_slope(t)
        return torch.sigmoid(-2 * lam) * slope

    def g2(self, t):
        lam, slope = self._lam_and_slope(t)
        return -2 * torch.sigmoid(-2 * lam) * slope

    def __repr__(self):
        return f"DiscreteScheduleSDE(N={self.N})"


class RectifiedFlowSDE(LinearSDE):
    """Rectified flow / flow matching: x_t = (1 - t) x_0 + t eps on [0, T], T = 1 - 1e-3 (see the module docstring).

    f = -1 / (1 - t), g^2 = 2 t / (1 - t), lambda = log((1 - t) / t), t(lambda) = sigmoid(-lambda). `shift` (SD3 uses 3,
    Flux a resolution-dependent one) sets the default grid: `ShiftedGrid(shift)`, uniform in t after a log-SNR offset
    of -log(shift), i.e. t -> shift t / (1 + (shift - 1) t)."""

    def __init__(self, shift: float = 1.0, T: float = 1 - 1e-3, t_min: float = 1e-3):
        self.shift = _positive("shift", shift)
        if not 0 < t_min < T < 1:
            raise ValueError(f"need 0 < t_min < T < 1 (alpha = 1 - t vanishes at t = 1); got t_min={t_min!r}, T={T!r}")
        self.T, self.default_t_min = float(T), float(t_min)
        from .solvers.grids import ShiftedGrid

        self.default_grid = ShiftedGrid(self.shift) if self.shift != 1 else "uniform"

    def f(self, t):
        return -1 / (1 - as_time(t))

    def g2(self, t):
        t = as_time(t)
        return 2 * t / (1 - t)

    def alpha(self, t):
        return 1 - as_time(t)

    def sigma(self, t):
        return as_time(t)

    def log_snr(self, t):
        t = as_time(t)
        return torch.log1p(-t) - torch.log(t)

    def t_of_log_snr(self, log_snr):
        return torch.sigmoid(-torch.as_tensor(log_snr))

    def __repr__(self):
        return f"RectifiedFlowSDE(shift={self.shift}, T={self.T})"
