"""Calibrated time grids (`sde_diffusion.calibration`), on exact Gaussian-mixture scores.

The claim a calibrated grid makes is that the few-step solver, on that grid, lands closer to the exact probability
flow than on the grids it started from, for fresh draws of x_T, not only for the pilot batch it was fitted on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.calibration import (
    calibrate_grid,
    log_snr_grid,
    log_snr_increments,
    stratified_draws,
    stratified_pilot,
    trimmed_relative_error,
    weighted_relative_error,
)
from sde_diffusion.metrics import relative_error
from tests.helpers import TanhSDE, reference_solution

STEPS = 7


@pytest.fixture(scope="module")
def ring():
    sde = sd.EDMSDE()
    mixture = sd.GaussianMixture.ring()
    return sde, mixture.score_model(sde)


@pytest.fixture(scope="module")
def calibration(ring):
    sde, model = ring
    return calibrate_grid(sde, model, "unipc", STEPS, shape=(128, 2), generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64, method="powell", max_evaluations=300)


def test_the_grid_is_a_grid(ring, calibration):
    sde, _ = ring
    t = calibration.times
    assert t.dtype == torch.float64 and len(t) == STEPS + 1
    assert t[0] == sde.T and t[-1] == sde.default_t_min and (t[1:] < t[:-1]).all()
    assert calibration.evaluations > 10 and calibration.nfe > calibration.evaluations * STEPS


def test_calibration_improves_on_fresh_samples(ring, calibration):
    """Fitted on 128 pilot draws; judged on 512 others. At 8 NFE the initial grids leave errors of 2-7% here, and
    the calibrated grid must at least halve the better of them (measured: 0.065 and 0.13 against 0.0022)."""
    sde, model = ring
    x_T = sde.prior_sample((512, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = model.x0(reference_solution(sde, model, x_T, sde.default_t_min), sde.default_t_min)

    def error(grid):
        return relative_error(sd.sample(sde, model, "unipc", x_T=x_T, steps=STEPS, grid=grid, denoise=True).x, exact)

    initial = min(error(name) for name in ("log_snr", "edm"))
    assert calibration.error <= min(calibration.initial_errors.values())
    assert error(calibration.times) < 0.5 * initial


def test_log_snr_parameterisation_round_trips(ring):
    sde, _ = ring
    times = sd.solvers.get_grid("edm")(sde, 9, sde.default_t_min)
    theta = log_snr_increments(sde, times)
    assert torch.allclose(log_snr_grid(sde, theta, sde.default_t_min, sde.T), times, rtol=1e-10)
    extreme = log_snr_grid(sde, np.array([0.0, -500.0, 0.0]), sde.default_t_min, sde.T)
    assert (extreme[1:] < extreme[:-1]).all()


def test_trimmed_error_leaves_out_the_worst_samples():
    reference = torch.ones(100, 3, dtype=torch.float64)
    x = reference.clone()
    x[:, 0] += 0.01
    x[7] += 10.0  # one sample in another mode
    assert trimmed_relative_error(x, reference, 0.0) == pytest.approx(relative_error(x, reference), rel=1e-12)
    assert trimmed_relative_error(x, reference, 0.01) == pytest.approx(relative_error(x[torch.arange(100) != 7], reference[:99]) * (99 / 100) ** 0.5)


def test_weighted_error_is_the_error_of_the_population_it_stands_for():
    g = torch.Generator().manual_seed(3)
    reference, x = torch.randn(50, 4, generator=g, dtype=torch.float64), torch.randn(50, 4, generator=g, dtype=torch.float64)
    assert weighted_relative_error(x, reference, torch.ones(50)) == pytest.approx(relative_error(x, reference), rel=1e-12)
    twice = torch.tensor([2.0] * 10 + [1.0] * 40)  # weight 2: the sample counted twice
    doubled = weighted_relative_error(torch.cat([x, x[:10]]), torch.cat([reference, reference[:10]]), torch.ones(60))
    assert weighted_relative_error(x, reference, twice) == pytest.approx(doubled, rel=1e-12)


def test_stratified_pilot_holds_the_hardest_and_stands_for_the_pool():
    """On the arena's 32-D mixture at 9 steps, where a few trajectories near decision boundaries carry most of the
    error: the hard half of the pilot is the pool's top by screening error, the weighted error estimates the whole
    pool's within 3 standard errors of the stratified estimate (computed from the pool itself), and that standard
    error is far below a uniform sample's of the same size (measured: 0.004 of it; the hard half holds 97% of the
    squared error)."""
    from sde_diffusion.arena.problems import get_problem

    sde, mixture = sd.EDMSDE(), get_problem("gmm-32d").data
    model, t_min, steps, size = mixture.score_model(sde), sde.default_t_min, 9, 128
    pool = sde.prior_sample((2048, 32), torch.Generator().manual_seed(4), dtype=torch.float64)
    engine = sd.solvers.get("unipc")
    x_T, weights, _, _ = stratified_pilot(sde, model, engine, steps, pool, size, t_min, sde.T, True,
                                          torch.Generator().manual_seed(5))
    assert x_T.shape == (size, 32) and weights[: size // 2].eq(1).all()
    assert float(weights.sum()) == pytest.approx(len(pool))

    def solve(x, n):
        return sd.sample(sde, model, engine, x_T=x, grid=sd.solvers.get_grid("log_snr")(sde, n, t_min), denoise=True).x

    coarse = solve(pool, steps)
    screening = (coarse - solve(pool, 4 * steps)).norm(dim=1)
    assert torch.equal(x_T[: size // 2], pool[screening.argsort(descending=True)[: size // 2]])

    squared = (coarse - model.x0(reference_solution(sde, model, pool, t_min), t_min)).pow(2).sum(1)
    in_pilot = (x_T[:, None, :] == pool[None]).all(-1).nonzero()[:, 1]
    estimate = float((weights * squared[in_pilot]).sum())
    rest = torch.ones(len(pool), dtype=torch.bool)
    rest[in_pilot[: size // 2]] = False
    se_stratified = int(rest.sum()) * float(squared[rest].std()) / (size - size // 2) ** 0.5
    se_uniform = len(pool) * float(squared.std()) / size**0.5
    assert abs(estimate - float(squared.sum())) < 3 * se_stratified
    assert se_stratified < 0.1 * se_uniform


def test_a_held_out_stratified_sample_is_disjoint_and_estimates_the_same_pool():
    """`stratified_draws` with a held-out sample: the two samples share no draw, the hard stratum (the top of the
    screening) is split between them, each one's weights sum to the pool's size, and over many splits each
    weighted sum of a per-draw quantity averages to the pool's sum (unbiased; tolerance 4 standard errors of the
    mean over the splits)."""
    g = torch.Generator().manual_seed(8)
    pool = torch.arange(1000, dtype=torch.float64)[:, None]
    screening = torch.rand(1000, generator=g) ** 8  # a few large values, as on separated modes
    value = 1 + 50 * screening  # a per-draw quantity that the screening predicts
    pilot_sums, held_sums = [], []
    for seed in range(400):
        x, w, x_held, w_held = stratified_draws(pool, screening, 40, held_out=24, generator=torch.Generator().manual_seed(seed))
        picked, held = x[:, 0].long(), x_held[:, 0].long()
        assert len(picked) == 40 and len(held) == 24 and not set(picked.tolist()) & set(held.tolist())
        assert float(w.sum()) == pytest.approx(1000) and float(w_held.sum()) == pytest.approx(1000)
        top = set(screening.argsort(descending=True)[:32].tolist())
        assert set(picked[:20].tolist()) | set(held[:12].tolist()) == top
        pilot_sums.append(float((w * value[picked]).sum()))
        held_sums.append(float((w_held * value[held]).sum()))
    for sums in (torch.tensor(pilot_sums), torch.tensor(held_sums)):
        assert abs(float(sums.mean()) - float(value.sum())) < 4 * float(sums.std()) / len(sums) ** 0.5


def test_stratified_draws_need_a_large_enough_pool():
    with pytest.raises(ValueError, match="pool of at least 12"):
        stratified_draws(torch.zeros(10, 2), torch.zeros(10), 8, held_out=4)


def test_a_stratified_calibration_fits_a_grid(ring):
    sde, model = ring
    result = calibrate_grid(sde, model, "unipc", 4, shape=(256, 2), stratify=32, generator=torch.Generator().manual_seed(6),
                            dtype=torch.float64, method="powell", max_evaluations=20, initial_grids=("log_snr",))
    assert (result.times[1:] < result.times[:-1]).all()
    assert result.error <= result.initial_errors["log_snr"]


def test_a_given_reference_is_used(ring):
    """With a teacher's output given, no teacher solve is made: all evaluations are the search's."""
    sde, model = ring
    x_T = sde.prior_sample((32, 2), torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = model.x0(reference_solution(sde, model, x_T, sde.default_t_min), sde.default_t_min)
    result = calibrate_grid(sde, model, "dpm_solver_pp_2m", 4, x_T=x_T, reference=exact, method="powell",
                            max_evaluations=20, initial_grids=("log_snr",), validation=0)
    assert result.nfe == result.evaluations * 5  # 4 steps + the denoising evaluation, nothing else


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(solver="euler_maruyama"), "stochastic"),
        (dict(solver="dopri5"), "chooses its own steps"),
        (dict(steps=1), "steps must be an integer >= 2"),
        (dict(shape=None), "exactly one of shape"),
        (dict(reference=torch.zeros(4, 2)), "needs the x_T"),
        (dict(solver="unipcc"), "did you mean"),
        (dict(max_evaluations=0), "max_evaluations must be positive"),
        (dict(trim=1.0), "trim is the fraction"),
        (dict(trim=0.1), "belong to method='powell'"),
        (dict(method="newton"), "method must be one of"),
        (dict(budget=0), "budget"),
        (dict(validation=-1), "validation is the number"),
        (dict(t_min=0.0), "need 0 < t_min < t_max"),
        (dict(stratify=1), "stratify is the size"),
        (dict(stratify=8), "must hold at least 136"),
        (dict(stratify=2, trim=0.1, method="powell"), "not both"),
        (dict(stratify=2, shape=None, x_T=torch.zeros(4, 2), reference=torch.zeros(4, 2)), "leave reference out"),
    ],
)
def test_bad_input_is_refused(ring, kwargs, message):
    sde, model = ring
    args = dict(solver="unipc", steps=4, shape=(4, 2)) | kwargs
    solver, steps = args.pop("solver"), args.pop("steps")
    with pytest.raises(ValueError, match=message):
        calibrate_grid(sde, model, solver, steps, **args)


def test_needs_a_linear_sde():
    with pytest.raises(ValueError, match="LinearSDE"):
        calibrate_grid(TanhSDE(), lambda x, t: -x, "euler", 4, shape=(4, 2))


class _CountBackward(torch.autograd.Function):
    """The identity, counting the rows of every gradient that flows back through it."""

    @staticmethod
    def forward(ctx, x, counts):
        ctx.counts = counts
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.counts["backward"] += len(grad)
        return grad, None


def counted_exact_score(mixture, sde):
    """The exact score as a network, with its own count of sample-evaluations (independent of the library's)."""
    counts = {"forward": 0, "backward": 0}

    def network(x, t):
        counts["forward"] += len(x)
        return _CountBackward.apply(mixture.score(x, t, sde), counts)

    return sd.ScoreModel(network, sde, prediction="score"), counts


@pytest.fixture(scope="module")
def gradient_calibration():
    """The default method on the ring at 8 NFE: 128 pilot and 128 validation draws, 100 000 sample-evaluations."""
    sde, mixture = sd.EDMSDE(), sd.GaussianMixture.ring()
    model, counts = counted_exact_score(mixture, sde)
    cal = calibrate_grid(sde, model, "unipc", STEPS, shape=(128, 2), generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    return sde, mixture, cal, counts


def test_the_cost_is_what_a_counting_wrapper_counts(gradient_calibration):
    """cost = forward rows + 2 x backward rows, as an independent wrapper of the network counts them, within budget."""
    _, _, cal, counts = gradient_calibration
    assert counts["backward"] > 0 and cal.cost == counts["forward"] + 2 * counts["backward"]
    assert 0.9 * 100_000 < cal.cost <= 100_000 and cal.method == "gradient" and cal.evaluations >= 10


def test_gradient_calibration_lowers_the_error_on_fresh_draws(gradient_calibration):
    """Judged on 512 fresh draws against DOP853 at 1e-10: at most a quarter of the better initial grid's error
    (measured 0.0031 against 0.065 on log_snr and 0.13 on edm), and the held-out validation error within 1.3x of
    the pilot error the fit reached and of the fresh draws' (measured 1.01x and 1.06x; with 64 pilot draws and a
    fixed step size it was 2.8x: the fit over-fits a smaller pilot)."""
    sde, mixture, cal, _ = gradient_calibration
    model = mixture.score_model(sde)
    x_T = sde.prior_sample((512, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = model.x0(reference_solution(sde, model, x_T, sde.default_t_min), sde.default_t_min)

    def error(grid):
        return relative_error(sd.sample(sde, model, "unipc", x_T=x_T, steps=STEPS, grid=grid, denoise=True).x, exact)

    fresh, initial = error(cal.times), min(error(name) for name in ("log_snr", "edm"))
    assert fresh < 0.25 * initial  # 1/21 measured
    assert cal.error < min(cal.initial_errors.values())
    assert cal.validation_error < 1.3 * cal.error and cal.validation_error < 1.3 * fresh


def test_a_small_budget_binds():
    sde, mixture = sd.EDMSDE(), sd.GaussianMixture.ring()
    model, counts = counted_exact_score(mixture, sde)
    cal = calibrate_grid(sde, model, "dpm_solver_pp_2m", 4, shape=(16, 2), validation=16, budget=8_000,
                         generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert cal.cost == counts["forward"] + 2 * counts["backward"] <= 8_000
