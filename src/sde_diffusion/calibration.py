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
handful, and the fit depends on which (the small pilot of the gradient method usually holds none: on that mixture
it fits the bulk, not the switches; benchmarks/README.md). `stratify=n` samples them on purpose (stratified
sampling, as in survey statistics): the pilot draws become a pool, screened by the solver's own error estimate (its
output on the log-SNR grid against the same with 2x the steps for the gradient method, 4x for Powell; no accurate
solve needed); the fit uses the n/2 hardest and a uniform sample of n/2 of the rest, weighted by how many pool
samples each stands for, so the objective still estimates the pool's error but with the hard trajectories all
present. The held-out validation draws are a second such sample of the same pool, disjoint from the first (the hard
stratum shared between the two at random), so the validation error estimates the same quantity as the pilot error
and their ratio measures over-fitting alone. On that mixture at 9 steps the hard half holds 97% of the squared
error of a 2048-draw pool and the estimate's standard error is 0.004 of a uniform pilot's of the same size
(tests/test_calibration.py).

The grid is parameterised by its log-SNR increments, lambda_i = lambda(T) + (lambda(t_min) - lambda(T)) *
sum_{j <= i} w_j / sum_j w_j with w_j = exp(theta_j) (a softmax), so every theta is a strictly decreasing grid with
the given end points. Two searches over theta:

- `method="gradient"` (the default), as LD3 does: every coefficient of the deterministic solvers is a torch function
  of alpha, sigma and log-SNR at the grid's times, so the solve is differentiable in theta, and Adam descends on the
  pilot error from the best of `GRADIENT_STARTS` (log-SNR, EDM at rho = 7, 5, 3, uniform), going back to the best
  grid with half the step after a step that makes it worse or a plateau. The teacher is cheap (the adaptive
  Dormand-Prince pair in log-SNR at 1e-4, 75-81 evaluations per draw on the arena's EDM cases, an error of 3e-5 to
  8e-5), the pilot batch small (64-512 draws), and the whole calibration (teacher, starts, descent, validation)
  stops within `budget` sample-evaluations (rows x network calls, a backward pass counting as two, counted by
  `counting.SampleEvaluationCounter`): 100 000 by default, against 45-127 million for the Powell search below at
  the arena's settings.
- `method="powell"`: Powell's derivative-free method (scipy) from each of the log-SNR and EDM grids, against DOP853
  at 1e-9; any solver and any model, no gradients, but many more solves of the pilot batch (each search capped by
  `max_evaluations`); `trim` is for it alone.

Both judge the fitted grid once on `validation` held-out prior draws (their own teacher solve):
`Calibration.validation_error`, beside the pilot error `Calibration.error`, shows whether the fit over-fitted its
pilot. The calibration is a one-time cost per (model, solver, steps), reported apart from the NFE of sampling with
the grid: `Calibration.cost` in sample-evaluations and `Calibration.nfe` in batched calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import torch

from .counting import counted
from .metrics import relative_error
from .sampling import as_score_model, sample
from .score import ScoreModel
from .sde import SDE, LinearSDE
from .solvers import NonFiniteError, Solver, get
from .solvers.grids import EDMGrid, TimeGrid, get_grid

INITIAL_GRIDS = ("log_snr", "edm")
"""The Powell search's starting grids (each start is a whole search)."""
GRADIENT_STARTS: tuple[str | TimeGrid, ...] = ("log_snr", "edm", EDMGrid(rho=5.0), EDMGrid(rho=3.0), "uniform")
"""The gradient method's candidate starts: each costs one pilot solve, and the descent starts from the best. The
descent finds a local minimum near its start, and which start is best depends on the problem: on the arena's 32-D
mixture at 10 NFE, EDM's rho = 3 or 5 (benchmarks/README.md, "Cheap calibration")."""


