"""Inpainting and imputation: sample x_0 given observed entries `known[mask]`, with any solver and any tensor shape.

Three methods:

- "tmpd" (default): the conditional score from Tweedie's moments (Boys et al. 2023, *Tweedie Moment Projected
  Diffusions for inverse problems*). With m(x_t) = E[x_0 | x_t] (Tweedie) and its covariance
  C(x_t) = Cov[x_0 | x_t] = (sigma^2 / alpha) dm/dx_t, p(y | x_t) is taken Gaussian, y = M x_0 with M selecting the
  known entries:

      grad_x log p_t(x | y) = score(x, t) + J^T M^T (M C M^T + r^2 I)^(-1) (y - M m),   J = dm/dx_t,

  (C held fixed in the gradient, as in TMPD). For Gaussian data m is affine in x_t and C constant, so this is the
  exact conditional score and any solver samples the exact conditional law. The linear system is solved by a few
  conjugate-gradient iterations on the known entries, each a vector-Jacobian product through the one forward
  evaluation of the step (J^T v; J is a covariance up to a scale, symmetric for an exact score, so J v = J^T v), never a
  dense Jacobian. Cost per score evaluation: one forward (counted as NFE) and `cg_iterations + 1` backward passes
  (counted in `stats["inpainting"]["vjp"]`).
- "replacement" (Song et al. 2021, appendix I): after each step, the known entries are replaced by a draw from their
  forward marginal alpha(t) y + sigma(t) eps. Biased even in its continuous-time limit: the unknown entries never
  see the correlation of the known entries' noise with their own (measured in `benchmarks/inpainting_bias.py`).
- "repaint" (Lugmayr et al. 2022): replacement, and each step is repeated `resample` times, going back from t_next
  to t by the forward transition q(x_t | x_t_next) in between. Less biased than replacement, `resample` times the
  cost, still not exact.

Every method ends on the noise-free prediction (Tweedie's E[x_0 | x_t_min] of the score it sampled with) and then
sets the known entries to the observed values exactly.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable

import torch

from .sampling import as_score_model, sample
from .score import ScoreModel, eps_and_x0, target_from
from .sde import SDE, LinearSDE
from .solvers import SampleResult, Solver, get
from .solvers.problems import chart_of
from .tensors import append_dims, batch_time

METHODS: tuple[str, ...] = ("tmpd", "replacement", "repaint")
_SAMPLE_ARGUMENTS = frozenset(inspect.signature(sample).parameters) - {"sde", "score", "solver", "solver_options"}


def check_observation(known: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(known, mask) with the mask boolean and shaped like `known` (an event-shaped mask applies to every sample);
    unobserved entries of `known` may hold anything (NaN included) and are zeroed."""
    if not isinstance(known, torch.Tensor) or not known.is_floating_point() or known.ndim < 2:
        raise ValueError("known must be a floating-point tensor of shape (batch, ...) shaped like the samples; "
                         f"got {type(known).__name__}{'' if not isinstance(known, torch.Tensor) else tuple(known.shape)}")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a boolean tensor (True where known holds observed values); got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"mask must be boolean (True where known holds observed values); got dtype {mask.dtype}")
        mask = mask.bool()
    if mask.shape == known.shape[1:]:
        mask = mask.expand(known.shape)
    elif mask.shape != known.shape:
        raise ValueError(f"mask must have the shape of known, {tuple(known.shape)}, or of one sample, "
                         f"{tuple(known.shape[1:])}; got {tuple(mask.shape)}")
    mask = mask.to(known.device)
    if not torch.isfinite(known[mask]).all():
        raise ValueError("known holds NaN or inf at observed entries (where mask is True)")
    return torch.where(mask, known, torch.zeros_like(known)), mask


