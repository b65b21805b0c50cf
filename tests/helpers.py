"""Shared checks for the tests: Gaussian moments with tolerances from the sample size, observed order, references."""

from __future__ import annotations

import math

import numpy as np
import torch

import sde_diffusion as sd


def assert_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, z: float = 5.0, bias: float = 0.0) -> None:
    """Sample mean and covariance of x (n, d) agree with N(mean, cov).

    After whitening by cov^(-1/2), the sample mean has std 1/sqrt(n) per coordinate and the sample covariance's
    entries have std sqrt(2/n) (diagonal) and sqrt(1/n) (off-diagonal). Each must lie within `z` standard errors,
    plus an optional deterministic `bias` budget for a discretisation error stated by the caller.
    """
    x = x.reshape(len(x), -1).to(torch.float64)
    n = len(x)
    mean, cov = mean.to(torch.float64).reshape(-1), cov.to(torch.float64)
    evals, evecs = torch.linalg.eigh(cov)
    whiten = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    w = (x - mean) @ whiten
    m = w.mean(0)
    c = torch.cov(w.T).reshape(len(mean), len(mean))
    mean_tol = z / math.sqrt(n) + bias
    assert m.abs().max() < mean_tol, f"whitened mean {m.tolist()} exceeds {mean_tol:.4f}"
    se = torch.full_like(c, math.sqrt(1 / n))
    se.diagonal().fill_(math.sqrt(2 / n))
    dev = (c - torch.eye(len(mean), dtype=c.dtype)).abs() - bias
    assert (dev < z * se).all(), f"whitened covariance off identity by {(c - torch.eye(len(mean), dtype=c.dtype)).abs().max():.4f} (tolerance {z * math.sqrt(2 / n) + bias:.4f})"


def observed_order(step_sizes, errors) -> float:
    """Least-squares slope of log(error) against log(step size)."""
    slope, _ = np.polyfit(np.log(np.asarray(step_sizes, float)), np.log(np.asarray(errors, float)), 1)
    return float(slope)


def reference_solution(sde, model, x_T: torch.Tensor, t_min: float, t_max: float | None = None) -> torch.Tensor:
    """The probability-flow ODE solved by scipy's DOP853 at rtol = atol = 1e-11 in float64, from the same x_T."""
    times = torch.tensor([sde.T if t_max is None else t_max, t_min], dtype=torch.float64)
    solver = sd.solvers.get("scipy", method="DOP853", rtol=1e-11, atol=1e-11)
    return solver.solve(model, x_T.to(torch.float64), times).x


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean().sqrt())


class TanhSDE(sd.SDE):
    """dx = -tanh(x) dt + dW on [0, 1] with a standard normal prior: not linear, for the "needs a LinearSDE" checks."""

    T = 1.0

    def drift(self, x, t):
        return -torch.tanh(x)

    def diffusion(self, t):
        return torch.ones_like(torch.as_tensor(t))

    def prior_sample(self, shape, generator=None, *, dtype=torch.float32, device=None):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def prior_log_prob(self, x):
        return torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1)
