"""Time grids calibrated to one solver and one model: the interior times that make a few-step solve match an
accurate one.

The error of a deterministic solver at 10-20 steps is set mostly by where its steps fall, and the best places depend
on the model, the SDE and the solver (a fixed family such as EDM's rho or uniform log-SNR is best for none of them).
In the manner of LD3 (Tong et al. 2025, "Learning to Discretize Denoising Diffusion ODEs", ICLR), the grid is fitted
on a pilot batch drawn from the prior: with x_ref the output of an accurate solve (the teacher) and x(tau) the
solver's output on the grid tau, both from the same x_T,

    tau* = argmin_tau ||x(tau) - x_ref|| / ||x_ref||        (relative RMS over the pilot batch),

optionally leaving out of the numerator the fraction `trim` of pilot samples with the largest errors. On data with
separated modes the untrimmed error is dominated by the few trajectories that end in another mode than the exact
flow's (they start near a decision boundary); fitting them is what lowers their number, so the default is not to
trim, with a pilot batch of a few thousand. Trimming fits the bulk of the samples better and is steadier on a small
pilot batch, at the price of more mode switches. Measured on the arena's 32-D mixture (EDM, UniPC, 20 NFE, 8192
fresh samples): trim 1% on 512 pilot draws, 20 switched samples, relative RMS 5.6e-2, median error 8.9e-4; no trim
on 2048 draws, 3 switched, 2.2e-2 and 3.7e-3 (diffusers' DPM-Solver++(3M) on Karras sigmas: 9, 3.7e-2, 2.9e-3).

Those trajectories are rare (about one in a thousand there at 20 NFE), so a pilot batch of a few thousand holds a
handful, and the fit depends on which. `stratify=n` samples them on purpose (stratified sampling, as in survey
statistics): the pilot draws become a pool, screened by the solver's own error estimate (its output on the initial
grid against the same with 4x the steps, no accurate solve needed); the fit uses the n/2 hardest and a uniform
sample of n/2 of the rest, weighted by how many pool samples each stands for, so the objective still estimates the
pool's error but with the hard trajectories all present. On that mixture at 9 steps the hard half holds 97% of the
squared error of a 2048-draw pool and the estimate's standard error is 0.004 of a uniform pilot's of the same size
(tests/test_calibration.py).

The grid is parameterised by its log-SNR increments, lambda_i = lambda(T) + (lambda(t_min) - lambda(T)) *
sum_{j <= i} w_j / sum_j w_j with w_j = exp(theta_j), so every theta is a strictly decreasing grid with the given end
points; theta is searched by Powell's derivative-free method (scipy) from the log-SNR and the EDM (rho = 7) grids,
and the better result is kept. Unlike LD3 nothing is back-propagated through the solver, so any registered
deterministic solver and any model can be calibrated; the price is more solves of the pilot batch (each search is
capped by `max_evaluations`). The calibration is a one-time cost per (model, solver, steps): its score evaluations
are reported in `Calibration.nfe`, apart from the NFE of sampling with the grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import torch

from .sampling import as_score_model, sample
from .score import ScoreModel
from .sde import SDE, LinearSDE
from .solvers import NonFiniteError, Solver, get
from .solvers.grids import get_grid

INITIAL_GRIDS = ("log_snr", "edm")


@dataclass
class Calibration:
    """A calibrated grid and what it cost. Sample with it by `sample(..., grid=calibration.times)`."""

    times: torch.Tensor
    """The calibrated grid: steps + 1 decreasing times from T to t_min, float64."""
    error: float
    """The objective on this grid: relative RMS error ||x - x_ref|| / ||x_ref|| over the pilot batch (less the
    fraction `trim` of its worst samples)."""
    initial_errors: dict[str, float] = field(default_factory=dict)
    """The same error on each initial grid (keyed by grid name)."""
    evaluations: int = 0
    """Pilot-batch solves the search made."""
    nfe: int = 0
    """Batched score evaluations the calibration spent (the teacher's included), each on the whole pilot batch; with
    `stratify`, also the screening's, which evaluates the pool in batches of the pilot's size, (1 + 4) * steps
    times each (plus the denoising steps)."""


def trimmed_relative_error(x: torch.Tensor, reference: torch.Tensor, trim: float) -> float:
    """sqrt(sum of the smallest (1 - trim) n of ||x_i - x_ref,i||^2) / ||x_ref||; `relative_error` when trim = 0."""
    squared = (x.to(reference.dtype) - reference).reshape(len(x), -1).pow(2).sum(1).sort().values
    kept = squared[: max(1, math.ceil(len(squared) * (1 - trim)))]
    return float(kept.sum().sqrt() / reference.norm())


def weighted_relative_error(x: torch.Tensor, reference: torch.Tensor, weights: torch.Tensor) -> float:
    """sqrt(sum_i w_i ||x_i - x_ref,i||^2 / sum_i w_i ||x_ref,i||^2): the relative RMS error of the population
    that a weighted (stratified) sample stands for."""
    squared = (x.to(reference.dtype) - reference).reshape(len(x), -1).pow(2).sum(1)
    w = weights.to(squared)
    return float((w * squared).sum().sqrt() / (w * reference.reshape(len(x), -1).pow(2).sum(1)).sum().sqrt())


def stratified_pilot(
    sde: LinearSDE, model: ScoreModel, engine: Solver, steps: int, pool: torch.Tensor, size: int, t_min: float,
    t_max: float, denoise: bool, generator: torch.Generator | None = None, grid: str = INITIAL_GRIDS[0], refine: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_T, weights): `size` of the `pool` draws, half of them the hardest, the rest a uniform sample of the others.

    "Hardest" is judged by a screening error, the distance between the solver's output on `grid` with `steps` and
    with `refine * steps` steps (an estimate of the coarse solve's error that needs no accurate solve of the pool),
    computed in batches of `size`.
    The hard half has weight 1 and each of the others (pool - size / 2) / (size - size / 2), so weighted sums over
    the pilot estimate sums over the whole pool without bias: the error is still the pool's, but the rare
    trajectories that dominate it (on separated modes, those that end in another mode than the exact flow's) are
    all in the pilot instead of a handful.
    """
    n_hard = size // 2
    coarse_grid, fine_grid = get_grid(grid)(sde, steps, t_min, t_max), get_grid(grid)(sde, refine * steps, t_min, t_max)

    def screen(x_T: torch.Tensor) -> torch.Tensor:
        coarse = sample(sde, model, engine, x_T=x_T, grid=coarse_grid, denoise=denoise).x
        fine = sample(sde, model, engine, x_T=x_T, grid=fine_grid, denoise=denoise).x
        return (coarse - fine).reshape(len(x_T), -1).norm(dim=1)

    screening = torch.cat([screen(chunk) for chunk in pool.split(size)])  # batches no larger than the pilot's
    order = screening.argsort(descending=True)
    hard, rest = order[:n_hard], order[n_hard:]
    picked = torch.randperm(len(rest), generator=generator, device=generator.device if generator else "cpu")
    easy = rest[picked[: size - n_hard].to(rest.device)]
    weights = torch.cat([torch.ones(n_hard), torch.full((size - n_hard,), len(rest) / (size - n_hard))])
    return pool[torch.cat([hard, easy])], weights.to(pool.device, torch.float64)


def log_snr_grid(sde: LinearSDE, theta: np.ndarray, t_min: float, t_max: float) -> torch.Tensor:
    """The grid whose log-SNR increments are proportional to exp(theta), from t_max to t_min (float64)."""
    lam_start = float(sde.log_snr(torch.tensor(t_max, dtype=torch.float64)))
    lam_end = float(sde.log_snr(torch.tensor(t_min, dtype=torch.float64)))
    w = np.exp(np.maximum(theta - theta.max(), -20.0))  # floors a vanishing step at e^-20 of the largest
    fractions = np.concatenate([[0.0], np.cumsum(w) / w.sum()])
    times = sde.t_of_log_snr(torch.tensor(lam_start + (lam_end - lam_start) * fractions, dtype=torch.float64))
    times = times.to(torch.float64)
    times[0], times[-1] = t_max, t_min
    return times


def log_snr_increments(sde: LinearSDE, times: torch.Tensor) -> np.ndarray:
    """theta with `log_snr_grid(sde, theta, ...) == times`: the logarithms of the grid's log-SNR increments."""
    return np.log(np.diff(sde.log_snr(times.to(torch.float64)).numpy()))


def calibrate_grid(
    sde: SDE,
    score: ScoreModel | Callable,
    solver: str | Solver,
    steps: int,
    *,
    shape: Sequence[int] | None = None,
    x_T: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    denoise: bool = True,
    initial_grids: Sequence[str] = INITIAL_GRIDS,
    max_evaluations: int = 1500,
    trim: float = 0.0,
    stratify: int | None = None,
    reference_tol: float | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    **solver_options,
) -> Calibration:
    """Fit the `steps + 1` times of `solver` on `score` to an accurate solve of the probability flow (see the module).

    The pilot batch is `x_T`, or `shape` draws from the prior (with `generator`). `reference` is the teacher's
    output for that batch (denoised if `denoise`); by default scipy's DOP853 at rtol = atol = `reference_tol`
    computes it (default 1e-9 in float64, 1e-6 in lower precisions, where the network's own rounding is larger),
    followed by Tweedie's denoising when `denoise`. `denoise` must match how you will sample
    (`sample(..., denoise=...)`). Each initial grid starts one Powell search of at most `max_evaluations` solves.

    `stratify=n` treats the pilot draws as a pool and fits on n of them, stratified by `stratified_pilot`: the n/2
    hardest and a reweighted uniform sample of the rest. The objective then estimates the pool's error, with the
    rare hard trajectories all present; the screening evaluates each pool draw 5 * steps times (+ 2 with `denoise`).
    """
    model = as_score_model(sde, score)
    engine = get(solver, **solver_options)
    if not isinstance(sde, LinearSDE):
        raise ValueError(f"calibrating a grid needs a LinearSDE (the grid is parameterised in log-SNR); got {type(sde).__name__}")
    if engine.stochastic:
        raise ValueError(f"{engine.name!r} is stochastic: a calibrated grid fits a deterministic solver's map x_T -> x_0")
    if engine.adaptive:
        raise ValueError(f"{engine.name!r} chooses its own steps: there is no grid to calibrate")
    engine.problem(sde, model)  # the solver's own requirement on the SDE, before any work
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2 (one step has no interior time to place); got {steps!r}")
    if not 0 <= trim < 1:
        raise ValueError(f"trim is the fraction of pilot samples left out, in [0, 1); got {trim}")
    if stratify is not None and (not isinstance(stratify, int) or stratify < 2):
        raise ValueError(f"stratify is the size of the stratified pilot batch, an integer >= 2; got {stratify!r}")
    if stratify is not None and trim:
        raise ValueError("give trim or stratify, not both: stratify keeps the hard samples that trim would drop")
    if max_evaluations < 1:
        raise ValueError(f"max_evaluations must be positive; got {max_evaluations}")
    if (shape is None) == (x_T is None):
        raise ValueError("give exactly one of shape (to draw the pilot batch from the prior) or x_T")
    if reference is not None and x_T is None:
        raise ValueError("a reference needs the x_T it was computed from")
    if x_T is None:
        assert shape is not None  # exactly one of the two, checked above
        x_T = sde.prior_sample(tuple(shape), generator, dtype=dtype, device=device)
    t_min = sde.default_t_min if t_min is None else float(t_min)
    t_max = sde.T if t_max is None else float(t_max)
    if not math.isfinite(float(sde.log_snr(torch.tensor(t_min, dtype=torch.float64)))) or not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max (the grid lives in log-SNR, infinite at t = 0); got t_min={t_min}, t_max={t_max}")
    nfe_start = model.nfe
    weights = None
    if stratify is not None:
        if reference is not None:
            raise ValueError("stratify picks the pilot from the pool before the teacher runs: leave reference out")
        if stratify > len(x_T):
            raise ValueError(f"stratify={stratify} is larger than the pool of {len(x_T)} pilot draws")
        x_T, weights = stratified_pilot(sde, model, engine, steps, x_T, stratify, t_min, t_max, denoise, generator)
    if reference is None:
        if reference_tol is None:
            reference_tol = 1e-9 if x_T.dtype == torch.float64 else 1e-6
        reference = _teacher(sde, model, x_T, t_min, t_max, denoise, reference_tol)
    elif reference.shape != x_T.shape:
        raise ValueError(f"reference must have the shape of x_T, {tuple(x_T.shape)}; got {tuple(reference.shape)}")

    evaluations = 0

    def pilot_error(times: torch.Tensor) -> float:
        nonlocal evaluations
        evaluations += 1
        if not (times[1:] < times[:-1]).all() or not (times.to(x_T.dtype)[1:] < times.to(x_T.dtype)[:-1]).all():
            return math.inf  # steps below the floating-point resolution: no grid
        try:
            x = sample(sde, model, engine, x_T=x_T, grid=times, denoise=denoise).x
        except NonFiniteError:
            return math.inf
        if weights is not None:
            return weighted_relative_error(x, reference, weights)
        return trimmed_relative_error(x, reference, trim)

    best_times, best_error, initial_errors = None, math.inf, {}
    for name in initial_grids:
        start = get_grid(name)(sde, steps, t_min, t_max)
        initial_errors[name] = pilot_error(start)
        search = scipy.optimize.minimize(
            lambda theta: pilot_error(log_snr_grid(sde, theta, t_min, t_max)),
            log_snr_increments(sde, start), method="Powell",
            options=dict(maxfev=max_evaluations, xtol=1e-3, ftol=1e-4),
        )
        for times, error in ((start, initial_errors[name]), (log_snr_grid(sde, search.x, t_min, t_max), search.fun)):
            if error < best_error:
                best_times, best_error = times, float(error)
    if best_times is None:
        raise NonFiniteError(f"{engine.name!r} diverged on every grid tried; check the model and the solver's options")
    return Calibration(best_times, best_error, initial_errors, evaluations, model.nfe - nfe_start)


def _teacher(sde, model, x_T, t_min, t_max, denoise, tol) -> torch.Tensor:
    teacher = get("scipy", method="DOP853", rtol=tol, atol=tol)
    times = torch.tensor([t_max, t_min], dtype=x_T.dtype, device=x_T.device)
    x = teacher.solve(model, x_T, times).x
    return model.x0(x, t_min) if denoise else x