def grid_label(grid: str | TimeGrid) -> str:
    """A name for a grid in `Calibration.initial_errors`: its registered name, or its repr."""
    return grid if isinstance(grid, str) else repr(grid)


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
    """Batched score evaluations the calibration spent (the teacher's and the validation's included), each on a
    whole batch; with `stratify`, also the screening's, which evaluates the pool in batches of the pilot's size."""
    cost: int = 0
    """Sample-evaluations the calibration spent in all (teacher, screening, search, validation): rows x calls of the
    network, a backward pass counting as two; measured by a `SampleEvaluationCounter`, not computed."""
    validation_error: float = math.nan
    """The relative RMS error on the fitted grid over held-out prior draws (their own teacher solve), nan if none."""
    method: str = "gradient"
    wall_time_s: float = 0.0


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


def screening_errors(
    sde: LinearSDE, model: ScoreModel, engine: Solver, steps: int, pool: torch.Tensor, t_min: float, t_max: float,
    denoise: bool, batch: int, grid: str = INITIAL_GRIDS[0], refine: int = 4,
) -> torch.Tensor:
    """Per pool draw, ||x(grid, steps) - x(grid, refine * steps)||: an estimate of the coarse solve's error that needs
    no accurate solve, computed in batches of `batch` draws."""
    coarse_grid, fine_grid = get_grid(grid)(sde, steps, t_min, t_max), get_grid(grid)(sde, refine * steps, t_min, t_max)

    def screen(x_T: torch.Tensor) -> torch.Tensor:
        coarse = sample(sde, model, engine, x_T=x_T, grid=coarse_grid, denoise=denoise).x
        fine = sample(sde, model, engine, x_T=x_T, grid=fine_grid, denoise=denoise).x
        return (coarse - fine).reshape(len(x_T), -1).norm(dim=1)

    return torch.cat([screen(chunk) for chunk in pool.split(batch)])


def stratified_draws(
    pool: torch.Tensor, screening: torch.Tensor, size: int, held_out: int = 0, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, w, x_held_out, w_held_out): a stratified sample of `size` pool draws and a disjoint one of `held_out`.

    The hard stratum is the size // 2 + held_out // 2 draws of largest `screening`; each sample takes its half from
    it (at random, when there is a held-out sample to share it with) and the rest uniformly from the other draws.
    Each draw is weighted by how many pool draws it stands for (stratum size / draws taken from it), so weighted
    sums over either sample estimate sums over the whole pool without bias, and the two estimates are of the same
    quantity: the held-out one judges a fit to the first without being part of it. With `held_out=0` the hard half
    is exactly the pool's top (weight 1)."""
    if size + held_out > len(pool):
        raise ValueError(f"a stratified pilot of {size} and {held_out} held-out draws need a pool of at least "
                         f"{size + held_out} draws; got {len(pool)}")
    device = generator.device if generator is not None else "cpu"

    def shuffled(index: torch.Tensor) -> torch.Tensor:
        return index[torch.randperm(len(index), generator=generator, device=device).to(index.device)]

    n_hard, h_hard = size // 2, held_out // 2
    order = screening.argsort(descending=True)
    hard, rest = order[: n_hard + h_hard], shuffled(order[n_hard + h_hard:])
    if h_hard:
        hard = shuffled(hard)
    n_easy, h_easy = size - n_hard, held_out - h_hard

    def weights(n_h: int, n_e: int) -> torch.Tensor:
        return torch.cat([torch.full((n_h,), len(hard) / max(n_h, 1)), torch.full((n_e,), len(rest) / max(n_e, 1))])

    pilot = torch.cat([hard[:n_hard], rest[:n_easy]])
    kept = torch.cat([hard[n_hard:], rest[n_easy: n_easy + h_easy]])
    w_pilot, w_kept = (weights(*n).to(pool.device, torch.float64) for n in ((n_hard, n_easy), (h_hard, h_easy)))
    return pool[pilot], w_pilot, pool[kept], w_kept