def batched_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner products, shaped to broadcast against a and b."""
    return append_dims((a * b).reshape(len(a), -1).sum(1), a.ndim)


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iterations: int,
                       rtol: float = 1e-6, max_curvature: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Solve A z = b per sample by conjugate gradients (Hestenes & Stiefel 1952) from z = 0, A symmetric positive
    definite given by `matvec` (batched). Stops after `iterations` products, or when every sample's residual is below
    rtol |b|. Safeguarded for an operator that is only approximately SPD: a sample whose curvature
    p^T A p / p^T p is not positive, or exceeds `max_curvature` (a per-sample bound on A's eigenvalues, broadcastable
    to b), keeps the iterate it has and takes no further steps. Returns (z, products used)."""
    z, r = torch.zeros_like(b), b.clone()
    p, rs = r.clone(), batched_dot(r, r)
    stop = rs * rtol**2
    active = rs > 0
    one = torch.ones_like(rs)
    for k in range(iterations):
        Ap = matvec(p)
        curvature, length = batched_dot(p, Ap), batched_dot(p, p)
        valid = curvature > 0
        if max_curvature is not None:
            valid = valid & (curvature <= max_curvature * length)
        active = active & valid
        step = torch.where(active, rs / curvature.where(active, one), torch.zeros_like(rs))
        z, r = z + step * p, r - step * Ap
        rs_next = batched_dot(r, r)
        active = active & (rs_next > stop)
        if not bool(active.any()):
            return z, k + 1
        p = r + torch.where(active, rs_next / rs.where(active, one), torch.zeros_like(rs)) * p
        rs = rs_next
    return z, iterations


class TweedieConditionalScore:
    """The TMPD conditional score `(x, t) -> grad log p_t(x | known[mask])` of a score model (see the module docstring).

    `evaluations` counts calls (each one forward of the model, counted by its wrapper too); `vjp` the
    vector-Jacobian products (backward passes through that forward).
    """

    def __init__(self, model: ScoreModel, known: torch.Tensor, mask: torch.Tensor, *, cg_iterations: int = 5,
                 cg_rtol: float = 1e-6, observation_std: float = 0.0, max_noise_level: float | None = None,
                 max_update: float | None = None):
        if not isinstance(model.sde, LinearSDE):
            raise ValueError("tmpd inpainting needs a LinearSDE (Tweedie's moments use alpha and sigma)")
        if not (isinstance(cg_iterations, int) and cg_iterations >= 1):
            raise ValueError(f"cg_iterations must be a positive integer; got {cg_iterations!r}")
        if not observation_std >= 0:
            raise ValueError(f"observation_std must be >= 0; got {observation_std}")
        self.model, self.known, self.mask = model, known, mask
        if max_noise_level is not None and not max_noise_level > 0:
            raise ValueError(f"max_noise_level (in sigma / alpha) must be positive or None; got {max_noise_level}")
        self.cg_iterations, self.cg_rtol, self.observation_std = cg_iterations, float(cg_rtol), float(observation_std)
        if max_update is not None and not max_update > 0:
            raise ValueError(f"max_update must be positive or None; got {max_update}")
        self.max_noise_level, self.max_update = max_noise_level, max_update
        self.evaluations = self.vjp = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape != self.known.shape:
            raise ValueError(
                f"the inpainting score was called on a batch of shape {tuple(x.shape)}, but known has shape "
                f"{tuple(self.known.shape)}; an adaptive solver stepping samples one by one needs per_sample=False"
            )
        t = batch_time(t, x)
        sde = self.model.sde
        assert isinstance(sde, LinearSDE)  # checked by inpaint(): Tweedie's moments need alpha and sigma
        alpha, sigma = append_dims(sde.alpha(t), x.ndim), append_dims(sde.sigma(t), x.ndim)
        if self.max_noise_level is not None and bool((sigma / alpha > self.max_noise_level).all()):
            self.evaluations += 1
            return self.model.score(x, t)  # above the window: the unconditional score, one forward
        mask = self.mask.to(x.dtype)
        if self.max_noise_level is not None:  # per-sample times: no correction for the samples above the window
            mask = mask * (sigma / alpha <= self.max_noise_level).to(x.dtype)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            mean = self.model.x0(x, t)  # E[x_0 | x_t]: the step's one forward
            self.evaluations += 1

            def jacobian_t(v: torch.Tensor) -> torch.Tensor:
                self.vjp += 1
                return torch.autograd.grad(mean, x, v, retain_graph=True)[0]

            def covariance(v: torch.Tensor) -> torch.Tensor:  # v -> (M C M^T + r^2) v on the known entries
                return mask * (sigma**2 / alpha) * jacobian_t(mask * v) + self.observation_std**2 * v

            residual = mask * (self.known.to(x.dtype) - mean.detach())
            # Cov[x_0 | x_t] = (sigma^2 / alpha^2) Cov[eps | x_t] lies below (sigma^2 / alpha^2) I for Gaussian data:
            # a learned network's Jacobian can break this at high noise (1 / alpha amplifies its errors), and CG
            # then stops for that sample rather than follow a direction of garbage curvature.
            bound = sigma**2 / alpha**2 + self.observation_std**2
            z, _ = conjugate_gradient(covariance, residual, self.cg_iterations, self.cg_rtol, bound.expand(len(x), *bound.shape[1:]))
            correction = jacobian_t(z)
        if self.max_update is not None:  # trust region: |change of E[x_0 | x_t]| <= max_update |y - M m|
            update = (sigma**2 / alpha) * batched_dot(correction, correction).sqrt()
            limit = self.max_update * batched_dot(residual, residual).sqrt()
            correction = correction * torch.where(update > limit, limit / update.clamp_min(torch.finfo(x.dtype).tiny), torch.ones_like(update))
        eps, _ = eps_and_x0(mean.detach(), "x0", x.detach(), alpha, sigma)  # Tweedie: x_0 prediction -> eps
        score = target_from(eps, mean.detach(), "score", alpha, sigma)
        return (score + correction).detach()


