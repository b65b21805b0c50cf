"""Denoising score matching on any linear SDE (Vincent 2011; Song et al. 2021, eq. 7).

With `x_t = alpha(t) x_0 + sigma(t) eps`, the conditional score is `grad log q(x_t | x_0) = -eps / sigma`, and

    L(theta) = E_{t ~ U[t_min, T]}  lambda(t)  E_{x_0, eps} || s_theta(x_t, t) + eps / sigma(t) ||^2,

whose minimiser over all functions is the true marginal score, whatever the weighting lambda(t) > 0.
The network outputs a `prediction` (eps, x0, v or score; see `score.py`). Each is affine in the others, and
the error it implies in eps is a multiple of its own error:

    eps_hat - eps = c(t) (raw - target),   c = 1 (eps),  -alpha / sigma (x0),  alpha / (alpha^2 + sigma^2) (v),  -sigma (score),
                                           alpha / (alpha + sigma) (flow),

so `|| s_theta - grad log q ||^2 = c^2 || raw - target ||^2 / sigma^2`, and the loss is computed as a weighted
regression of the network's own target (no division of network outputs, no cancellation).

Weightings lambda(t):
  - "sigma2":     lambda = sigma^2, eps matching. With prediction "eps" and reduction "mean" this is the seeds'
                  L_simple = E || eps - eps_theta(x_t, t) ||^2 (Ho et al. 2020) with t continuous.
  - "likelihood": lambda = g^2 (Song, Durkan, Murray & Ermon 2021): the score-matching part of the bound on
                  -log p_theta(x_0).
  - "target":     lambda = sigma^2 / c^2, the plain MSE of the network's own target (x0 MSE, v MSE of
                  Salimans & Ho 2022, ...). With prediction "flow" on `RectifiedFlowSDE` this is the conditional
                  flow-matching loss E || u_theta(x_t, t) - (eps - x0) ||^2 (Lipman et al. 2023; Liu et al. 2023).

Importance sampling of t: for any linear SDE, `g^2 / sigma^2 = -2 d log_snr / dt` (differentiate
`sigma^2 / alpha^2 = exp(-2 log_snr)` along `d sigma^2/dt = 2 f sigma^2 + g^2`). So the density proportional to
g^2 / sigma^2 on [t_min, T] is sampled exactly by drawing log_snr uniformly between log_snr(T) and log_snr(t_min)
and mapping back with `sde.t_of_log_snr`; the sample is reweighted by 1 / ((T - t_min) p(t)) so the expectation is
unchanged and the likelihood weighting becomes a constant. (Song, Durkan, Murray & Ermon 2021 sample this density
for the VP SDE from its closed-form CDF; the log-SNR route gives it for every linear SDE.)
"""

from __future__ import annotations

from typing import Literal, cast

import torch

from ..networks.embeddings import NULL_LABEL
from ..score import PREDICTIONS, Prediction, target_from
from ..sde import LinearSDE
from ..tensors import append_dims

Weighting = Literal["sigma2", "likelihood", "target"]
WEIGHTINGS: tuple[str, ...] = ("sigma2", "likelihood", "target")
REDUCTIONS: tuple[str, ...] = ("mean", "sum")


