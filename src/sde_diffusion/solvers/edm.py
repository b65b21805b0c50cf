"""EDM's samplers (Karras et al. 2022) on any linear SDE: Heun with stochastic churn, and linear multistep.

Karras et al. (2022, eq. 4 and Table 1) write the probability-flow ODE of `x = s(t) x_tilde` with noise level
`sigma(t)` in terms of a denoiser D. For a LinearSDE, `x_t / alpha(t) = x_0 + sigma_tilde eps` with

    x_tilde = x / alpha(t),      sigma_tilde = sigma(t) / alpha(t) = exp(-log_snr(t)),

so x_tilde is a variance-exploding process in its own noise level sigma_tilde, and its probability flow is

    d x_tilde / d sigma_tilde = (x_tilde - D(x_tilde; sigma_tilde)) / sigma_tilde,
    D(x_tilde; sigma_tilde) = E[x_0 | x_t = alpha(t) x_tilde] = score.x0(alpha(t) x_tilde, t),   t = t(sigma_tilde).

Both samplers below step in (x_tilde, sigma_tilde) and map back with alpha; every coefficient comes from
`alpha`, `log_snr` and `t_of_log_snr`, so VP, VE, OU, EDM and user-built SDEs all work unchanged.

The last step. EDM's grids end at sigma = 0, where D is the identity and the final Heun correction is skipped
(an Euler step to sigma = 0). An Euler step from sigma_tilde to 0 is `x_tilde - sigma_tilde d = D(x_tilde)`,
i.e. exactly Tweedie's denoising. Our grids end at t_min > 0, so every step here, the last included, is a full
step of the method; EDM's last Euler step is `sample(..., denoise=True)`, one more (counted) evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..sde import LinearSDE
from ..tensors import append_dims
from .base import GridState, Solver, gaussian_noise
from .problems import DiffusionProblem


def sigma_tilde(sde: LinearSDE, t: torch.Tensor) -> torch.Tensor:
    """sigma(t) / alpha(t) = exp(-log_snr(t)), the noise level of x / alpha."""
    return torch.exp(-sde.log_snr(t))


def denoiser(score, x_tilde: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """D(x_tilde; sigma_tilde(t)) = E[x_0 | x_t = alpha(t) x_tilde], one function evaluation."""
    alpha = append_dims(score.sde.alpha(t), x_tilde.ndim)
    return score.x0(alpha * x_tilde, t)


@dataclass
class EDMState(GridState):
    """alpha and sigma_tilde on the whole grid, computed once per solve; LMS's past derivatives, newest first."""

    alphas: torch.Tensor = field(kw_only=True)
    sigmas: torch.Tensor = field(kw_only=True)
    derivatives: list[torch.Tensor] = field(default_factory=list)


class EDMSolver(Solver):
    """Shared by both samplers: the diffusion problem, the EDM grid, alpha and sigma_tilde precomputed on it."""

    needs = DiffusionProblem
    default_grid = "edm"

    def init(self, problem, x, times):
        return EDMState(times, alphas=problem.sde.alpha(times), sigmas=sigma_tilde(problem.sde, times))


def time_of_sigma_tilde(sde: LinearSDE, sig: torch.Tensor) -> torch.Tensor:
    """t(sigma_tilde), the inverse of `sigma_tilde`, through `t_of_log_snr`."""
    return sde.t_of_log_snr(-torch.log(sig)).to(sig.dtype)


