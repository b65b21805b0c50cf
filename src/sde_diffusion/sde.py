"""Forward SDEs.

`SDE` is the interface every sampler is written against: `dx = f(x, t) dt + g(t) dW` on `t in [0, T]`.
`LinearSDE` is the affine case `f(x, t) = f(t) x`, whose marginal is Gaussian given `x_0`:

    x_t = alpha(t) x_0 + sigma(t) eps,   eps ~ N(0, I),
    alpha(t) = exp(int_0^t f(s) ds),     sigma(t)^2 = alpha(t)^2 int_0^t g(s)^2 / alpha(s)^2 ds,

(the closed-form marginal q(x_t | x_0) of the seeds, with alpha = sqrt(alpha_bar) and sigma = sqrt(1 - alpha_bar)
for the variance-preserving process). Every solver, loss and likelihood takes its coefficients from
`alpha`, `sigma` and `log_snr = log(alpha / sigma)`, so a user-defined linear SDE gets all of them for free.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from .tensors import Time, append_dims, as_time, sum_except_batch
from .validation import ArgumentTypeError

if TYPE_CHECKING:
    from .solvers.grids import TimeGrid

CoefficientFn = Callable[[torch.Tensor], torch.Tensor]


class SDE(ABC):
    """A forward SDE `dx = f(x, t) dt + g(t) dW` on `[0, T]` with a tractable prior at `T`."""

    T: float

    @abstractmethod
    def drift(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """f(x, t)."""

    @abstractmethod
    def diffusion(self, t: Time) -> torch.Tensor:
        """g(t), a scalar per time."""

    def g2(self, t: Time) -> torch.Tensor:
        """g(t)^2."""
        return self.diffusion(t) ** 2

    @abstractmethod
    def prior_sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """A draw from the prior p_T, the approximate law of x_T."""

    @abstractmethod
    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p_T(x), one value per sample."""

    default_t_min: float = 1e-3
    """Where samplers stop by default: the smallest time at which the score is trusted."""

    default_grid: str | TimeGrid = "uniform"
    """The time grid (a name or a `TimeGrid`) samplers use when neither the call nor the solver names one."""