def eps_error_scale(prediction: str, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """c(t) = d eps_hat / d raw, with eps_hat - eps = c (raw - target) for a network predicting `prediction`."""
    if prediction == "eps":
        return torch.ones_like(alpha)
    if prediction == "x0":
        return -alpha / sigma
    if prediction == "v":
        return alpha / (alpha**2 + sigma**2)
    if prediction == "score":
        return -sigma
    if prediction == "flow":
        return alpha / (alpha + sigma)
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")


class DSMLoss:
    """Continuous-time denoising score matching for a `LinearSDE`.

    Args:
        sde: the forward process; all coefficients come from it.
        prediction: what the network outputs ("eps", "x0", "v", "score", "flow").
        weighting: "sigma2" (eps matching), "likelihood" (g^2) or "target" (plain MSE of the prediction).
        importance_sampling: draw t with density proportional to g^2 / sigma^2 (uniform in log-SNR) and reweight.
        stratified: draw a batch's n times as one low-discrepancy set, u_i = (u + i) / n (mod 1) with one uniform u
            (Kingma et al. 2021, VDM, appendix), instead of n independent uniforms: each t (and each log-SNR under
            importance sampling) is still uniform, so the loss is unbiased, and its variance over t falls.
        antithetic: evaluate every example twice, with eps and with -eps (same x_0, t and label), so the network
            sees 2n rows for n examples. At small sigma the gradient's noise is dominated by the term odd in eps,
            -2 eps d eps_theta(alpha x_0, t) / d theta, which the pair cancels (antithetic variates).
        t_min: t is drawn from [t_min, T]; default `sde.default_t_min`, where samplers stop.
        reduction: per example, "mean" or "sum" over the data dimensions; the batch is always averaged,
            so the loss scale does not depend on the batch size.
        label_dropout: probability of replacing a class label by `NULL_LABEL` (classifier-free guidance training).

    Calling `loss(network, x0, generator, labels=None)` draws t, then eps, then the label-dropout mask from
    `generator`, in that order, and returns the scalar loss. `per_example` evaluates it for given t and eps.
    """

    def __init__(
        self,
        sde: LinearSDE,
        prediction: str = "eps",
        weighting: Weighting = "sigma2",
        importance_sampling: bool = False,
        stratified: bool = False,
        antithetic: bool = False,
        t_min: float | None = None,
        reduction: str = "mean",
        label_dropout: float = 0.0,
    ):
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"denoising score matching needs a LinearSDE (alpha, sigma in closed form); got {type(sde).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
        t_min = sde.default_t_min if t_min is None else float(t_min)
        if not 0 < t_min < sde.T:
            raise ValueError(f"t_min must lie in (0, T) = (0, {sde.T:g}); got {t_min:g}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout is a probability in [0, 1); got {label_dropout}")
        self.sde, self.prediction, self.weighting = sde, cast(Prediction, prediction), weighting  # checked above
        self.importance_sampling, self.t_min, self.reduction = bool(importance_sampling), t_min, reduction
        self.stratified, self.antithetic = bool(stratified), bool(antithetic)
        self.label_dropout = float(label_dropout)

    # -- time sampling -------------------------------------------------------------------------------------------
    def _log_snr_range(self, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        ends = torch.tensor([self.sde.T, self.t_min], dtype=torch.float64)
        lam = self.sde.log_snr(ends).to(dtype=dtype, device=device)
        return lam[0], lam[1]  # log_snr(T) < log_snr(t_min)

    def sample_time(self, n: int, generator: torch.Generator | None = None, *, dtype=torch.float32, device=None) -> torch.Tensor:
        """n times in [t_min, T]: uniform, or with density proportional to g^2 / sigma^2 (uniform in log-SNR);
        with `stratified`, one in each n-th of the range, shifted together by a single uniform draw."""
        if self.stratified:
            u0 = torch.rand(1, generator=generator, dtype=dtype, device=device)
            u = torch.remainder(u0 + torch.arange(n, dtype=dtype, device=device) / n, 1.0)
        else:
            u = torch.rand(n, generator=generator, dtype=dtype, device=device)
        if not self.importance_sampling:
            return self.t_min + (self.sde.T - self.t_min) * u
        lam_T, lam_min = self._log_snr_range(dtype, device)
        t = self.sde.t_of_log_snr(lam_T + (lam_min - lam_T) * u).to(dtype=dtype, device=device)
        return t.clamp(self.t_min, self.sde.T)

    def time_density(self, t: torch.Tensor) -> torch.Tensor:
        """The density q(t) the times are drawn from, relative to U[t_min, T] (1 without importance sampling)."""
        if not self.importance_sampling:
            return torch.ones_like(t)
        lam_T, lam_min = self._log_snr_range(t.dtype, t.device)
        # p(t) = (g^2 / sigma^2) / Z with Z = 2 (log_snr(t_min) - log_snr(T)).
        return (self.sde.T - self.t_min) * self.sde.g2(t) / self.sde.sigma(t) ** 2 / (2 * (lam_min - lam_T))

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """w(t) with per-example loss w(t) || raw - target ||^2: lambda c^2 / sigma^2 divided by the time density."""
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        if self.weighting == "target":
            w = torch.ones_like(t)
        else:
            w = eps_error_scale(self.prediction, alpha, sigma) ** 2
            if self.weighting == "likelihood":
                w = w * self.sde.g2(t) / sigma**2
        return w / self.time_density(t)

    # -- the loss ------------------------------------------------------------------------------------------------
    def per_example(
        self,
        network,
        x0: torch.Tensor,
        t: torch.Tensor,
        eps: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """w(t) || network(x_t, t) - target ||^2 (mean or sum over dimensions) for given t (batch,) and eps."""
        alpha, sigma = append_dims(self.sde.alpha(t), x0.ndim), append_dims(self.sde.sigma(t), x0.ndim)
        x_t = alpha * x0 + sigma * eps
        raw = network(x_t, t) if labels is None else network(x_t, t, labels)
        if raw.shape != x0.shape:
            raise ValueError(f"the network's output must have the shape of x, {tuple(x0.shape)}; got {tuple(raw.shape)}")
        target = target_from(eps, x0, self.prediction, alpha, sigma)
        error = ((raw - target) ** 2).reshape(len(x0), -1)  # promotes a bf16 output to the data's dtype
        error = error.mean(dim=1) if self.reduction == "mean" else error.sum(dim=1)
        return self.weight(t).to(error.dtype) * error

    def __call__(
        self,
        network,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        t = self.sample_time(len(x0), generator, dtype=x0.dtype, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        if labels is not None and self.label_dropout > 0:
            drop = torch.rand(len(x0), generator=generator, device=x0.device) < self.label_dropout
            labels = torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)
        if self.antithetic:
            x0, t, eps = torch.cat([x0, x0]), torch.cat([t, t]), torch.cat([eps, -eps])
            labels = None if labels is None else torch.cat([labels, labels])
        return self.per_example(network, x0, t, eps, labels).mean()

    def options(self) -> dict:
        """The constructor arguments (for checkpoints and logs)."""
        return dict(
            prediction=self.prediction, weighting=self.weighting, importance_sampling=self.importance_sampling,
            stratified=self.stratified, antithetic=self.antithetic, t_min=self.t_min, reduction=self.reduction, label_dropout=self.label_dropout,
        )

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"DSMLoss({self.sde!r}, {opts})"