class EDMHeun(EDMSolver):
    """Karras et al. (2022), Algorithm 2: Heun's second-order method with stochastic churn, in (x_tilde, sigma_tilde).

    At grid level sigma_i (= sigma_tilde(t_i)), with gamma_i = min(S_churn / N, sqrt(2) - 1) when
    S_min <= sigma_i <= S_max and 0 otherwise (N the number of steps):

        sigma_hat = sigma_i (1 + gamma_i),   x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise eps,
        d = (x_hat - D(x_hat; sigma_hat)) / sigma_hat,           x' = x_hat + (sigma_{i+1} - sigma_hat) d,
        d' = (x' - D(x'; sigma_{i+1})) / sigma_{i+1},            x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2.

    S_churn = 0 is the deterministic Heun sampler (Algorithm 1), order 2. Two NFE per step either way; with churn
    the first is made at t(sigma_hat) from `t_of_log_snr`, and sigma_hat is capped at sigma_tilde(T) so that the
    model is never asked about times beyond T. See the module docstring for the last step (no Euler step to
    sigma = 0 here; `denoise=True` is that step).
    """

    name = "edm_heun"
    order = 2
    default_steps = 18

    def __init__(self, S_churn: float = 0.0, S_min: float = 0.0, S_max: float = math.inf, S_noise: float = 1.0):
        for key, value in dict(S_churn=S_churn, S_min=S_min, S_noise=S_noise).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{key} must be a finite number >= 0; got {value!r}")
        if not S_max >= S_min:
            raise ValueError(f"need S_max >= S_min; got S_min={S_min!r}, S_max={S_max!r}")
        self.S_churn, self.S_min, self.S_max, self.S_noise = float(S_churn), float(S_min), float(S_max), float(S_noise)

    @property
    def stochastic(self) -> bool:  # type: ignore[override]  # a read-only flag (see Solver)
        return self.S_churn > 0

    def step(self, problem, x, t, t_next, state: EDMState, generator):
        sde, score, i = problem.sde, problem.score, state.index
        alphas, sigmas = state.alphas, state.sigmas
        sig, sig_next = sigmas[i], sigmas[i + 1]
        x_tilde = x / alphas[i]
        t_hat, sig_hat = t, sig
        gamma = min(self.S_churn / state.n_steps, math.sqrt(2) - 1) if self.S_min <= float(sig) <= self.S_max else 0.0
        if gamma > 0:
            sig_max = sigma_tilde(sde, torch.as_tensor(sde.T, dtype=sig.dtype, device=sig.device))
            sig_hat = torch.minimum(sig * (1 + gamma), sig_max)
            t_hat = time_of_sigma_tilde(sde, sig_hat) if sig_hat < sig_max else torch.full_like(t, sde.T)
            x_tilde = x_tilde + (sig_hat**2 - sig**2).sqrt() * self.S_noise * gaussian_noise(x, generator)
        d = (x_tilde - denoiser(score, x_tilde, t_hat)) / sig_hat
        x_euler = x_tilde + (sig_next - sig_hat) * d
        d_next = (x_euler - denoiser(score, x_euler, t_next)) / sig_next
        x_tilde = x_tilde + (sig_next - sig_hat) * 0.5 * (d + d_next)
        state.index += 1
        return alphas[i + 1] * x_tilde, None, state


def adams_bashforth_coefficients(nodes: list[float], target: float) -> list[float]:
    """Weights c_j with  int_{nodes[0]}^{target} p(s) ds = sum_j c_j p(nodes[j])  for every polynomial p of degree
    < k = len(nodes): the integrals of the Lagrange basis polynomials on the (non-uniform) nodes, exactly.

    In u = (s - nodes[0]) / h, h = target - nodes[0], they solve the moment equations
    sum_j c_j u_j^m = h int_0^1 u^m du = h / (m + 1), m = 0..k-1 (a k x k Vandermonde system, k <= 4, whose
    nodes u_j = 0, -1, -2, ... for equal steps give the classical Adams-Bashforth weights).
    """
    h = target - nodes[0]
    u = np.array([(s - nodes[0]) / h for s in nodes])
    powers = np.arange(len(nodes))
    vandermonde = u[None, :] ** powers[:, None]
    return list(h * np.linalg.solve(vandermonde, 1.0 / (powers + 1)))


class LMS(EDMSolver):
    """Linear multistep (Adams-Bashforth) on the probability flow in (x_tilde, sigma_tilde), as k-diffusion's
    `sample_lms`, with coefficients exact for non-uniform steps:

        d_i = (x_i - D(x_i; sigma_i)) / sigma_i,     x_{i+1} = x_i + sum_{j<k} c_j d_{i-j},
        c_j = int_{sigma_i}^{sigma_{i+1}} L_j(s) ds,  L_j the Lagrange basis on sigma_i, ..., sigma_{i-k+1}.

    `order` k in 1..4 (1 is Euler); the first steps use orders 1, 2, ... until k past values exist. Those start-up
    steps are of lower order, but they are taken at the highest noise levels, where d is nearly constant (the flow
    in sigma_tilde is almost a straight line), so their error constants are tiny and the measured slopes reach k
    (tests/test_edm.py). One function evaluation per step.
    """

    name = "lms"
    order: int
    default_steps = 50

    def __init__(self, order: int = 4):
        if order not in (1, 2, 3, 4):
            raise ValueError(f"order must be 1, 2, 3 or 4; got {order!r}")
        self.order = order

    def step(self, problem, x, t, t_next, state: EDMState, generator):
        i, alphas, sigmas = state.index, state.alphas, state.sigmas
        x_tilde = x / alphas[i]
        d = (x_tilde - denoiser(problem.score, x_tilde, t)) / sigmas[i]
        derivatives = state.derivatives
        derivatives.insert(0, d)
        del derivatives[self.order :]
        nodes = sigmas[i + 1 - len(derivatives) : i + 1].flip(0).tolist()  # sigma_i, sigma_{i-1}, ...
        weights = adams_bashforth_coefficients(nodes, float(sigmas[i + 1]))
        x_tilde = x_tilde + sum(c * d_j for c, d_j in zip(weights, derivatives, strict=True))
        state.index += 1
        return alphas[i + 1] * x_tilde, None, state