class Imputation(Solver):
    """Any fixed-step solver with the known entries replaced after each step by a draw from their forward marginal,
    alpha(t_next) y + sigma(t_next) eps (score_sde's replacement); with `resample` > 1, RePaint's resampling: the
    step is repeated, going back from t_next to t by q(x_t | x_t_next) in between."""

    def __init__(self, solver: Solver, sde: LinearSDE, known: torch.Tensor, mask: torch.Tensor, resample: int = 1):
        if solver.adaptive:
            raise ValueError(f"replacement / repaint inpainting re-imposes the known entries after fixed steps; "
                             f"{solver.name} is adaptive: use method='tmpd', or a fixed-step solver")
        if not (isinstance(resample, int) and resample >= 1):
            raise ValueError(f"resample must be a positive integer (1 = plain replacement); got {resample!r}")
        self.inner, self.sde, self.known, self.mask, self.resample = solver, sde, known, mask, resample
        # the wrapper takes the wrapped solver's flags, per instance
        self.name = f"{solver.name}+{'repaint' if resample > 1 else 'replacement'}"  # type: ignore[misc]
        self.order, self.stochastic, self.needs = solver.order, solver.stochastic, solver.needs  # type: ignore[misc]
        self.default_grid, self.default_steps = solver.default_grid, solver.default_steps  # type: ignore[misc]

    @property
    def probability_flow(self) -> bool:
        return self.inner.probability_flow

    def problem(self, sde: SDE, score: ScoreModel):
        return self.inner.problem(sde, score)

    def init(self, problem, y0, times):
        return self.inner.init(problem, y0, times)

    def controller(self, times):
        return self.inner.controller(times)

    def options(self) -> dict:
        return {**self.inner.options(), "resample": self.resample}

    def _noise(self, x, generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    def step(self, problem, y, s, s_next, state, generator):
        chart = chart_of(problem)
        t, t_next = chart.time(s), chart.time(s_next)
        start = copy.deepcopy(state) if self.resample > 1 else state
        x_next: torch.Tensor | None = None
        for _ in range(self.resample):
            if x_next is not None:  # back to t: x_t ~ q(x_t | x_t_next) = N(a x_t_next, v I)
                a, v = self.sde.transition(t_next, t)
                x = a * x_next + v.clamp(min=0).sqrt() * self._noise(x_next, generator)
                y, state = chart.state(x, t), copy.deepcopy(start)
            y_next, _, state = self.inner.step(problem, y, s, s_next, state, generator)
            x_next = chart.sample(y_next, s_next)
            observed = self.sde.alpha(t_next) * self.known + self.sde.sigma(t_next) * self._noise(x_next, generator)
            x_next = torch.where(self.mask, observed.to(x_next.dtype), x_next)
        assert x_next is not None  # resample >= 1: at least one step was taken
        return chart.state(x_next, t_next), None, state


def inpaint(
    sde: SDE,
    score: ScoreModel | Callable,
    solver: str | Solver = "euler_maruyama",
    *,
    known: torch.Tensor,
    mask: torch.Tensor,
    method: str = "tmpd",
    cg_iterations: int = 5,
    observation_std: float = 0.0,
    max_noise_level: float | None = None,
    max_update: float | None = None,
    resample: int = 10,
    **sample_options,
) -> SampleResult:
    """Samples of x_0 given the observed entries `known[mask]`, one per row of `known`, with any solver.

    Args:
        known: the observations, shaped like the samples `(batch, ...)`; entries where `mask` is False are ignored.
        mask: True where `known` holds observed values; shaped like `known` or like one sample.
        method: "tmpd" (default, exact for Gaussian data), "replacement" or "repaint" (see the module docstring).
        cg_iterations, observation_std: tmpd's conjugate-gradient products per evaluation and the observation
            noise r (0: exact observations).
        max_noise_level: tmpd corrects the score only where sigma / alpha <= this (None: everywhere, exact for
            Gaussian data). For a learned network the Jacobian of E[x_0 | x_t] at high noise is noise amplified by
            1 / alpha (measured on the digits U-Net: covariance eigenvalues of -4200..1300 at t = T where the truth is
            below 3), and the exact correction there is O(alpha) anyway.
        max_update: tmpd's trust region: the correction may move E[x_0 | x_t] by at most this times the residual
            |y - M E[x_0 | x_t]| (None: no limit, exact for Gaussian data; exact also whenever the bound is slack).
        resample: repaint's repetitions of each step (Lugmayr et al. use 10).
        sample_options: what `sample` takes (`steps`, `grid`, `t_min`, `generator`, `x_T`, ...) and solver options.

    The result ends on the noise-free prediction and `result.x[mask] == known[mask]` exactly; `result.nfe` counts the
    forward evaluations of `score`, and `result.stats["inpainting"]` the method's extra work (tmpd: vector-Jacobian
    products and conjugate-gradient iterations).
    """
    if method not in METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; choose one of {METHODS}")
    if not isinstance(sde, LinearSDE):
        raise ValueError(f"inpainting needs a LinearSDE (alpha and sigma of the known entries); got {type(sde).__name__}")
    known, mask = check_observation(known, mask)
    if "denoise" in sample_options:
        raise ValueError("inpaint always ends on the noise-free prediction (denoise=True); do not pass denoise")
    if sample_options.get("shape") is not None and tuple(sample_options["shape"]) != tuple(known.shape):
        raise ValueError(f"shape {tuple(sample_options['shape'])} differs from known's shape {tuple(known.shape)}; "
                         "one sample is drawn per row of known (omit shape)")
    x_T = sample_options.pop("x_T", None)
    if x_T is not None and (not isinstance(x_T, torch.Tensor) or x_T.shape != known.shape):
        raise ValueError(f"x_T must have the shape of known, {tuple(known.shape)}")
    sample_options.pop("shape", None)
    dtype, device = sample_options.pop("dtype", known.dtype), sample_options.pop("device", known.device)
    start = dict(x_T=x_T) if x_T is not None else dict(shape=known.shape, dtype=dtype, device=device)
    model = as_score_model(sde, score)
    nfe_start = model.nfe
    if method == "tmpd":
        conditional = TweedieConditionalScore(model, known, mask, cg_iterations=cg_iterations, observation_std=observation_std,
                                              max_noise_level=max_noise_level, max_update=max_update)
        result = sample(sde, ScoreModel(conditional, sde, "score", check_time=model.check_time), solver,
                        denoise=True, **start, **sample_options)
        stats = {"method": method, "forward": conditional.evaluations, "vjp": conditional.vjp}
    else:
        solver_options = {k: v for k, v in sample_options.items() if k not in _SAMPLE_ARGUMENTS}
        options = {k: v for k, v in sample_options.items() if k in _SAMPLE_ARGUMENTS}
        wrapped = Imputation(get(solver, **solver_options), sde, known, mask, resample if method == "repaint" else 1)
        result = sample(sde, model, wrapped, denoise=True, **start, **options)
        stats = {"method": method, "resample": wrapped.resample}
    result.x = torch.where(mask, known.to(result.x.dtype), result.x)
    if result.trajectory is not None:
        result.trajectory[-1] = result.x
    result.nfe = model.nfe - nfe_start
    result.stats["inpainting"] = stats
    return result
