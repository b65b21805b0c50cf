"""Exact ground truth: Gaussian mixtures and their marginals under any linear SDE.

If `x_0 ~ sum_k w_k N(mu_k, C_k)` and `x_t = alpha(t) x_0 + sigma(t) eps`, then

    x_t ~ sum_k w_k N(alpha mu_k, alpha^2 C_k + sigma^2 I),

so the marginal density and its score are exact at every t. Each covariance is diagonalised once,
`C_k = U_k diag(l_k) U_k^T`; at time t the covariance is `U_k diag(alpha^2 l_k + sigma^2) U_k^T`, which is
inverted through its eigenvalues, never as a matrix. Component responsibilities use log-sum-exp, so the score
is stable in float32 and float64 alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .score import ScoreModel
from .sde import LinearSDE
from .tensors import Time, as_time


class GaussianMixture:
    """`sum_k weights[k] N(means[k], covs[k])` in `dim` dimensions, viewed as samples of `event_shape`.

    `covs` is `(K, d, d)` (full), `(K, d)` (diagonal) or `(K,)` (isotropic).
    """

    def __init__(
        self,
        weights: torch.Tensor | Sequence[float],
        means: torch.Tensor | Sequence,
        covs: torch.Tensor | Sequence,
        *,
        event_shape: tuple[int, ...] | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ):
        weights = torch.as_tensor(weights, dtype=dtype, device=device)
        means = torch.as_tensor(means, dtype=dtype, device=device)
        covs = torch.as_tensor(covs, dtype=dtype, device=device)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d); got {tuple(means.shape)}")
        K, d = means.shape
        if weights.shape != (K,):
            raise ValueError(f"weights must have shape (K,) = ({K},) to match means; got {tuple(weights.shape)}")
        for name, value in (("weights", weights), ("means", means), ("covs", covs)):
            if not torch.isfinite(value).all():
                raise ValueError(f"GaussianMixture {name} hold NaN or inf; every entry must be finite")
        if not (weights > 0).all():
            raise ValueError("mixture weights must be positive")
        if covs.shape == (K,):
            covs = covs[:, None, None] * torch.eye(d, dtype=dtype, device=device)
        elif covs.shape == (K, d):
            covs = torch.diag_embed(covs)
        elif covs.shape != (K, d, d):
            raise ValueError(f"covs must have shape (K, d, d), (K, d) or (K,) with K={K}, d={d}; got {tuple(covs.shape)}")
        if not torch.allclose(covs, covs.transpose(-1, -2), atol=1e-10, rtol=1e-8):
            raise ValueError("covariances must be symmetric")
        eigvals, eigvecs = torch.linalg.eigh(covs)
        if not (eigvals > 0).all():
            raise ValueError(f"covariances must be positive definite; smallest eigenvalue {eigvals.min().item():g}")
        event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(event_shape) != d:
            raise ValueError(f"event_shape {event_shape} does not hold d={d} values")
        self.weights = weights / weights.sum()
        self.means, self.covs, self.eigvals, self.eigvecs = means, covs, eigvals, eigvecs
        self.event_shape, self.dim = event_shape, d

    # -- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def gaussian(cls, mean, cov, **kwargs) -> GaussianMixture:
        """A single Gaussian N(mean, cov)."""
        mean = torch.as_tensor(mean, dtype=kwargs.get("dtype", torch.float64))
        cov = torch.as_tensor(cov, dtype=mean.dtype)
        return cls(torch.ones(1), mean[None], cov[None], **kwargs)

    @classmethod
    def ring(cls, n_components: int = 8, radius: float = 2.0, std: float = 0.05, **kwargs) -> GaussianMixture:
        """`n_components` equal isotropic Gaussians of std `std` evenly spaced on a circle of `radius`."""
        angles = torch.arange(n_components, dtype=torch.float64) * 2 * math.pi / n_components
        means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
        return cls(torch.ones(n_components), means, torch.full((n_components,), std**2, dtype=torch.float64), **kwargs)

    @classmethod
    def random(
        cls,
        dim: int,
        n_components: int,
        *,
        condition: float = 50.0,
        scale: float = 1.0,
        spread: float = 3.0,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> GaussianMixture:
        """Anisotropic components with random orientation; each covariance has condition number `condition`,
        largest std `scale`, and means spread with std `spread` (all reproducible from `generator`)."""
        g: dict[str, Any] = dict(generator=generator, dtype=torch.float64)
        weights = 0.5 + torch.rand(n_components, **g)
        means = spread * torch.randn(n_components, dim, **g)
        rotations, _ = torch.linalg.qr(torch.randn(n_components, dim, dim, **g))
        stds = scale * condition ** (-0.5 * torch.rand(n_components, dim, **g))
        stds[:, 0], stds[:, -1] = scale, scale / math.sqrt(condition)  # exact condition number
        covs = rotations @ torch.diag_embed(stds**2) @ rotations.transpose(-1, -2)
        return cls(weights, means, 0.5 * (covs + covs.transpose(-1, -2)), **kwargs)

    # -- the data distribution ----------------------------------------------------------------------------------
    @property
    def n_components(self) -> int:
        return len(self.weights)

    def to(self, device=None, dtype=None) -> GaussianMixture:
        kw = dict(device=device, dtype=dtype or self.means.dtype)
        return GaussianMixture(self.weights.to(**kw), self.means.to(**kw), self.covs.to(**kw), event_shape=self.event_shape, **kw)

    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        """Law of total covariance: sum_k w_k (C_k + mu_k mu_k^T) - mu mu^T."""
        mu = self.mean()
        second = (self.weights[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - mu[:, None] * mu[None, :]

    def sample(self, n: int, generator: torch.Generator | None = None, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """n draws, shape `(n, *event_shape)`."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype, device=self.means.device)
        scaled = self.eigvecs[component] @ (self.eigvals[component].sqrt() * z)[:, :, None]
        x = self.means[component] + scaled[:, :, 0]
        return x.reshape(n, *self.event_shape).to(dtype or self.means.dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density of the data, one value per sample."""
        return self._log_prob_and_score(x, 1.0, 0.0, with_score=False)[0]

    # -- marginals under a linear SDE -------------------------------------------------------------------------
    def marginal(self, sde: LinearSDE, t: float) -> GaussianMixture:
        """The law of x_t: weights kept, means alpha mu_k, covariances alpha^2 C_k + sigma^2 I."""
        time = torch.tensor(float(t), dtype=self.means.dtype, device=self.means.device)
        alpha, sigma = sde.alpha(time), sde.sigma(time)
        eye = torch.eye(self.dim, dtype=self.means.dtype, device=self.means.device)
        return GaussianMixture(
            self.weights, alpha * self.means, alpha**2 * self.covs + sigma**2 * eye,
            event_shape=self.event_shape, dtype=self.means.dtype, device=self.means.device,
        )

    def marginal_log_prob(self, x: torch.Tensor, t: Time, sde: LinearSDE) -> torch.Tensor:
        """log p_t(x) under `sde`, for a scalar or per-sample t."""
        alpha, sigma = self._alpha_sigma(x, t, sde)
        return self._log_prob_and_score(x, alpha, sigma, with_score=False)[0]

    def score(self, x: torch.Tensor, t: Time, sde: LinearSDE, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The exact marginal score grad_x log p_t(x) under `sde`; with `labels` (a `(batch,)` integer tensor), the
        exact class-conditional score grad_x log p_t(x | k) of component k = labels[i] for each sample, and the
        mixture's score where the label is negative (`NULL_LABEL`: no class)."""
        alpha, sigma = self._alpha_sigma(x, t, sde)
        return self._log_prob_and_score(x, alpha, sigma, with_score=True, labels=labels)[1]

    def conditional_network(self, sde: LinearSDE):
        """`network(x, t, labels) -> score`: the exact class-conditional score, labels = component indices, as a
        class-conditional score network (prediction "score") with `num_classes` = the number of components."""
        mixture = self

        class ExactConditionalScore:
            num_classes = mixture.n_components

            def __call__(self, x, t, labels=None):
                return mixture.score(x, t, sde, labels)

        return ExactConditionalScore()

    def score_model(self, sde: LinearSDE) -> ScoreModel:
        """A `ScoreModel` whose network is the exact score; NFE is counted like any network's."""
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"the exact mixture score needs a LinearSDE (Gaussian marginals); got {type(sde).__name__}")
        return ScoreModel(lambda x, t: self.score(x, t, sde), sde, prediction="score")

    def _alpha_sigma(self, x, t, sde):
        t = as_time(t, x)
        return sde.alpha(t), sde.sigma(t)

    def class_logits(self, x: torch.Tensor, t: Time, sde: LinearSDE) -> torch.Tensor:
        """log w_k + log N(x; alpha mu_k, alpha^2 C_k + sigma^2 I), `(batch, K)`: the logits of the exact
        noise-conditional classifier p_t(k | x) (their softmax), for classifier guidance on ground truth."""
        alpha, sigma = self._alpha_sigma(x, t, sde)
        return self._joint(x, alpha, sigma)[0]

    def _joint(self, x: torch.Tensor, alpha, sigma):
        """(log w_k + log N_k(x), eigenbases U, eigen-coordinates z, eigenvalues var) of the marginal components."""
        if x.shape[1:] != self.event_shape:
            raise ValueError(f"x must have shape (batch, *{self.event_shape}); got {tuple(x.shape)}")
        flat = x.reshape(x.shape[0], self.dim)
        dtype = flat.dtype
        U, lam, mu, logw = (v.to(dtype=dtype, device=x.device) for v in (self.eigvecs, self.eigvals, self.means, self.weights.log()))
        alpha = torch.as_tensor(alpha, dtype=dtype, device=x.device).reshape(-1, 1, 1)  # (B or 1, 1, 1)
        sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1, 1, 1)
        var = alpha**2 * lam[None] + sigma**2  # (B, K, d): eigenvalues of the marginal covariances
        diff = flat[:, None, :] - alpha * mu[None]  # (B, K, d)
        z = torch.einsum("kji,bkj->bki", U, diff)  # coordinates in each component's eigenbasis
        log_normal = -0.5 * ((z**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        return logw[None] + log_normal, U, z, var

    def _log_prob_and_score(self, x: torch.Tensor, alpha, sigma, with_score: bool, labels: torch.Tensor | None = None):
        joint, U, z, var = self._joint(x, alpha, sigma)
        log_p = torch.logsumexp(joint, dim=1)
        if not with_score:
            return log_p, None
        resp = torch.softmax(joint, dim=1)  # (B, K)
        if labels is not None:
            labels = torch.as_tensor(labels, device=x.device)
            if labels.shape != (x.shape[0],) or labels.dtype.is_floating_point:
                raise ValueError(f"labels must be a (batch,) = ({x.shape[0]},) integer tensor; got {labels.dtype}, {tuple(labels.shape)}")
            if (labels >= self.n_components).any():
                raise ValueError(f"labels must be component indices in [0, {self.n_components}) or negative (no class); "
                                 f"got {int(labels.max())}")
            one_hot = torch.nn.functional.one_hot(labels.clamp(min=0), self.n_components).to(resp.dtype)
            resp = torch.where((labels >= 0)[:, None], one_hot, resp)
        comp_score = -torch.einsum("kij,bkj->bki", U, z / var)
        score = (resp[:, :, None] * comp_score).sum(1)
        return log_p, score.reshape(x.shape)

    def __repr__(self):
        return f"GaussianMixture(n_components={self.n_components}, dim={self.dim})"


def gaussian_conditional(mean: torch.Tensor, cov: torch.Tensor, known: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The law of the unobserved entries of x ~ N(mean, cov) given x[known] = y[known] (`known` a boolean (d,) mask):

        mean_U + C_UK C_KK^-1 (y_K - mean_K),    C_UU - C_UK C_KK^-1 C_KU.
    """
    known = torch.as_tensor(known, dtype=torch.bool)
    K, U = known, ~known
    gain = torch.linalg.solve(cov[K][:, K], cov[K][:, U]).T  # C_UK C_KK^-1 (C symmetric)
    return mean[U] + gain @ (y[K] - mean[K]), cov[U][:, U] - gain @ cov[K][:, U]
