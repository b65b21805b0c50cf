"""Stochastic predictors for the reverse SDE: Euler-Maruyama, reverse diffusion, ancestral (DDPM) sampling.

Each takes its coefficients from the SDE (drift, g, or the exact Gaussian transition of a LinearSDE), never from
a schedule table: Euler-Maruyama steps any term (any SDE), the other two the diffusion problem (any LinearSDE).
"""

from __future__ import annotations

import torch

from ..tensors import append_dims
from .base import Solver, gaussian_noise
from .problems import DiffusionProblem


class EulerMaruyama(Solver):
    """x_{n+1} = x_n + [f - g^2 score] dt + g sqrt(|dt|) z,  dt = t_{n+1} - t_n < 0 (Song et al. 2021)."""

    name = "euler_maruyama"
    order = 0.5  # strong order; weak order 1
    stochastic = True
    default_steps = 1000

    def step(self, term, x, t, t_next, state, generator):
        dt = t_next - t
        g = append_dims(term.diffusion(t), x.ndim)
        return x + term.drift(x, t) * dt + g * (-dt).sqrt() * gaussian_noise(x, generator), None, state


class ReverseDiffusion(Solver):
    """The reverse-diffusion predictor of Song et al. (2021, eq. 46), from the forward discretisation
    x_t = a x_s + sqrt(v) z between the grid times (a, v exact for a LinearSDE):

        x_s = x_t - (a - 1) x_t + v score(x_t, t) + sqrt(v) z.
    """

    name = "reverse_diffusion"
    stochastic = True
    needs = DiffusionProblem
    default_steps = 1000

    def step(self, problem, x, t, t_next, state, generator):
        a, v = problem.sde.transition(t_next, t)
        a, v = append_dims(a, x.ndim), append_dims(v, x.ndim)
        mean = (2 - a) * x + v * problem.score.score(x, t)
        return mean + v.sqrt() * gaussian_noise(x, generator), None, state


class Ancestral(Solver):
    """Ancestral (DDPM) sampling (Ho et al. 2020): draw x_s from the posterior q(x_s | x_t, x0_hat) with
    x0_hat = E[x_0 | x_t] from the model; the mean is the seeds' reverse mean from eps.

    `variance`: "posterior" (beta~_t, the default), "forward" (beta_t), or "interpolated" with weight
    `interpolation` v: exp(v log beta_t + (1 - v) log beta~_t) (Nichol & Dhariwal 2021).
    """

    name = "ancestral"
    stochastic = True
    needs = DiffusionProblem
    default_steps = 1000
    VARIANCES = ("posterior", "forward", "interpolated")

    def __init__(self, variance: str = "posterior", interpolation: float = 0.5):
        if variance not in self.VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose one of {self.VARIANCES}")
        if not 0.0 <= interpolation <= 1.0:
            raise ValueError(f"interpolation must lie in [0, 1]; got {interpolation}")
        self.variance, self.interpolation = variance, float(interpolation)

    def step(self, problem, x, t, t_next, state, generator):
        sde = problem.sde
        mean, posterior_var = sde.posterior(problem.score.x0(x, t), x, t, t_next)
        if self.variance == "posterior":
            var = posterior_var
        else:
            forward_var = append_dims(sde.transition(t_next, t)[1], x.ndim)
            w = 1.0 if self.variance == "forward" else self.interpolation
            var = torch.exp(w * forward_var.log() + (1 - w) * posterior_var.log())
        return mean + var.sqrt() * gaussian_noise(x, generator), None, state
