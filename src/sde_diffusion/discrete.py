"""The discrete-time view of the seeds: DDPM's forward chain on a beta table and its true posterior.

    q(x_i | x_{i-1}) = N(sqrt(alpha_i) x_{i-1}, beta_i I),  alpha_i = 1 - beta_i,  alpha_bar_i = prod_{j<=i} alpha_j,
    q(x_i | x_0) = N(sqrt(alpha_bar_i) x_0, (1 - alpha_bar_i) I),
    q(x_{i-1} | x_i, x_0) = N(mu~_i, beta~_i I),
        mu~_i = sqrt(alpha_bar_{i-1}) beta_i / (1 - alpha_bar_i) x_0 + sqrt(alpha_i) (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i) x_i,
        beta~_i = (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i) beta_i,
    mu_theta(x_i) = (x_i - beta_i / sqrt(1 - alpha_bar_i) eps_theta) / sqrt(alpha_i),
    score(x_i) = -eps_theta / sqrt(1 - alpha_bar_i).

Indices run 0..N-1 with alpha_bar_{-1} = 1, as in the seeds' reference helpers. The continuous-time solvers use the
general form of the same posterior, `LinearSDE.posterior`; `from_sde` gives the table of any linear SDE.
"""

from __future__ import annotations

import torch

from .sde import LinearSDE
from .tensors import append_dims

VARIANCES = ("posterior", "forward", "interpolated")


class DiscreteSchedule:
    """DDPM's forward chain for a table of betas in (0, 1)."""

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) < 1:
            raise ValueError(f"betas must be a non-empty 1-D table; got shape {tuple(betas.shape)}")
        if not ((betas > 0) & (betas < 1)).all():
            raise ValueError(f"every beta must lie in (0, 1); got min {betas.min().item():g}, max {betas.max().item():g}")
        self.betas = betas
        self.alphas = 1 - betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])

    @classmethod
    def linear(cls, n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteSchedule:
        """Ho et al. (2020): betas linear from 1e-4 to 0.02 over 1000 steps."""
        return cls(torch.linspace(beta_start, beta_end, n, dtype=torch.float64))

    @classmethod
    def from_sde(cls, sde: LinearSDE, n: int = 1000) -> DiscreteSchedule:
        """The chain at t_i = (i + 1) T / n with alpha_bar_i = sigmoid(2 log_snr(t_i)): for a VP SDE, alpha(t_i)^2;
        for any other linear SDE, the VP process with the same log-SNR (x / sqrt(alpha^2 + sigma^2))."""
        times = torch.arange(1, n + 1, dtype=torch.float64) * sde.T / n
        alpha_bars = torch.sigmoid(2 * sde.log_snr(times))
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
        return cls(1 - alpha_bars / prev)

    def __len__(self) -> int:
        return len(self.betas)

    def _at(self, table: torch.Tensor, i, like: torch.Tensor) -> torch.Tensor:
        i = torch.as_tensor(i, device=table.device)
        if ((i < 0) | (i >= len(self))).any():
            raise IndexError(f"step index must lie in [0, {len(self) - 1}]; got {i.tolist()}")
        return append_dims(table[i].to(dtype=like.dtype, device=like.device), like.ndim)

    def q_sample(self, x0: torch.Tensor, i, eps: torch.Tensor) -> torch.Tensor:
        """x_i = sqrt(alpha_bar_i) x_0 + sqrt(1 - alpha_bar_i) eps."""
        ab = self._at(self.alpha_bars, i, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, i) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean mu~_i(x_i, x_0) and variance beta~_i of q(x_{i-1} | x_i, x_0)."""
        beta, alpha = self._at(self.betas, i, x_t), self._at(self.alphas, i, x_t)
        ab, ab_prev = self._at(self.alpha_bars, i, x_t), self._at(self.alpha_bars_prev, i, x_t)
        coef_x0 = ab_prev.sqrt() * beta / (1 - ab)
        coef_xt = alpha.sqrt() * (1 - ab_prev) / (1 - ab)
        return coef_x0 * x0 + coef_xt * x_t, (1 - ab_prev) / (1 - ab) * beta

    def x0_from_eps(self, x_t: torch.Tensor, i, eps: torch.Tensor) -> torch.Tensor:
        """x0_hat = (x_i - sqrt(1 - alpha_bar_i) eps) / sqrt(alpha_bar_i)."""
        ab = self._at(self.alpha_bars, i, x_t)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def reverse_mean_from_eps(self, x_t: torch.Tensor, i, eps: torch.Tensor) -> torch.Tensor:
        """mu_theta = (x_i - beta_i / sqrt(1 - alpha_bar_i) eps) / sqrt(alpha_i)."""
        beta, alpha, ab = self._at(self.betas, i, x_t), self._at(self.alphas, i, x_t), self._at(self.alpha_bars, i, x_t)
        return (x_t - beta / (1 - ab).sqrt() * eps) / alpha.sqrt()

    def score_from_eps(self, eps: torch.Tensor, i) -> torch.Tensor:
        """score = -eps / sqrt(1 - alpha_bar_i)."""
        return -eps / (1 - self._at(self.alpha_bars, i, eps)).sqrt()

    def variance(self, i, kind: str = "posterior", interpolation: float | torch.Tensor = 0.5) -> torch.Tensor:
        """beta~_i ("posterior"), beta_i ("forward"), or exp(v log beta_i + (1 - v) log beta~_i) ("interpolated",
        Nichol & Dhariwal 2021, where v is the network's learned output in [0, 1])."""
        if kind not in VARIANCES:
            raise ValueError(f"unknown variance {kind!r}; choose one of {VARIANCES}")
        i = torch.as_tensor(i)
        beta = self.betas[i]
        beta_tilde = (1 - self.alpha_bars_prev[i]) / (1 - self.alpha_bars[i]) * beta
        if kind == "forward":
            return beta
        if kind == "posterior":
            return beta_tilde
        v = torch.as_tensor(interpolation, dtype=beta.dtype)
        # beta~_0 = 0: its log is -inf, so the interpolation is taken from the first step with beta~ > 0.
        return torch.exp(v * beta.log() + (1 - v) * beta_tilde.clamp_min(torch.finfo(beta.dtype).tiny).log())
