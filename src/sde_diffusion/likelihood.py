"""Exact log-likelihoods and bits/dim through the probability-flow ODE (Song et al. 2021, sec. 4.3, app. D.2).

The probability flow `dx/dt = F(x, t) = f(x, t) - g(t)^2 score(x, t) / 2` carries the marginal p_t to p_s for
all s, t. Along a trajectory the instantaneous change of variables (Chen et al. 2018, Neural ODEs, thm. 1) gives
`d log p_t(x(t)) / dt = -div F(x(t), t)`, hence, integrating from t = eps up to T,

    log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div F(x(t), t) dt.

`log_prob` integrates the augmented state `z = [x, delta]`, `delta(eps) = 0`, `d delta / dt = div F`, forward in
time from eps to T (the opposite direction of sampling) and adds the prior's log-density at x(T). With a learned
score this is the exact density of the continuous normalising flow the model defines (the prior pushed through
the flow); with the exact score and the exact p_T it is log p_eps itself. Two things separate it from log p_0:

* eps. p_eps is the law of `alpha(eps) x_0 + sigma(eps) z`. For VP, sub-VP and OU at eps = 1e-5 that is the data
  scaled by alpha ~ 1 - 1e-6 and smoothed by sigma(eps)^2 = 1e-6 (VP) or 1e-5 (OU): on the benchmark mixtures
  (narrowest std 0.14) log p_eps - log p_0 is 3e-5 nats/dim for VP and 3e-4 for OU. For VE, sigma(0) = sigma_min:
  even "t = 0" is the data smoothed by N(0, sigma_min^2), and p_eps smooths by sigma(eps) ~ sigma_min (2e-3
  nats/dim there with sigma_min = 0.01). Exact comparisons use `GaussianMixture.marginal(sde, eps).log_prob`.
* the prior. `sde.prior_log_prob` is N(0, (alpha(T)^2 + sigma(T)^2) I), not the true p_T. The mismatch
  log prior(x_T) - log p_T(x_T) enters the result one-to-one; it is small for zero-mean unit-scale data under VP
  (alpha(T)^2 ~ 4e-5), but for data with means of a few units it is of order alpha(T) |mu| |x_T| (VP, sub-VP, OU)
  or |mu| |x_T| / sigma_max^2 (VE): around 1e-2 nats/dim. Pass `prior_log_prob=` to use another law at T (the
  exact `GaussianMixture.marginal(sde, sde.T).log_prob` in the tests); `LikelihoodResult.x_T` and
  `.prior_log_prob` let a caller swap the prior afterwards.

Divergence. `divergence="exact"` takes the trace of the Jacobian by D vector-Jacobian products (D = values per
sample); `"hutchinson"` is the Hutchinson-Skilling estimator `div F ~ mean_k v_k^T (dF/dx) v_k` with `n_probes`
Rademacher or Gaussian probes drawn once and held fixed through the solve. The state x(t) never depends on delta,
so the probes do not move the trajectory and E_v[v^T J v] = tr J makes the estimate of log p unbiased (exactly
for a fixed-step solver; an adaptive one lets delta's error estimate steer its steps, an effect of the order of
its tolerance).

Accuracy and cost (benchmarks/likelihood_accuracy.py, 2-D and 8-D mixtures, VP / sub-VP / VE / OU): at Song et
al.'s defaults, RK45 with rtol = atol = 1e-5, the worst sample is off by up to 1.2e-3 nats/dim (mean < 1e-4) for
100-150 NFE; rtol = atol = 1e-7 brings the worst case to ~1e-6 for ~230-310 NFE, and DOP853 at 1e-5 reaches
~4e-5 for ~170-220 NFE.

NFE. One evaluation of the augmented drift is one forward pass of the score network, counted once by the
`ScoreModel` wrapper, whose count is what `LikelihoodResult.nfe` reports. The trace needs backward passes through
that same forward pass (D of them for the exact trace, `n_probes` for Hutchinson); they are not function
evaluations and are reported apart, in `stats["backward_passes"]` (which also counts the one backward pass per
solve that checks the score is differentiable in x). The network must be differentiable in x
(no `torch.no_grad` or `.detach()` inside), and must treat the samples of a batch independently (no batch norm
in training mode): the trace sums per-sample gradients over the batch.

Solvers. `method` is a scipy `solve_ivp` method (RK45, RK23, DOP853, Radau, BDF, LSODA; adaptive, with `rtol`,
`atol`), or any deterministic solver of generic terms (`Solver.needs is Term`: euler, heun, rk4, scipy, bosh3,
dopri5, tsit5, or a user's), by name or instance. The one loop `solvers.integrate` steps `LikelihoodODE` as the
term, with times running from eps up to T: a fixed-step solver walks `steps` steps of a time grid; an adaptive one
(scipy, an embedded pair, integrating in t whatever its `variable`) uses only the end points. The exponential
integrators and EDM's samplers step the diffusion problem itself (they read alpha, sigma and the model's
predictions), not an augmented state, and are refused with that reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from typing import Any

import torch

from .reverse import ReverseSDE
from .sampling import as_score_model
from .score import ScoreModel
from .sde import SDE, LinearSDE
from .solvers import SOLVERS, ScipyODE, Solver, Term, get, get_grid, integrate
from .solvers.grids import TimeGrid
from .tensors import sum_except_batch

SCIPY_METHODS: tuple[str, ...] = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
DIVERGENCES: tuple[str, ...] = ("exact", "hutchinson")
PROBES: tuple[str, ...] = ("rademacher", "gaussian")


@dataclass
class LikelihoodResult:
    """`log_prob = prior_log_prob + delta_log_prob`, per sample, in nats.

    `delta_log_prob` is int_eps^T div F dt, `x_T` the end of the flow, `nfe` the network evaluations the
    `ScoreModel` wrapper counted, `stats` the solver's and the divergence's bookkeeping.
    """

    log_prob: torch.Tensor
    prior_log_prob: torch.Tensor
    delta_log_prob: torch.Tensor
    x_T: torch.Tensor
    nfe: int
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Values per sample, D."""
        return self.x_T[0].numel()

    @property
    def nats_per_dim(self) -> torch.Tensor:
        """-log p(x) / D: the negative log-likelihood per dimension of continuous data."""
        return -self.log_prob / self.dim