def stratified_pilot(
    sde: LinearSDE, model: ScoreModel, engine: Solver, steps: int, pool: torch.Tensor, size: int, t_min: float,
    t_max: float, denoise: bool, generator: torch.Generator | None = None, grid: str = INITIAL_GRIDS[0], refine: int = 4,
    held_out: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_T, weights, x_held_out, weights_held_out): `size` of the `pool` draws, half of them the hardest, the rest
    a uniform sample of the others, and a disjoint sample of `held_out` drawn the same way (`stratified_draws`).

    "Hardest" is judged by `screening_errors` on `grid` (the solver with `steps` against `refine * steps` steps, no
    accurate solve needed), computed in batches of `size`. The weighted error of either sample is the pool's, but
    the rare trajectories that dominate it (on separated modes, those that end in another mode than the exact
    flow's) are all in the sample instead of a handful.
    """
    screening = screening_errors(sde, model, engine, steps, pool, t_min, t_max, denoise, size, grid, refine)
    return stratified_draws(pool, screening, size, held_out, generator)


def log_snr_grid(sde: LinearSDE, theta: np.ndarray | torch.Tensor, t_min: float, t_max: float) -> torch.Tensor:
    """The grid whose log-SNR increments are proportional to exp(theta), from t_max to t_min (float64):
    lambda_i = lambda(t_max) + (lambda(t_min) - lambda(t_max)) sum_{j <= i} w_j / sum_j w_j, w = exp(theta), a
    softmax, so every theta is a strictly decreasing grid with these ends. Differentiable in a tensor theta."""
    theta = torch.as_tensor(theta, dtype=torch.float64)
    ends = sde.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
    w = torch.exp(torch.clamp(theta - theta.max(), min=-20.0))  # floors a vanishing step at e^-20 of the largest
    fractions = torch.cumsum(w, 0)[:-1] / w.sum()
    interior = sde.t_of_log_snr(ends[0] + (ends[1] - ends[0]) * fractions).to(torch.float64)
    return torch.cat([torch.tensor([t_max], dtype=torch.float64), interior, torch.tensor([t_min], dtype=torch.float64)])


def log_snr_increments(sde: LinearSDE, times: torch.Tensor) -> np.ndarray:
    """theta with `log_snr_grid(sde, theta, ...) == times`: the logarithms of the grid's log-SNR increments."""
    return np.log(np.diff(sde.log_snr(times.to(torch.float64)).numpy()))


METHODS = ("gradient", "powell")


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
    method: str = "gradient",
    budget: int = 100_000,
    validation: int = 128,
    lr: float = 0.2,
    initial_grids: Sequence[str | TimeGrid] | None = None,
    max_evaluations: int | None = None,
    trim: float = 0.0,
    stratify: int | None = None,
    reference_tol: float | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    **solver_options,
) -> Calibration:
    """Fit the `steps + 1` times of `solver` on `score` to an accurate solve of the probability flow (see the module).

    The pilot batch is `x_T`, or `shape` draws from the prior (with `generator`); `validation` more prior draws
    (0: none) are held out and only judged, once, on the fitted grid (`Calibration.validation_error`); with
    `stratify`, they are a stratified sample of the pool too, disjoint from the pilot, weighted alike. `reference`
    is the teacher's output for the pilot batch (denoised if `denoise`); `denoise` must match how you will sample.

    `method="gradient"` (the default) descends on theta (Adam, step `lr`) through the differentiable solve, from the
    best of `initial_grids` (default `GRADIENT_STARTS`; Powell's: `INITIAL_GRIDS`), until the next step would take
    the work past `budget` sample-evaluations in all (teacher, starts, steps and validation; a backward pass counts
    twice). Its teacher is the adaptive Dormand-Prince pair in log-SNR at rtol = atol = `reference_tol` (default
    1e-4), on the pilot and the validation draws at once.

    `method="powell"` is the derivative-free search: one Powell search from each initial grid, of at most
    `max_evaluations` solves (default 1500), against scipy's DOP853 at `reference_tol` (default 1e-9 in float64,
    1e-6 in lower precisions); `trim` applies to it alone, and `budget` does not bind it.

    `stratify=n` (either method) treats `x_T` (or the `shape` draws) as a pool and fits on n of its draws,
    stratified by `stratified_pilot`, judging on `validation` more of them (the pool must hold n + validation); its
    screening evaluates each pool draw 5 * steps times (Powell: against 4x the steps) or 3 * steps times (gradient:
    2x), + 2 with `denoise`. It pays where a few trajectories carry most of the error, as at 10 NFE on the arena's
    32-D mixture (a pool of 1000 at 1e5 lowers the error there by a fifth), not where the bulk does (at 20 NFE it does worse
    than a plain pilot of the same cost); benchmarks/README.md, "Cheap calibration".

    `Calibration.cost` is the work counted by a `SampleEvaluationCounter` on the network, whichever the method.
    """
    started = time.perf_counter()
    model = as_score_model(sde, score)
    engine = get(solver, **solver_options)
    if not isinstance(sde, LinearSDE):
        raise ValueError(f"calibrating a grid needs a LinearSDE (the grid is parameterised in log-SNR); got {type(sde).__name__}")
    check_calibratable(engine)
    engine.problem(sde, model)  # the solver's own requirement on the SDE, before any work
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2 (one step has no interior time to place); got {steps!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if not 0 <= trim < 1:
        raise ValueError(f"trim is the fraction of pilot samples left out, in [0, 1); got {trim}")
    if stratify is not None and (not isinstance(stratify, int) or stratify < 2):
        raise ValueError(f"stratify is the size of the stratified pilot batch, an integer >= 2; got {stratify!r}")
    if stratify is not None and trim:
        raise ValueError("give trim or stratify, not both: stratify keeps the hard samples that trim would drop")
    if max_evaluations is not None and max_evaluations < 1:
        raise ValueError(f"max_evaluations must be positive; got {max_evaluations}")
    if method == "gradient" and (trim or max_evaluations is not None):
        raise ValueError("trim and max_evaluations belong to method='powell'; the gradient method is bounded by "
                         "budget (sample-evaluations)")
    if not isinstance(validation, int) or validation < 0:
        raise ValueError(f"validation is the number of held-out prior draws, an integer >= 0; got {validation!r}")
    if not (isinstance(budget, int) and budget > 0) or not lr > 0:
        raise ValueError(f"budget (sample-evaluations) must be a positive integer and lr positive; got {budget!r}, {lr!r}")
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
    if stratify is not None and reference is not None:
        raise ValueError("stratify picks the pilot from the pool before the teacher runs: leave reference out")
    if stratify is not None and stratify + validation > len(x_T):
        raise ValueError(f"stratify={stratify} and validation={validation} draws are taken from the pool of "
                         f"{len(x_T)} prior draws, which must hold at least {stratify + validation}: give a larger "
                         "pool (shape or x_T), or fewer draws")
    if reference is not None and reference.shape != x_T.shape:
        raise ValueError(f"reference must have the shape of x_T, {tuple(x_T.shape)}; got {tuple(reference.shape)}")
    if initial_grids is None:
        initial_grids = GRADIENT_STARTS if method == "gradient" else INITIAL_GRIDS
    starts = {grid_label(grid): get_grid(grid)(sde, steps, t_min, t_max) for grid in initial_grids}

    model, counter = counted(model)
    weights = val_weights = x_val = None
    with torch.no_grad():
        if stratify is not None:  # screened against 2x (gradient) or 4x (Powell) the steps
            x_T, weights, x_val, val_weights = stratified_pilot(sde, model, engine, steps, x_T, stratify, t_min, t_max,
                                                                denoise, generator, refine=2 if method == "gradient" else 4,
                                                                held_out=validation)
        elif validation:
            x_val = sde.prior_sample((validation, *x_T.shape[1:]), generator, dtype=x_T.dtype, device=x_T.device)
        x_val = x_val if validation else None
        if method == "gradient":
            tol = 1e-4 if reference_tol is None else reference_tol
            reference, ref_val = _references(sde, model, x_T, reference, x_val, t_min, t_max, denoise, tol)
            fit = fit_grid_by_gradient(sde, model, engine, x_T, reference, starts, t_min, t_max, denoise,
                                       lambda: counter.total, budget, 0 if x_val is None else len(x_val), lr,
                                       weights=weights)
            times, error, initial_errors, evaluations = fit.times, fit.error, fit.initial_errors, fit.iterations
        else:
            times, error, initial_errors, evaluations, reference, ref_val = _powell(
                sde, model, engine, x_T, weights, reference, x_val, t_min, t_max, denoise, starts,
                1500 if max_evaluations is None else max_evaluations, trim, reference_tol)
        validation_error = math.nan
        if x_val is not None:
            x = sample(sde, model, engine, x_T=x_val, grid=times, denoise=denoise).x
            validation_error = (relative_error(x, ref_val) if val_weights is None
                                else weighted_relative_error(x, ref_val, val_weights))
    return Calibration(times, error, initial_errors, evaluations, model.nfe, cost=counter.total,
                       validation_error=validation_error, method=method, wall_time_s=time.perf_counter() - started)


def check_calibratable(engine: Solver) -> None:
    """Refuse a solver that has no grid to calibrate: a stochastic one (no deterministic map x_T -> x_0 to fit) or
    an adaptive one (it chooses its own steps)."""
    if engine.stochastic:
        raise ValueError(f"{engine.name!r} is stochastic: a calibrated grid fits a deterministic solver's map x_T -> x_0")
    if engine.adaptive:
        raise ValueError(f"{engine.name!r} chooses its own steps: there is no grid to calibrate")


@dataclass
class GradientFit:
    """What `fit_grid_by_gradient` found: the grid of least pilot error, that error, the error of each start, and
    the descent steps taken."""

    times: torch.Tensor
    error: float
    initial_errors: dict[str, float]
    iterations: int
    history: list[float] = field(default_factory=list)


def fit_grid_by_gradient(
    sde: LinearSDE, model: ScoreModel, engine: Solver, x_T: torch.Tensor, reference: torch.Tensor,
    starts: dict[str, torch.Tensor], t_min: float, t_max: float, denoise: bool, spent: Callable[[], int],
    budget: int, reserve_rows: int = 0, lr: float = 0.2, max_iterations: int = 500, plateau: int = 8,
    weights: torch.Tensor | None = None,
) -> GradientFit:
    """Adam on theta (the grid's log-SNR increments, `log_snr_grid`) to minimise the pilot's relative RMS error
    ||x(theta) - x_ref|| / ||x_ref||, its gradient taken through the solve (every coefficient is a torch function
    of the times), from the best of `starts` (grids by name). A step that diverges or leaves the error above 1.5x
    the best, or `plateau` steps in a row without a new best, send theta back to the best grid with half the step
    size. It stops before a step would take `spent()` (the counter of sample-evaluations) past `budget` less what
    solving `reserve_rows` more draws once will cost (the cost of a step is the largest one measured so far), after
    `max_iterations`, or when the step size has been halved six times. With `weights` (a stratified pilot) the
    error is `weighted_relative_error`'s, the relative RMS error of the population the pilot stands for."""
    initial_errors, before = {}, spent()
    for name, times in starts.items():
        initial_errors[name] = _pilot_error(sde, model, engine, x_T, reference, times, denoise, weights)
    reserve = math.ceil((spent() - before) / max(1, len(starts)) / len(x_T) * reserve_rows)
    best_name = min(initial_errors, key=lambda name: initial_errors[name])
    if not math.isfinite(initial_errors[best_name]):
        raise NonFiniteError(f"{engine.name!r} diverged on every initial grid; check the model and the solver's options")
    best_times, best_error, history = starts[best_name], initial_errors[best_name], []
    theta = torch.tensor(log_snr_increments(sde, best_times), dtype=torch.float64, requires_grad=True)
    step_size, optimiser = lr, torch.optim.Adam([theta], lr=lr)
    step_cost, since_best, iteration = 0, 0, 0
    w = torch.ones(len(x_T), dtype=reference.dtype, device=reference.device) if weights is None else weights.to(reference)
    w = w.reshape(-1, *([1] * (reference.ndim - 1)))
    norm = (w * reference.pow(2)).sum().sqrt()
    while iteration < max_iterations and step_size > lr / 64 and spent() + step_cost <= budget - reserve:
        before, iteration = spent(), iteration + 1
        with torch.enable_grad():
            times = log_snr_grid(sde, theta, t_min, t_max)
            try:
                x = sample(sde, model, engine, x_T=x_T, grid=times, denoise=denoise).x
                error = (w * (x.to(reference.dtype) - reference).pow(2)).sum().sqrt() / norm
            except NonFiniteError:
                error = None
            worse = error is None or not bool(error < 1.5 * best_error)  # NaN included
            grad = None if worse or error is None else torch.autograd.grad(error, theta)[0]
        step_cost = max(step_cost, spent() - before)
        if not worse and error is not None:
            history.append(float(error.detach()))
            if history[-1] < best_error:
                best_times, best_error, since_best = times.detach().clone(), history[-1], 0
            else:
                since_best += 1
        if worse or since_best >= plateau:  # back to the best grid, with half the step
            step_size, since_best = step_size / 2, 0
            with torch.no_grad():
                theta.copy_(torch.as_tensor(log_snr_increments(sde, best_times)))
            optimiser = torch.optim.Adam([theta], lr=step_size)
            continue
        theta.grad = grad
        optimiser.step()
    return GradientFit(best_times, best_error, initial_errors, iteration, history)


def _pilot_error(sde, model, engine, x_T, reference, times, denoise, weights=None) -> float:
    try:
        with torch.no_grad():
            x = sample(sde, model, engine, x_T=x_T, grid=times, denoise=denoise).x
    except NonFiniteError:
        return math.inf
    return relative_error(x, reference) if weights is None else weighted_relative_error(x, reference, weights)


def _references(sde, model, x_T, reference, x_val, t_min, t_max, denoise, tol):
    """The teacher's outputs for the pilot (unless given) and the validation draws, in one adaptive solve."""
    batch = [b for b in ((x_T if reference is None else None), x_val) if b is not None]
    if not batch:
        return reference, None
    solved = teacher_solve(sde, model, torch.cat(batch), t_min, t_max, denoise, tol)
    if reference is None:
        reference, solved = solved[: len(x_T)], solved[len(x_T):]
    return reference, (solved if x_val is not None else None)


def teacher_solve(sde: LinearSDE, model: ScoreModel, x_T: torch.Tensor, t_min: float, t_max: float, denoise: bool,
                  tol: float = 1e-4) -> torch.Tensor:
    """The cheap teacher: the adaptive Dormand-Prince 5(4) pair in log-SNR (`dopri5`), rtol = atol = `tol`, from
    t_max to t_min, then Tweedie's E[x_0 | x_t_min] when `denoise`. On the arena's EDM cases 1e-4 costs 75-81
    evaluations per draw for an error of 3e-5 to 8e-5 against DOP853 at 1e-9 (105-117 and 5e-6 at 1e-5)."""
    return sample(sde, model, "dopri5", x_T=x_T, t_min=t_min, t_max=t_max, denoise=denoise, rtol=tol, atol=tol).x


def _powell(sde, model, engine, x_T, weights, reference, x_val, t_min, t_max, denoise, starts, max_evaluations,
            trim, reference_tol):
    """The derivative-free search (Powell from each initial grid), as before the gradient method."""
    if reference_tol is None:
        reference_tol = 1e-9 if x_T.dtype == torch.float64 else 1e-6
    if reference is None:
        reference = _teacher(sde, model, x_T, t_min, t_max, denoise, reference_tol)
    ref_val = None if x_val is None else _teacher(sde, model, x_val, t_min, t_max, denoise, reference_tol)

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
    for name, start in starts.items():
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
    return best_times, best_error, initial_errors, evaluations, reference, ref_val


def _teacher(sde, model, x_T, t_min, t_max, denoise, tol) -> torch.Tensor:
    teacher = get("scipy", method="DOP853", rtol=tol, atol=tol)
    times = torch.tensor([t_max, t_min], dtype=x_T.dtype, device=x_T.device)
    x = teacher.solve(model, x_T, times).x
    return model.x0(x, t_min) if denoise else x