class LinearSDE(SDE):
    """`dx = f(t) x dt + g(t) dW` with marginal `x_t = alpha(t) x_0 + sigma(t) eps`.

    Subclasses give `f`, `g2 = g^2`, `alpha` and `sigma` in closed form; `from_coefficients` and `from_beta`
    build one from coefficient functions alone, integrating alpha and sigma numerically.
    The prior is `N(0, (alpha(T)^2 + sigma(T)^2) I)`, the exact law of x_T for unit-variance data.
    """

    @abstractmethod
    def f(self, t: Time) -> torch.Tensor:
        """Drift coefficient f(t) = d log alpha / dt."""

    @abstractmethod
    def g2(self, t: Time) -> torch.Tensor:
        """Squared diffusion g(t)^2 = d sigma^2 / dt - 2 f(t) sigma^2."""

    @abstractmethod
    def alpha(self, t: Time) -> torch.Tensor:
        """Signal scale alpha(t) = exp(int_0^t f)."""

    @abstractmethod
    def sigma(self, t: Time) -> torch.Tensor:
        """Noise scale sigma(t) of the marginal."""

    def drift(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        return append_dims(self.f(as_time(t, x)), x.ndim) * x

    def diffusion(self, t: Time) -> torch.Tensor:
        return self.g2(t).sqrt()

    def log_snr(self, t: Time) -> torch.Tensor:
        """lambda(t) = log(alpha(t) / sigma(t)), strictly decreasing in t."""
        return self.alpha(t).log() - self.sigma(t).log()

    def t_of_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        """The inverse of `log_snr`; by bisection here, in closed form where a subclass knows it."""
        lam = torch.as_tensor(log_snr)
        lo = torch.zeros_like(lam, dtype=torch.float64)
        hi = torch.full_like(lo, self.T)
        target = lam.to(torch.float64)
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > target  # log_snr decreases: the answer lies later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(lam.dtype if lam.is_floating_point() else torch.float64)

    def marginal(self, x0: torch.Tensor, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of q(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I), each broadcastable to x0."""
        t = as_time(t, x0)
        return append_dims(self.alpha(t), x0.ndim) * x0, append_dims(self.sigma(t), x0.ndim)

    def transition(self, s: Time, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, v) with q(x_t | x_s) = N(a x_s, v I) for s <= t:  a = alpha(t) / alpha(s),  v = sigma(t)^2 - a^2 sigma(s)^2.

        For the DDPM discretisation these are sqrt(alpha_t) and beta_t of the seeds.
        """
        a = self.alpha(t) / self.alpha(s)
        return a, self.sigma(t) ** 2 - a**2 * self.sigma(s) ** 2

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: Time, s: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_s | x_t, x_0) for s < t, the seeds' product of two Gaussians in general form:

            mean = (a sigma_s^2 / sigma_t^2) x_t + (alpha_s v / sigma_t^2) x_0,   var = v sigma_s^2 / sigma_t^2,

        with (a, v) the transition from s to t (DDPM: a = sqrt(alpha_t), v = beta_t, var = beta~_t).
        """
        t, s = as_time(t, x_t), as_time(s, x_t)
        a, v = self.transition(s, t)
        sigma_s2, sigma_t2 = self.sigma(s) ** 2, self.sigma(t) ** 2
        coef_xt = append_dims(a * sigma_s2 / sigma_t2, x_t.ndim)
        coef_x0 = append_dims(self.alpha(s) * v / sigma_t2, x_t.ndim)
        return coef_xt * x_t + coef_x0 * x0, append_dims(v * sigma_s2 / sigma_t2, x_t.ndim)

    def prior_std(self) -> float:
        T = torch.tensor(self.T, dtype=torch.float64)
        return float((self.alpha(T) ** 2 + self.sigma(T) ** 2).sqrt())

    def prior_sample(self, shape, generator=None, *, dtype=torch.float32, device=None):
        if device is None and generator is not None:
            device = generator.device
        noise = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        return self.prior_std() * noise

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        std = self.prior_std()
        n = x[0].numel()
        return -0.5 * sum_except_batch(x**2) / std**2 - n * (math.log(std) + 0.5 * math.log(2 * math.pi))

    @staticmethod
    def from_coefficients(f: CoefficientFn, g: CoefficientFn, T: float = 1.0, **options) -> TabulatedLinearSDE:
        """A linear SDE `dx = f(t) x dt + g(t) dW` from its coefficient functions (tensor in, tensor out)."""
        _callable("g", g)
        return TabulatedLinearSDE(f, lambda t: g(t) ** 2, T, **options)

    @staticmethod
    def from_beta(beta: CoefficientFn, T: float = 1.0, **options) -> TabulatedLinearSDE:
        """A variance-preserving SDE `dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW` from `beta` alone."""
        _callable("beta", beta)
        return TabulatedLinearSDE(lambda t: -0.5 * beta(t), beta, T, **options)

    @staticmethod
    def from_alpha_sigma(alpha: CoefficientFn, sigma: CoefficientFn, T: float = 1.0, **options) -> LinearSDE:
        """A linear SDE from its marginal coefficients, f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2
        (by autograd); see `schedules.MarginalLinearSDE`."""
        from .schedules import MarginalLinearSDE

        return MarginalLinearSDE(alpha, sigma, T, **options)

    @staticmethod
    def from_alphas_cumprod(alphas_cumprod) -> LinearSDE:
        """A discrete DDPM table (diffusers' `alphas_cumprod`) as a continuous SDE, entry i at t = (i + 1) / N, with
        the network's timestep `sde.timestep(t)`; see `schedules.DiscreteScheduleSDE`."""
        from .schedules import DiscreteScheduleSDE

        return DiscreteScheduleSDE(alphas_cumprod)


def _callable(name: str, fn) -> None:
    if not callable(fn):
        raise ArgumentTypeError(f"the coefficient {name} must be a function of t (a float64 tensor of times in, one value "
                        f"per time out); got {type(fn).__name__} {fn!r}")


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return float(value)


class VPSDE(LinearSDE):
    """Variance-preserving SDE (Song et al. 2021), the continuous DDPM: `dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW`.

    beta(t) = beta_min + t (beta_max - beta_min),  B(t) = int_0^t beta,
    alpha(t) = exp(-B / 2),  sigma(t) = sqrt(1 - exp(-B)).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        if not (isinstance(beta_min, (int, float)) and not isinstance(beta_min, bool) and math.isfinite(beta_min) and beta_min >= 0):
            raise ValueError(f"beta_min must be >= 0; got {beta_min!r}")
        _positive("beta_max", beta_max)
        if beta_max < beta_min:
            raise ValueError(f"the schedule must not decrease: beta_max ({beta_max}) < beta_min ({beta_min})")
        self.beta_min, self.beta_max, self.T = float(beta_min), float(beta_max), _positive("T", T)

    def beta(self, t: Time) -> torch.Tensor:
        return self.beta_min + as_time(t) * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: Time) -> torch.Tensor:
        t = as_time(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def f(self, t):
        return -0.5 * self.beta(t)

    def g2(self, t):
        return self.beta(t)

    def alpha(self, t):
        return torch.exp(-0.5 * self.integrated_beta(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-self.integrated_beta(t)))

    def log_snr(self, t):
        return -0.5 * torch.log(torch.expm1(self.integrated_beta(t)))

    def _t_of_integrated_beta(self, B: torch.Tensor) -> torch.Tensor:
        # Root of beta_min t + (beta_max - beta_min) t^2 / 2 = B, in the cancellation-free form.
        delta = self.beta_max - self.beta_min
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * delta * B))

    def t_of_log_snr(self, log_snr):
        return self._t_of_integrated_beta(torch.nn.functional.softplus(-2 * torch.as_tensor(log_snr)))

    def __repr__(self):
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T})"


class SubVPSDE(VPSDE):
    """Sub-VP SDE (Song et al. 2021): VP drift, `g(t)^2 = beta(t) (1 - exp(-2 B(t)))`.

    alpha(t) = exp(-B / 2),  sigma(t) = 1 - exp(-B).
    """

    def g2(self, t):
        return self.beta(t) * -torch.expm1(-2 * self.integrated_beta(t))

    def sigma(self, t):
        return -torch.expm1(-self.integrated_beta(t))

    def log_snr(self, t):
        B = self.integrated_beta(t)
        return -0.5 * B - torch.log(-torch.expm1(-B))

    def t_of_log_snr(self, log_snr):
        # e^lambda = u / (1 - u^2) with u = exp(-B / 2): the positive root of e^lambda u^2 + u - e^lambda = 0,
        # -log u = log(z + sqrt(z^2 + 1)) = asinh(z) with z = e^-lambda / 2, free of the cancellation near u = 1.
        return self._t_of_integrated_beta(2 * torch.asinh(0.5 * torch.exp(-torch.as_tensor(log_snr))))

    def __repr__(self):
        return f"SubVPSDE(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T})"


class VESDE(LinearSDE):
    """Variance-exploding SDE (Song et al. 2021, NCSN): `dx = sqrt(d sigma^2 / dt) dW`.

    sigma(t) = sigma_min (sigma_max / sigma_min)^t,  alpha = 1,  g(t)^2 = 2 sigma(t)^2 log(sigma_max / sigma_min).
    As in the reference implementation, sigma(0) = sigma_min: the law at t = 0 is the data smoothed by sigma_min.
    """

    default_t_min = 1e-5

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0):
        _positive("sigma_min", sigma_min)
        _positive("sigma_max", sigma_max)
        if sigma_max <= sigma_min:
            raise ValueError(f"the schedule must increase: sigma_max ({sigma_max}) <= sigma_min ({sigma_min})")
        self.sigma_min, self.sigma_max, self.T = float(sigma_min), float(sigma_max), _positive("T", T)
        self._log_ratio = math.log(sigma_max / sigma_min) / self.T

    def f(self, t):
        return torch.zeros_like(as_time(t))

    def g2(self, t):
        return 2 * self.sigma(t) ** 2 * self._log_ratio

    def alpha(self, t):
        return torch.ones_like(as_time(t))

    def sigma(self, t):
        return self.sigma_min * torch.exp(as_time(t) * self._log_ratio)

    def log_snr(self, t):
        return -math.log(self.sigma_min) - as_time(t) * self._log_ratio

    def t_of_log_snr(self, log_snr):
        return (-torch.as_tensor(log_snr) - math.log(self.sigma_min)) / self._log_ratio

    def __repr__(self):
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, T={self.T})"


class OUSDE(LinearSDE):
    """The Ornstein-Uhlenbeck process of the seeds, `dx = -rate x dt + sqrt(2 rate) dW` (rate 1/2: `dx = -x/2 dt + dW`).

    N(0, I) is invariant; alpha(t) = exp(-rate t), sigma(t) = sqrt(1 - exp(-2 rate t)).
    """

    default_grid = "log_snr"  # a uniform grid over T = 10 jumps from sigma = 0.1 to 0.03 in its last step

    def __init__(self, rate: float = 0.5, T: float = 10.0):
        self.rate, self.T = _positive("rate", rate), _positive("T", T)

    def f(self, t):
        return torch.full_like(as_time(t), -self.rate)

    def g2(self, t):
        return torch.full_like(as_time(t), 2 * self.rate)

    def alpha(self, t):
        return torch.exp(-self.rate * as_time(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-2 * self.rate * as_time(t)))

    def log_snr(self, t):
        return -0.5 * torch.log(torch.expm1(2 * self.rate * as_time(t)))

    def t_of_log_snr(self, log_snr):
        return torch.nn.functional.softplus(-2 * torch.as_tensor(log_snr)) / (2 * self.rate)

    def __repr__(self):
        return f"OUSDE(rate={self.rate}, T={self.T})"


class CosineVPSDE(LinearSDE):
    """VP SDE with the cosine schedule of Nichol & Dhariwal (2021).

    alpha(t)^2 = cos^2(phi(t)) / cos^2(phi(0)),  phi(t) = (t + s) / (1 + s) * pi / 2,  sigma^2 = 1 - alpha^2,
    f(t) = d log alpha / dt = -tan(phi(t)) (pi / 2) / (1 + s),  g^2 = -2 f.
    sigma is computed as sqrt(sin(phi - phi_0) sin(phi + phi_0)) / cos(phi_0) (cos^2 a - cos^2 b = sin(b - a) sin(b + a)),
    which keeps its relative accuracy at small t where 1 - alpha^2 cancels; the log-SNR is its closed form and
    its inverse a few float64 Newton steps on log(sin(phi - phi_0) sin(phi + phi_0)) = log(cos^2(phi_0) sigma^2).
    T stops short of 1, where alpha vanishes and the drift blows up (DPM-Solver uses T = 0.9946).
    """

    def __init__(self, s: float = 0.008, T: float = 0.9946):
        self.s = _positive("s", s)
        if not 0 < T < 1:
            raise ValueError(f"the cosine schedule needs 0 < T < 1 (alpha(1) = 0); got T={T!r}")
        self.T = float(T)
        self._phi_scale = 0.5 * math.pi / (1 + self.s)
        self._log_cos_phi0 = math.log(math.cos(self.s * self._phi_scale))

    def _phi(self, t):
        return (as_time(t) + self.s) * self._phi_scale

    def f(self, t):
        return -torch.tan(self._phi(t)) * self._phi_scale

    def g2(self, t):
        return -2 * self.f(t)

    def alpha(self, t):
        return torch.exp(torch.log(torch.cos(self._phi(t))) - self._log_cos_phi0)

    def _log_sin_product(self, t):
        """log(sin(phi - phi_0) sin(phi + phi_0)) = log(cos^2(phi_0) sigma^2)."""
        t = as_time(t)
        phi0 = self.s * self._phi_scale
        return torch.log(torch.sin(t * self._phi_scale)) + torch.log(torch.sin(self._phi(t) + phi0))

    def sigma(self, t):
        return torch.exp(0.5 * self._log_sin_product(t) - self._log_cos_phi0)

    def log_snr(self, t):
        return torch.log(torch.cos(self._phi(t))) - 0.5 * self._log_sin_product(t)

    def t_of_log_snr(self, log_snr):
        lam = torch.as_tensor(log_snr)
        lam64 = lam.to(torch.float64)
        alpha = torch.sigmoid(2 * lam64).sqrt()
        target = torch.nn.functional.logsigmoid(-2 * lam64) + 2 * self._log_cos_phi0  # log(cos^2 phi_0 sigma^2)
        phi0 = self.s * self._phi_scale
        t = torch.arccos(alpha * math.exp(self._log_cos_phi0)) / self._phi_scale - self.s  # loses digits for small t
        small = torch.exp(target) / (math.sin(2 * phi0) * self._phi_scale)  # sin(a t) sin(2 phi_0) ~ e^target there
        t = torch.where(t < 1e-4, small, t).clamp(1e-300, 1.0)
        for _ in range(4):  # Newton in log t: d/dlog t log(sin(a t) sin(phi + phi_0)) = t a (cot(a t) + cot(phi + phi_0))
            residual = self._log_sin_product(t) - target
            slope = t * self._phi_scale * (1 / torch.tan(t * self._phi_scale) + 1 / torch.tan(self._phi(t) + phi0))
            t = t * torch.exp(-residual / slope)
        return t.to(lam.dtype if lam.is_floating_point() else torch.float64)

    def __repr__(self):
        return f"CosineVPSDE(s={self.s}, T={self.T})"


class EDMSDE(LinearSDE):
    """The EDM process of Karras et al. (2022): `sigma(t) = t`, `alpha = 1`, `dx = sqrt(2 t) dW` on `[0, sigma_max]`."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        _positive("sigma_min", sigma_min)
        _positive("sigma_max", sigma_max)
        if sigma_max <= sigma_min:
            raise ValueError(f"the schedule must increase: sigma_max ({sigma_max}) <= sigma_min ({sigma_min})")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.T = self.sigma_max
        self.default_t_min = self.sigma_min
        self.default_grid = "edm"

    def f(self, t):
        return torch.zeros_like(as_time(t))

    def g2(self, t):
        return 2 * as_time(t)

    def alpha(self, t):
        return torch.ones_like(as_time(t))

    def sigma(self, t):
        return as_time(t)

    def log_snr(self, t):
        return -torch.log(as_time(t))

    def t_of_log_snr(self, log_snr):
        return torch.exp(-torch.as_tensor(log_snr))

    def __repr__(self):
        return f"EDMSDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class TabulatedLinearSDE(LinearSDE):
    """A linear SDE given by `f(t)` and `g(t)^2` alone; alpha and sigma are integrated numerically.

    log alpha(t) = int_0^t f   and   rho(t) = sigma^2 / alpha^2 = int_0^t g^2 / alpha^2
    are integrated by composite Gauss-Legendre quadrature on `intervals` equal intervals and interpolated by
    cubic Hermite polynomials with their exact derivatives (f and g^2 / alpha^2), an O(h^4) interpolant.
    """

    def __init__(self, f: CoefficientFn, g2: CoefficientFn, T: float = 1.0, intervals: int = 2048, t_min: float = 1e-3):
        _callable("f", f)
        _callable("g2", g2)
        self._f, self._g2, self.T = f, g2, _positive("T", T)
        if isinstance(intervals, bool) or not isinstance(intervals, int) or intervals < 1:
            raise ValueError(f"intervals must be a positive integer; got {intervals!r}")
        if not (0 < _positive("t_min", t_min) < self.T):
            raise ValueError(f"t_min must lie in (0, T) = (0, {self.T:g}); got {t_min!r}")
        self.default_t_min = float(t_min)
        nodes = torch.linspace(0.0, self.T, intervals + 1, dtype=torch.float64)
        f_nodes, g2_nodes = self._evaluate(f, nodes, "f"), self._evaluate(g2, nodes, "g^2")
        bad = (g2_nodes[1:] <= 0).nonzero()
        if len(bad):
            t_bad = nodes[1:][bad[0, 0]].item()
            raise ValueError(
                f"g(t)^2 must be positive on (0, T]; got g^2({t_bad:g}) = {g2_nodes[1:][bad[0, 0]].item():g}. "
                "A non-positive diffusion makes the log-SNR stop decreasing."
            )
        gl_x, gl_w = map(torch.tensor, np.polynomial.legendre.leggauss(8))
        h = self.T / intervals
        quad_t = (nodes[:-1, None] + 0.5 * h * (gl_x + 1)).reshape(-1)
        weights = (0.5 * h * gl_w).repeat(intervals)
        f_quad = self._evaluate(f, quad_t, "f")
        log_alpha = torch.cat([torch.zeros(1, dtype=torch.float64), (weights * f_quad).reshape(intervals, -1).sum(1).cumsum(0)])
        self._nodes, self._h = nodes, h
        self._log_alpha, self._dlog_alpha = log_alpha, f_nodes
        log_alpha_quad = self._hermite(quad_t, log_alpha, f_nodes)  # O(h^4), far below the 1e-6 target
        g2_quad = self._evaluate(g2, quad_t, "g^2")
        rho_incr = (weights * g2_quad * torch.exp(-2 * log_alpha_quad)).reshape(intervals, -1).sum(1)
        rho = torch.cat([torch.zeros(1, dtype=torch.float64), rho_incr.cumsum(0)])
        # float32 sampling needs alpha and sigma = alpha sqrt(rho) inside its range (|log| < 87)
        log_sigma = log_alpha[1:] + 0.5 * torch.log(rho[1:])
        worst = torch.maximum(log_alpha.abs().max(), log_sigma.abs().max())
        if not (torch.isfinite(worst) and worst < 87):
            t_bad = nodes[int(torch.argmax(torch.nan_to_num(log_alpha.abs(), nan=math.inf)))].item()
            raise ValueError(
                f"this drift f(t) and diffusion g(t) make alpha(t) = exp(int_0^t f) or sigma(t) leave the float32 range "
                f"on [0, T] (log alpha = {log_alpha[-1].item():.4g} at T, worst near t = {t_bad:g}): the forward process "
                "grows or shrinks the state by more than e^87; use a smaller |f(t)| or a shorter T"
            )
        self._rho, self._drho = rho, g2_nodes * torch.exp(-2 * log_alpha)

    @staticmethod
    def _evaluate(fn: CoefficientFn, t: torch.Tensor, name: str) -> torch.Tensor:
        try:
            out = torch.as_tensor(fn(t), dtype=torch.float64)
        except Exception as e:  # a user's function: say which one failed
            raise ValueError(f"the coefficient function {name}(t) failed on a float64 tensor of times: {e}") from e
        out = out.expand_as(t) if out.ndim == 0 else out
        if out.shape != t.shape:
            raise ValueError(f"{name}(t) must return one value per time (shape {tuple(t.shape)}); got {tuple(out.shape)}")
        if not torch.isfinite(out).all():
            raise ValueError(f"{name}(t) is not finite on [0, T]; check the schedule")
        return out

    def _hermite(self, t: torch.Tensor, y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        t64 = t.to(torch.float64).cpu()
        k = torch.clamp(torch.floor(t64 / self._h).long(), 0, len(self._nodes) - 2)
        s = (t64 - self._nodes[k]) / self._h
        h00, h10 = (1 + 2 * s) * (1 - s) ** 2, s * (1 - s) ** 2
        h01, h11 = s**2 * (3 - 2 * s), s**2 * (s - 1)
        out = h00 * y[k] + h10 * self._h * dy[k] + h01 * y[k + 1] + h11 * self._h * dy[k + 1]
        return out.to(dtype=t.dtype if t.is_floating_point() else torch.float64, device=t.device)

    def f(self, t):
        t = as_time(t)
        return self._evaluate(self._f, t.to(torch.float64).reshape(-1), "f").reshape(t.shape).to(t.dtype)

    def g2(self, t):
        t = as_time(t)
        return self._evaluate(self._g2, t.to(torch.float64).reshape(-1), "g^2").reshape(t.shape).to(t.dtype)

    def alpha(self, t):
        return torch.exp(self._hermite(as_time(t), self._log_alpha, self._dlog_alpha))

    def sigma(self, t):
        t = as_time(t)
        return self.alpha(t) * self._hermite(t, self._rho, self._drho).clamp_min(0).sqrt()

    def log_snr(self, t):
        return -0.5 * torch.log(self._hermite(as_time(t), self._rho, self._drho))

    def t_of_log_snr(self, log_snr):
        """Bracket lambda in the node table, then Newton steps on log rho = -2 lambda in u = log t inside the bracket.

        In log t the first interval, where rho(t) ~ rho'(0) t and log rho falls to -infinity, is as easy as the
        others (d log rho / d log t -> 1); the first interval starts from that linear guess."""
        lam = torch.as_tensor(log_snr)
        target = (-2 * lam).to(torch.float64).cpu()  # log rho
        log_rho_nodes = torch.log(self._rho[1:])  # increasing; rho(0) = 0
        k = torch.searchsorted(log_rho_nodes, target).clamp(0, len(log_rho_nodes) - 1)  # root in (t_k, t_k+1]
        lo, hi = self._nodes[k].clamp_min(1e-300).log(), self._nodes[k + 1].log()
        linear = (target.exp() / self._drho[0]).clamp(1e-300, self._h).log()
        u = torch.where(k == 0, linear, 0.5 * (lo + hi))
        for _ in range(10):
            t = u.exp()
            rho = self._hermite(t, self._rho, self._drho)
            slope = t * self._hermite_slope(t, self._rho, self._drho) / rho  # d log rho / d log t
            u = torch.nan_to_num(u - (rho.log() - target) / slope, nan=float(lo.min())).clamp(lo, hi)
        return u.exp().to(dtype=lam.dtype if lam.is_floating_point() else torch.float64, device=lam.device)

    def _hermite_slope(self, t64: torch.Tensor, y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        k = torch.clamp(torch.floor(t64 / self._h).long(), 0, len(self._nodes) - 2)
        s = (t64 - self._nodes[k]) / self._h
        d00, d10 = 6 * s * (s - 1), (1 - s) * (1 - 3 * s)
        d01, d11 = -6 * s * (s - 1), s * (3 * s - 2)
        return (d00 * y[k] + d01 * y[k + 1]) / self._h + d10 * dy[k] + d11 * dy[k + 1]

    def __repr__(self):
        return f"TabulatedLinearSDE(T={self.T})"
