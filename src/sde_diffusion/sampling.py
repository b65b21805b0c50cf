"""`sample`: one call from a score model to samples, with any solver and any time grid."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch

from .noise import SeededNoise, seeded_prior
from .score import ScoreModel
from .sde import SDE, LinearSDE
from .solvers import NonFiniteError, SampleResult, Solver, get, get_grid, integrate
from .solvers.control import AdaptiveController
from .solvers.grids import GivenGrid, TimeGrid
from .solvers.problems import DiffusionProblem
from .validation import ArgumentTypeError, flag


def as_score_model(sde: SDE, score: ScoreModel | Callable) -> ScoreModel:
    """`score` as a ScoreModel of `sde`; a plain callable `(x, t) -> score` is wrapped."""
    if not isinstance(sde, SDE):
        raise ArgumentTypeError(f"sde must be an sde_diffusion.SDE (e.g. VPSDE()); got {type(sde).__name__}")
    if isinstance(score, ScoreModel):
        if score.sde is not sde:
            differences = sde_differences(score.sde, sde)
            if differences:
                raise ValueError(f"the score model was built for {score.sde!r}, but sampling was asked for {sde!r}: "
                                 f"they differ in {'; '.join(differences)}. Pass the score model's own SDE (score.sde)")
        return score
    if not callable(score):
        raise ArgumentTypeError(f"score must be a ScoreModel or a callable (x, t) -> score; got {type(score).__name__}")
    return ScoreModel(score, sde, prediction="score")


def sde_differences(a: SDE, b: SDE) -> list[str]:
    """How two SDEs differ: their types, or the attributes that define them (numbers, strings, tensors; functions
    by identity). Empty when they are the same process, e.g. two VPSDE() built apart."""
    if type(a) is not type(b):
        return [f"type: {type(a).__name__} vs {type(b).__name__}"]
    out = []
    mine, theirs = vars(a), vars(b)
    for key in sorted(set(mine) | set(theirs)):
        x, y = mine.get(key), theirs.get(key)
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            same = x.shape == y.shape and bool(torch.equal(x.cpu(), y.cpu()))
        elif isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            same = False
        else:
            try:
                same = bool(x == y)
            except Exception:
                same = x is y
        if not same:
            out.append(f"{key.lstrip('_')}: {x!r} vs {y!r}" if not callable(x) else f"{key.lstrip('_')} (another function)")
    return out


def sample(
    sde: SDE,
    score: ScoreModel | Callable,
    solver: str | Solver = "euler_maruyama",
    *,
    shape: Sequence[int] | None = None,
    x_T: torch.Tensor | None = None,
    steps: int | None = None,
    grid: str | TimeGrid | Sequence[float] | torch.Tensor | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    denoise: bool = False,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | torch.Tensor | None = None,
    keep_trajectory: bool = False,
    progress: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    **solver_options,
) -> SampleResult:
    """Draw samples by integrating the reverse SDE (or probability flow) of `score` from `t_max` to `t_min`.

    Start from `x_T` or from `shape` prior draws. `steps` and `grid` set the time grid (defaults: the solver's
    `default_steps`, and its `default_grid` or else the SDE's; a sequence of times is used as given). With `denoise`, the last state is
    replaced by Tweedie's E[x_0 | x_t_min] = (x - sigma eps) / alpha, one more function evaluation, counted: the
    only way to end on the denoised prediction, for every solver. `result.nfe` is what the score model's wrapper
    counted during this call. Everything is checked (the solver against the SDE included) before any evaluation.

    Randomness: `generator` is one stream for the batch. `seeds` (one integer per sample, instead of `generator`)
    gives each sample its own generator (`noise.SeededNoise`): x_T row i is the SDE's prior draw from it and every
    stochastic solver's noise for sample i comes from it, so sample i is a function of seeds[i] (and the model,
    solver and grid) only, whatever the batch size, the number of processes or the rank that draws it. Under seeds
    nothing couples a batch: the Langevin corrector's step size is per sample, and an adaptive solver controls each
    sample's step from its own error (its controller runs `per_sample`); a solver that couples the batch in one system
    (`Solver.separable` False: scipy, adaptive DPM-Solver) solves each sample alone, and so does a solve with an NFE
    budget (`max_nfe` then caps each sample's own evaluations).
    """
    model = as_score_model(sde, score)
    solver = get(solver, **solver_options)
    for name, value in (("denoise", denoise), ("keep_trajectory", keep_trajectory), ("progress", progress)):
        flag(name, value)
    if denoise and not isinstance(sde, LinearSDE):
        raise ValueError("denoise=True needs a LinearSDE (Tweedie's formula uses alpha and sigma)")
    problem = solver.problem(sde, model)
    if isinstance(problem, DiffusionProblem):
        problem.denoise = denoise
    if (shape is None) == (x_T is None):
        raise ValueError("give exactly one of shape (to draw x_T from the prior) or x_T")
    if shape is not None and not (isinstance(shape, (tuple, list, torch.Size)) and len(shape) >= 1 and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)):
        raise ValueError(f"shape must be a tuple of positive integers (batch, ...); got {shape!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ArgumentTypeError(f"dtype must be a floating-point torch.dtype (torch.float32 or torch.float64); got {dtype!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ArgumentTypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    if x_T is not None and (not isinstance(x_T, torch.Tensor) or x_T.ndim < 1 or not x_T.is_floating_point()):
        raise ValueError("x_T must be a floating-point tensor of shape (batch, ...)")
    if x_T is not None and not torch.isfinite(x_T).all():
        raise ValueError("x_T holds NaN or inf")
    noise: torch.Generator | SeededNoise | None = generator
    if seeds is not None:
        if generator is not None:
            raise ValueError("give seeds (one per sample) or generator (one stream for the batch), not both")
        seeded = SeededNoise(seeds, x_T.device if x_T is not None else device)
        batch = len(x_T) if x_T is not None else (tuple(shape or ()) or (0,))[0]
        if batch != len(seeded):
            raise ValueError(f"seeds has {len(seeded)} entries for a batch of {batch} samples: give one seed per sample")
        if x_T is None:
            assert shape is not None  # exactly one of shape and x_T, checked above
            x_T = seeded_prior(sde, shape, seeded, dtype=dtype, device=device)
        noise = seeded
    elif x_T is None:
        assert shape is not None  # exactly one of shape and x_T, checked above
        x_T = sde.prior_sample(tuple(shape), generator, dtype=dtype, device=device)
    grid = get_grid(grid if grid is not None else solver.default_grid or sde.default_grid)
    if isinstance(grid, GivenGrid):  # its times fix steps, t_min and t_max: what is given must agree with them
        times = grid(sde, steps, t_min, t_max)
    else:
        t_min = sde.default_t_min if t_min is None else t_min
        times = grid(sde, steps if steps is not None else solver.default_steps, t_min, t_max)
    times = times.to(x_T.dtype).to(x_T.device)
    nfe_start = model.nfe
    controller, alone = solver.controller(times), False
    if seeds is not None:
        controller, alone = per_sample_controller(controller, solver)
    if alone:
        assert isinstance(noise, SeededNoise)  # only a seeded solve runs sample by sample
        result = integrate_each(solver, problem, x_T, controller, noise, keep_trajectory=keep_trajectory, progress=progress)
    else:
        result = integrate(solver, problem, x_T, controller, noise, keep_trajectory=keep_trajectory, progress=progress)
    if denoise:
        result.x = model.x0(result.x, times[-1])
        if not torch.isfinite(result.x).all():
            raise NonFiniteError(f"{solver.name or type(solver).__name__}: the final denoising step (Tweedie's E[x_0 | x_t] at t = {float(times[-1]):.6g}) "
                                 "gave NaN or inf: check the score network's output there, or stop earlier (a larger t_min)")
        if keep_trajectory and result.trajectory is not None:
            result.trajectory.append(result.x)
        if "evaluations_per_sample" in result.stats:
            result.stats["evaluations_per_sample"] += 1
    result.nfe = model.nfe - nfe_start
    return result


def per_sample_controller(controller, solver: Solver):
    """Under per-sample seeds: (controller, alone). A fixed grid as it is; an adaptive controller judging each
    sample's error alone (a batch norm would tie a sample's steps to its batch mates). `alone`: solve each sample by
    itself, for a solver that couples the batch (`separable` False) or an NFE budget (it counts the batch's calls)."""
    alone = not solver.separable or getattr(controller, "max_nfe", None) is not None
    if isinstance(controller, AdaptiveController) and not controller.per_sample and not alone:
        controller = copy.copy(controller)
        controller.per_sample = True
    return controller, alone


def integrate_each(solver: Solver, problem, x_T: torch.Tensor, controller, noise: SeededNoise, **options) -> SampleResult:
    """`integrate` one sample at a time (for a solver that couples the batch), with that sample's own noise: the
    samples stacked, the times of the first, a trajectory stacked step by step when all took the same steps."""
    parts = [integrate(solver, problem, x_T[i:i + 1], controller, noise.select([i]), **options) for i in range(len(x_T))]
    trajectory = None
    kept = [p.trajectory for p in parts if p.trajectory is not None]
    if options.get("keep_trajectory") and len(kept) == len(parts) and len({len(k) for k in kept}) == 1:
        trajectory = [torch.cat(states) for states in zip(*kept, strict=True)]
    stats = {"per_sample_stats": [p.stats for p in parts],
             "evaluations_per_sample": sum(p.nfe for p in parts) / len(parts)}
    return SampleResult(torch.cat([p.x for p in parts]), sum(p.nfe for p in parts), parts[0].times, trajectory, stats)