# -- divergence of the drift ---------------------------------------------------------------------------------------
def exact_divergence(F: torch.Tensor, x: torch.Tensor, max_elements: int = 2**24) -> torch.Tensor:
    """tr(dF/dx) per sample: sum_i e_i^T (dF/dx) e_i, one vector-Jacobian product per coordinate (D backward passes).

    The products are batched (`is_grads_batched`, vmap over the basis vectors) in chunks of at most `max_elements`
    values; a network that vmap cannot batch falls back to one backward pass at a time, with the same result.
    """
    B, D = len(F), F[0].numel()
    div = torch.zeros(B, dtype=F.dtype, device=F.device)
    eye = torch.eye(D, dtype=F.dtype, device=F.device)
    chunk = max(1, min(D, max_elements // max(1, F.numel())))
    try:
        for start in range(0, D, chunk):
            basis = eye[start : start + chunk].reshape(-1, 1, *F.shape[1:]).expand(-1, *F.shape)
            (grads,) = torch.autograd.grad(F, x, grad_outputs=basis, retain_graph=True, is_grads_batched=True)
            rows = torch.arange(len(basis), device=F.device)
            div = div + grads.reshape(len(basis), B, D)[rows, :, start + rows].sum(0)
        return div
    except RuntimeError:  # vmap does not support some operation of the network: one coordinate at a time
        div = torch.zeros(B, dtype=F.dtype, device=F.device)
        flat = F.reshape(B, D)
        for i in range(D):
            (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
            div = div + grad.reshape(B, D)[:, i]
        return div


def hutchinson_divergence(F: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """mean_k v_k^T (dF/dx) v_k per sample (Hutchinson 1990, Skilling 1989), `probes` of shape (K, *x.shape)."""
    div = torch.zeros(len(F), dtype=F.dtype, device=F.device)
    for k, v in enumerate(probes):
        (vjp,) = torch.autograd.grad(F, x, grad_outputs=v, retain_graph=k < len(probes) - 1)
        div = div + sum_except_batch(vjp * v)
    return div / len(probes)


def draw_probes(
    kind: str, n_probes: int, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`n_probes` probe vectors shaped like `like`, with E[v v^T] = I: Rademacher (+-1) or standard Gaussian."""
    shape = (n_probes, *like.shape)
    if kind == "rademacher":
        bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
        return bits.to(like.dtype) * 2 - 1
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    raise ValueError(f"unknown probe {kind!r}; choose one of {PROBES}")


class LikelihoodODE:
    """The probability flow augmented with its divergence, as a term solvers can step.

    The state is flat, `z = [x.reshape(B, D), delta]` of shape (B, D + 1), and
    `drift(z, t) = [F(x, t), div F(x, t)]`. Every call is one counted network evaluation plus the divergence's
    backward passes (counted in `backward_passes`).
    """

    def __init__(self, flow: ReverseSDE, event_shape: torch.Size, divergence: str, probes: torch.Tensor | None = None):
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES}")
        if divergence == "hutchinson" and probes is None:
            raise ValueError("the Hutchinson divergence needs its probes (see draw_probes)")
        self.flow, self.event_shape, self.divergence, self.probes = flow, torch.Size(event_shape), divergence, probes
        self.backward_passes = 0
        self._checked = False

    def _check_differentiable(self, F: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> None:
        """Once per solve: the score's part of the drift must depend on x through autograd, or every trace would
        silently read the SDE's drift alone. One backward pass, no network call."""
        if not (self.flow.sde.g2(torch.as_tensor(t, dtype=x.dtype)) > 0).all():
            return  # g(t) = 0 hides the score here; check at the next evaluation
        weights = torch.linspace(1.0, 2.0, x[0].numel(), dtype=x.dtype, device=x.device).reshape(x.shape[1:])
        score_part = F - self.flow.sde.drift(x, t)
        (grad,) = torch.autograd.grad(score_part, x, grad_outputs=weights.expand_as(F), retain_graph=True, allow_unused=True)
        self.backward_passes += 1
        if grad is None or not grad.abs().max() > 0:
            raise RuntimeError(
                "the score does not depend on x through autograd (its Jacobian is zero), so its divergence cannot be "
                "taken: the likelihood needs the score network to be differentiable in x (no torch.no_grad, "
                "torch.inference_mode or .detach() inside it)"
            )
        self._checked = True

    @property
    def T(self) -> float:
        return self.flow.T

    @property
    def nfe(self) -> int:
        return self.flow.nfe

    def pack(self, x: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """[x, delta] as one (B, D + 1) state; delta defaults to zero."""
        flat = x.reshape(len(x), -1)
        delta = torch.zeros(len(x), dtype=x.dtype, device=x.device) if delta is None else delta
        return torch.cat([flat, delta.reshape(-1, 1).to(flat.dtype)], dim=1)

    def unpack(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, delta) from the flat state."""
        return z[:, :-1].reshape(len(z), *self.event_shape), z[:, -1]

    def drift(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """[F(x, t), div F(x, t)] for the flat state z."""
        x, _ = self.unpack(z)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            F = self.flow.drift(x, t)
            if not self._checked:
                self._check_differentiable(F, x, t)
            if self.divergence == "exact":
                div = exact_divergence(F, x)
                self.backward_passes += x[0].numel()
            else:
                assert self.probes is not None  # the constructor refuses "hutchinson" without probes
                div = hutchinson_divergence(F, x, self.probes)
                self.backward_passes += len(self.probes)
        return torch.cat([F.detach().reshape(len(z), -1), div.detach()[:, None]], dim=1)

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(torch.as_tensor(t))

    def __repr__(self):
        return f"LikelihoodODE({self.flow!r}, divergence={self.divergence!r})"


# -- integration from eps up to T ------------------------------------------------------------------------------------
def _likelihood_times(sde: SDE, grid: str | TimeGrid | None, steps: int, eps: float) -> torch.Tensor:
    """The framework's grids run from T down to t_min; the likelihood walks them the other way, eps up to T."""
    if grid is None:
        grid = "log_snr" if isinstance(sde, LinearSDE) else "uniform"
    times = get_grid(grid)(sde, steps, eps).flip(0)
    if abs(float(times[0]) - eps) > 1e-12 * max(1.0, sde.T) or abs(float(times[-1]) - sde.T) > 1e-12 * max(1.0, sde.T):
        raise ValueError(f"the time grid must run between eps = {eps:g} and T = {sde.T:g}; got [{float(times[0]):g}, {float(times[-1]):g}]")
    return times


def _resolve_method(method: str | Solver, rtol: float | None, atol: float | None, steps: int | None) -> Solver:
    """The ODE solver named by `method` (a scipy method name, a solver name, or a Solver), checked for use here."""
    if isinstance(method, str) and method in SCIPY_METHODS:
        rtol, atol = 1e-5 if rtol is None else rtol, 1e-5 if atol is None else atol
        solver: Solver = ScipyODE(method, rtol, atol)
    elif isinstance(method, Solver):
        if rtol is not None or atol is not None:
            raise ValueError(f"rtol/atol go to the solver's constructor, not with an already-built solver {method!r}")
        solver = method
    elif isinstance(method, str):
        tolerances = {k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None}
        if method in SOLVERS and SOLVERS[method].adaptive:  # Song et al.'s 1e-5, as for the scipy methods
            tolerances = {"rtol": 1e-5, "atol": 1e-5, **tolerances}
        try:
            solver = get(method, **tolerances)
        except ValueError as e:
            raise ValueError(f"{e}. For scipy's adaptive solvers use method in {SCIPY_METHODS}") from None
    else:
        raise TypeError(f"method must be a scipy method name, a solver name or a Solver; got {type(method).__name__}")
    if solver.stochastic:
        raise ValueError(f"the likelihood needs an ODE solver of the probability flow; {solver!r} is stochastic")
    if solver.needs is not Term:
        raise ValueError(
            f"{solver.name} steps the diffusion problem itself (it reads alpha, sigma and the model's predictions), "
            f"not the likelihood's augmented ODE; use a scipy method {SCIPY_METHODS} or a solver of generic terms "
            "(euler, heun, rk4, bosh3, dopri5, tsit5)"
        )
    if solver.adaptive and steps is not None:
        raise ValueError(f"steps applies to fixed-step solvers; {solver!r} chooses its own (set rtol/atol)")
    return solver


# -- input checks -----------------------------------------------------------------------------------------------------
def _check_batch(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, *event_shape); got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point (float32 or float64); got {x.dtype}")
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape (batch, *event_shape), e.g. (n, d) for vectors or (n, c, h, w) for images; "
            f"got shape {tuple(x.shape)}. For a single sample use {name}[None]; for scalars use {name}[:, None]"
        )
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    finite = torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    if not finite.all():
        bad = (~finite).nonzero()[:, 0].tolist()
        raise ValueError(f"{name} holds NaN or inf in {len(bad)} sample(s), the first at index {bad[0]}")


# -- the public entry points -------------------------------------------------------------------------------------------
def log_prob(
    sde: SDE,
    score: ScoreModel | Callable,
    x0: torch.Tensor,
    *,
    eps: float = 1e-5,
    method: str | Solver = "RK45",
    rtol: float | None = None,
    atol: float | None = None,
    steps: int | None = None,
    grid: str | TimeGrid | None = None,
    divergence: str = "exact",
    probe: str = "rademacher",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LikelihoodResult:
    """log p_eps(x0) = log p_T(x(T)) + int_eps^T div F(x(t), t) dt along the probability flow started at x(eps) = x0.

    `score` is a `ScoreModel` of `sde` (or a callable `(x, t) -> score`). `method`: a scipy method name (adaptive,
    `rtol`/`atol`, default 1e-5 each as in Song et al.), or a torch solver of terms by name or instance (fixed-step
    ones take `steps` on `grid`, default uniform in log-SNR for a linear SDE; the embedded pairs by name take
    `rtol`/`atol`, default 1e-5 too). `divergence`: "exact" (D backward passes per
    evaluation: small D) or "hutchinson" with `n_probes` `probe` vectors drawn from `generator` once per call.
    `prior_log_prob` replaces `sde.prior_log_prob` as the log-density at T. The whole batch is one ODE system.
    See the module docstring for what p_eps means, the prior at T, and how the NFE is counted.
    """
    model = as_score_model(sde, score)
    _check_batch(x0, "x0")
    if not (isinstance(eps, (int, float)) and 0 <= eps < sde.T):
        raise ValueError(f"eps must satisfy 0 <= eps < T = {sde.T:g}; got {eps!r} (Song et al. use 1e-5)")
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose one of {PROBES}")
    if not (isinstance(n_probes, int) and n_probes >= 1):
        raise ValueError(f"n_probes must be a positive integer; got {n_probes!r}")
    solver = _resolve_method(method, rtol, atol, steps)

    probes = draw_probes(probe, n_probes, x0, generator) if divergence == "hutchinson" else None
    term = LikelihoodODE(ReverseSDE(sde, model, probability_flow=True), x0.shape[1:], divergence, probes)
    z0 = term.pack(x0.detach())
    nfe_start = model.nfe
    if solver.adaptive:
        times = torch.tensor([float(eps), float(sde.T)], dtype=x0.dtype, device=x0.device)
    else:
        times = _likelihood_times(sde, grid, solver.default_steps if steps is None else steps, float(eps))
    out = integrate(solver, term, z0, solver.controller(times.to(dtype=x0.dtype, device=x0.device)))
    z1 = out.x
    steps = out.stats.get("accepted_steps", len(out.times) - 1)
    stats = {"method": getattr(solver, "method", solver.name or type(solver).__name__), "steps": steps, **out.stats}
    if isinstance(solver, ScipyODE):
        stats.update(rtol=solver.rtol, atol=solver.atol)
    nfe = model.nfe - nfe_start

    x_T, delta = term.unpack(z1)
    prior = (sde.prior_log_prob if prior_log_prob is None else prior_log_prob)(x_T)
    if not (isinstance(prior, torch.Tensor) and prior.shape == (len(x0),)):
        got = tuple(prior.shape) if isinstance(prior, torch.Tensor) else type(prior).__name__
        raise ValueError(f"prior_log_prob must return one value per sample, shape ({len(x0)},); got {got}")
    prior = prior.to(delta.dtype)
    stats.update(divergence=divergence, eps=float(eps), backward_passes=term.backward_passes)
    if divergence == "hutchinson":
        stats.update(probe=probe, n_probes=n_probes)
    return LikelihoodResult(prior + delta, prior, delta, x_T, nfe, stats)


@dataclass(frozen=True)
class Quantization:
    """Data quantised to `levels` equally spaced values `low + k w`, k = 0..levels-1, with bin width
    `w = (high - low) / (levels - 1)` (8-bit images scaled to [-1, 1]: levels=256, w = 2/255).

    Uniform dequantisation `x = y + w (u - 1/2)`, u ~ U[0, 1)^D, spreads each value over its own bin
    [y - w/2, y + w/2); the bins tile [low - w/2, high + w/2) without overlap.
    """

    levels: int = 256
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.levels, int) and self.levels >= 2):
            raise ValueError(f"levels must be an integer >= 2; got {self.levels!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"the data range must be finite with low < high; got [{self.low}, {self.high}]")

    @property
    def bin_width(self) -> float:
        return (self.high - self.low) / (self.levels - 1)

    def check(self, y: torch.Tensor) -> None:
        """Raise a ValueError unless every value of y is one of the levels (to 1e-3 of a bin)."""
        _check_batch(y, "data")
        w = self.bin_width
        lo, hi = y.min().item(), y.max().item()
        if lo < self.low - 1e-3 * w or hi > self.high + 1e-3 * w:
            raise ValueError(
                f"data must lie in the declared range [{self.low:g}, {self.high:g}]; got values in [{lo:g}, {hi:g}]. "
                "Scale it first (e.g. 8-bit images to [-1, 1] by y / 127.5 - 1) or declare its range in data_range"
            )
        k = (y - self.low) / w
        off = (k - k.round()).abs().max().item()
        if off > 1e-3:
            raise ValueError(
                f"data is not quantised to {self.levels} levels in [{self.low:g}, {self.high:g}] (step {w:g}): "
                f"a value lies {off:.3g} bins off the grid. Pass quantised data (not already dequantised) and "
                "the number of levels it was quantised to"
            )

    def dequantize(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x = y + w (u - 1/2), u ~ U[0, 1) independently per value."""
        self.check(y)
        u = torch.rand(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        return y + self.bin_width * (u - 0.5)

    def bits_per_dim(self, log_prob_x: torch.Tensor, dim: int) -> torch.Tensor:
        """(-log p(x) / D - log w) / log 2: the dequantised bound on -log2 P(y) / D, per sample."""
        return (-log_prob_x / dim - math.log(self.bin_width)) / math.log(2)


@dataclass
class BitsPerDimResult:
    """Per-sample bits/dim averaged over the dequantisation draws (`draws` holds each draw's, (n_dequant, B))."""

    bits_per_dim: torch.Tensor
    draws: torch.Tensor
    nfe: int
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(self.bits_per_dim.mean())

    @property
    def stderr(self) -> float:
        """Standard error of `mean` over the samples (0 for a single sample)."""
        n = len(self.bits_per_dim)
        return float(self.bits_per_dim.std() / math.sqrt(n)) if n > 1 else 0.0


def bits_per_dim(
    sde: SDE,
    score: ScoreModel | Callable,
    y: torch.Tensor,
    *,
    levels: int = 256,
    data_range: tuple[float, float] = (-1.0, 1.0),
    n_dequant: int = 1,
    generator: torch.Generator | None = None,
    **options,
) -> BitsPerDimResult:
    """Bits/dim of quantised data `y` (values `low + k w`, w = (high - low) / (levels - 1)) under the model.

    The model is a density p on R^D; it gives the discrete value y the probability of its bin,
    P(y) = int_{bin(y)} p(x) dx = w^D E_u[p(y + w (u - 1/2))], and by Jensen's inequality

        -log2 P(y) / D  <=  ( -E_u[log p(x)] / D - log w ) / log 2,     x = y + w (u - 1/2),  u ~ U[0, 1)^D,

    the uniform-dequantisation bound (Theis et al. 2016; Ho et al. 2020). The offset -log2 w follows from the
    number of levels and the data scaling: 8-bit data in [-1, 1] has w = 2/255 and an offset of log2(127.5) =
    6.994 bits. (Song et al.'s code maps the 256 levels onto bins of width 2/256 that tile [-1, 1], rescaling the
    data by 255/256, hence their constant 7, or 8 for data in [0, 1]; here the levels keep their values.) The
    expectation is estimated by averaging -log2 over `n_dequant` dequantisation draws from `generator`, which
    also draws the Hutchinson probes. `log p(x)` is `log_prob(sde, score, x, **options)`: any of its options
    (eps, method, rtol, atol, divergence, probe, n_probes, ...) pass through.
    """
    if len(data_range) != 2:
        raise ValueError(f"data_range must be (low, high); got {data_range!r}")
    low, high = (float(v) for v in data_range)
    quant = Quantization(levels, low, high)
    quant.check(y)
    if not (isinstance(n_dequant, int) and n_dequant >= 1):
        raise ValueError(f"n_dequant must be a positive integer; got {n_dequant!r}")
    dim = y[0].numel()
    draws, nfe, stats = [], 0, {}
    for _ in range(n_dequant):
        result = log_prob(sde, score, quant.dequantize(y, generator), generator=generator, **options)
        draws.append(quant.bits_per_dim(result.log_prob, dim))
        nfe += result.nfe
        stats = result.stats
    per_draw = torch.stack(draws)
    stats = {**stats, "levels": levels, "data_range": (low, high), "bin_width": quant.bin_width, "n_dequant": n_dequant}
    return BitsPerDimResult(per_draw.mean(0), per_draw, nfe, stats)


def evaluate_bits_per_dim(
    sde: SDE,
    score: ScoreModel | Callable,
    data: torch.Tensor | Iterable,
    *,
    levels: int = 256,
    data_range: tuple[float, float] = (-1.0, 1.0),
    n_dequant: int = 1,
    batch_size: int = 128,
    max_batches: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    **options,
) -> dict[str, Any]:
    """A test set's bits/dim: `bits_per_dim` batch by batch, summarised as a JSON-ready dict.

    `data` is a tensor of quantised samples (split into `batch_size` batches) or an iterable of batches, each a
    tensor or a tuple whose first entry is the data (a DataLoader of (x, label)), moved to `device` if given.
    Randomness (dequantisation, probes) comes from one generator seeded with `seed`, on the data's device. This is the function the Hydra application calls
    (`conf/likelihood/*.yaml` instantiate it with `_partial_: true`); `options` pass to `log_prob`.
    """
    if isinstance(data, torch.Tensor):
        _check_batch(data, "data")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        batches: Iterable = data.split(batch_size)
    else:
        batches = data
    generator = None
    bar = None
    if progress:
        from .progress import progress_bar

        bar = progress_bar(len(batches) if isinstance(batches, Sized) else 0, "bits/dim", "batch", leave=False)
    per_sample, nfe, n_batches, stats = [], 0, 0, {}
    for batch in batches:
        if max_batches is not None and n_batches >= max_batches:
            break
        y = batch[0] if isinstance(batch, (tuple, list)) else batch
        y = y.to(device) if device is not None and isinstance(y, torch.Tensor) else y
        if generator is None:
            generator = torch.Generator(device=y.device).manual_seed(seed)
        result = bits_per_dim(
            sde, score, y, levels=levels, data_range=data_range, n_dequant=n_dequant, generator=generator, **options
        )
        per_sample.append(result.bits_per_dim.to(torch.float64).cpu())
        nfe += result.nfe
        n_batches += 1
        stats = result.stats
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if not per_sample:
        raise ValueError("no data to evaluate: the data set (or max_batches) is empty")
    bpd = torch.cat(per_sample)
    return {
        "bits_per_dim": float(bpd.mean()),
        "bits_per_dim_stderr": float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else 0.0,
        "n_samples": len(bpd),
        "n_batches": n_batches,
        "nfe": nfe,
        "nfe_per_batch": nfe / n_batches,
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in stats.items()},
    }


__all__ = [
    "BitsPerDimResult", "DIVERGENCES", "LikelihoodODE", "LikelihoodResult", "PROBES", "Quantization", "SCIPY_METHODS",
    "bits_per_dim", "draw_probes", "evaluate_bits_per_dim", "exact_divergence", "hutchinson_divergence", "log_prob",
]
