"""Adaptive solvers against exact Gaussian / Gaussian-mixture scores (float64).

Tolerances are local and apply to the integrated state, so the global error is a multiple of them that depends on
how the flow carries early errors. Measured on the mixture below with rtol = atol = tol in {1e-5, 1e-7}: at most
2 tol for the default variable (log-SNR) and for variable="t" with dopri5; bosh3 in t on VE reaches 8 tol (its
first steps at |x| ~ 50 are allowed errors of rtol |x|). Loose tolerances (1e-3) give up to 12 tol.
The bound asserted here is 5 tol.
"""

from __future__ import annotations

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.metrics import random_projections, sliced_wasserstein
from sde_diffusion.solvers import StepSizeError
from sde_diffusion.solvers.adaptive import BOSH3, DOPRI5, TSIT5, BrownianMemory
from tests.helpers import assert_moments, rms
from tests.test_edm import DATA, SDES, problem

ODE_SOLVERS = ("bosh3", "dopri5", "tsit5")


def variable_for(sde_name: str) -> str:
    # The tabulated SDE inverts log_snr by bisection on every evaluation: its log-SNR runs are slow, not wrong.
    return "t" if sde_name == "user" else "log_snr"


def _butcher(tab):
    """(A, c, b, b_hat) of all s stages, the FSAL stage included (its row of A is b, its node 1)."""
    s = len(tab.c) + 1
    A = torch.zeros(s, s, dtype=torch.float64)
    for i, row in enumerate((*tab.a, tab.b)):
        A[i + 1, : len(row)] = torch.tensor(row, dtype=torch.float64)
    b = torch.tensor((*tab.b, 0.0), dtype=torch.float64)
    return A, torch.tensor((*tab.c, 1.0), dtype=torch.float64), b, b - torch.tensor(tab.e, dtype=torch.float64)


def _order_conditions(A, c):
    """(order, phi, 1/gamma) for the 17 rooted trees of order <= 5: the method of weights w has order p iff
    w @ phi == 1/gamma for every tree of order <= p (Butcher; Hairer, Norsett & Wanner I, II.2)."""
    Ac = A @ c
    return [
        (1, torch.ones_like(c), 1), (2, c, 1 / 2),
        (3, c**2, 1 / 3), (3, Ac, 1 / 6),
        (4, c**3, 1 / 4), (4, c * Ac, 1 / 8), (4, A @ c**2, 1 / 12), (4, A @ Ac, 1 / 24),
        (5, c**4, 1 / 5), (5, c**2 * Ac, 1 / 10), (5, Ac**2, 1 / 20), (5, c * (A @ c**2), 1 / 15),
        (5, A @ c**3, 1 / 20), (5, c * (A @ Ac), 1 / 30), (5, A @ (c * Ac), 1 / 40), (5, A @ (A @ c**2), 1 / 60),
        (5, A @ (A @ Ac), 1 / 120),
    ]


@pytest.mark.parametrize("tab", [BOSH3, DOPRI5, TSIT5], ids=["bosh3", "dopri5", "tsit5"])
def test_tableaus_have_their_orders(tab):
    A, c, b, b_hat = _butcher(tab)
    torch.testing.assert_close(A.sum(1), c, rtol=0, atol=1e-14)  # rows of A sum to the nodes
    assert A.triu().abs().max() == 0  # explicit
    for order, phi, target in _order_conditions(A, c):
        if order <= tab.order:
            assert abs(float(b @ phi) - target) < 1e-14, (order, target)
        if order <= tab.error_order:
            assert abs(float(b_hat @ phi) - target) < 1e-14, (order, target)
    # and no more: some condition of the next order fails, so the error estimate is of the order claimed
    for weights, p in ((b, tab.order), (b_hat, tab.error_order)):
        if p < 5:
            assert max(abs(float(weights @ phi) - t) for o, phi, t in _order_conditions(A, c) if o == p + 1) > 1e-6


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("solver", ODE_SOLVERS)
def test_meets_its_tolerance_and_spends_less_when_it_is_looser(solver, sde_name):
    sde, model, x_T, t_min, ref = problem("mixture", sde_name)
    nfe = {}
    for tol in (1e-3, 1e-5, 1e-7):
        result = sd.sample(sde, model, solver, x_T=x_T, t_min=t_min, rtol=tol, atol=tol, variable=variable_for(sde_name))
        if tol < 1e-3:
            assert rms(result.x, ref) < 5 * tol
        nfe[tol] = result.nfe
    assert nfe[1e-3] < nfe[1e-5] < nfe[1e-7]


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_log_snr_variable_meets_tolerance_on_the_gaussian(sde_name):
    sde, model, x_T, t_min, ref = problem("gaussian", sde_name)
    result = sd.sample(sde, model, "dopri5", x_T=x_T, t_min=t_min, rtol=1e-6, atol=1e-6)
    assert rms(result.x, ref) < 5e-6


@pytest.mark.parametrize("ours, method", [("dopri5", "RK45"), ("bosh3", "RK23")])
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_in_t_it_is_scipys_solver_step_for_step(ours, method, sde_name):
    # Same pair, initial step rule (Hairer's) and controller (without the predictive cap, and without stretching
    # the last step) as scipy's RK45 / RK23.
    sde, model, x_T, t_min, _ = problem("mixture", sde_name)
    a = sd.sample(sde, model, ours, x_T=x_T, t_min=t_min, variable="t", predictive=False, stretch=1.0, rtol=1e-5, atol=1e-5)
    b = sd.sample(sde, model, "scipy", x_T=x_T, t_min=t_min, method=method, rtol=1e-5, atol=1e-5)
    assert a.nfe == b.nfe and a.stats["accepted_steps"] == b.stats["accepted_steps"]
    assert rms(a.x, b.x) < 1e-12


@pytest.mark.parametrize("solver, per_step", [("bosh3", 3), ("dopri5", 6), ("tsit5", 6)])
def test_stats_count_what_was_spent(solver, per_step):
    sde, model, x_T, t_min, _ = problem("mixture", "vp")
    result = sd.sample(sde, model, solver, x_T=x_T, t_min=t_min, rtol=1e-5, atol=1e-5, keep_trajectory=True)
    stats = result.stats
    assert stats["attempts"] == stats["accepted_steps"] + stats["rejected_steps"] and stats["accepted_steps"] > 0
    assert result.nfe == stats["nfe"] == 2 + per_step * stats["attempts"]  # f(x_T), Hairer's trial step, FSAL stages
    assert len(result.trajectory) == len(result.times) == stats["accepted_steps"] + 1
    assert result.times[0] == sde.T and result.times[-1] == t_min and (result.times.diff() < 0).all()
    torch.testing.assert_close(result.trajectory[-1], result.x)
    assert stats["budget_limited_steps"] == 0


@pytest.mark.parametrize("solver", ODE_SOLVERS)
def test_per_sample_steps_are_each_samples_own_solve(solver):
    # With per-sample step sizes each sample's steps depend on its own error only: the same as solving it alone.
    sde, model, x_T, t_min, ref = problem("mixture", "vp")
    result = sd.sample(sde, model, solver, x_T=x_T, t_min=t_min, rtol=1e-6, atol=1e-6, per_sample=True)
    assert rms(result.x, ref) < 5e-6
    accepted = result.stats["accepted_per_sample"]
    assert accepted.shape == (len(x_T),) and len(set(accepted.tolist())) > 1
    for i in (0, 7):
        alone = sd.sample(sde, model, solver, x_T=x_T[i : i + 1], t_min=t_min, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(result.x[i : i + 1], alone.x, rtol=1e-10, atol=1e-12)
        assert alone.stats["accepted_steps"] == accepted[i]
    # One batched call per stage while any sample runs: more calls than the average sample needs.
    assert result.nfe >= result.stats["evaluations_per_sample"]


@pytest.mark.parametrize("solver", (*ODE_SOLVERS, "adaptive_dpm_solver"))
def test_an_nfe_budget_is_never_exceeded(solver):
    """One meaning for every adaptive solver: the step is floored at (distance left) / (tries the budget pays for),
    and a floored step is accepted whatever its error. The solve ends within the budget, spending nearly all of it,
    and a budget the tolerances never reach changes nothing."""
    sde, model, x_T, t_min, ref = problem("mixture", "ve")
    free = sd.sample(sde, model, solver, x_T=x_T, t_min=t_min, rtol=1e-8, atol=1e-8)
    budget = free.nfe // 3
    capped = sd.sample(sde, model, solver, x_T=x_T, t_min=t_min, rtol=1e-8, atol=1e-8, max_nfe=budget)
    per_step = sd.solvers.get(solver).evaluations_per_step
    assert budget - per_step < capped.nfe <= budget
    assert capped.stats["budget_limited_steps"] >= 1
    assert torch.isfinite(capped.x).all() and rms(capped.x, ref) < 1e-3  # a sensible solution
    generous = sd.sample(sde, model, solver, x_T=x_T, t_min=t_min, rtol=1e-8, atol=1e-8, max_nfe=10 * free.nfe)
    assert generous.stats["budget_limited_steps"] == 0 and generous.nfe == free.nfe
    torch.testing.assert_close(generous.x, free.x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="max_nfe"):
        sd.sample(sde, model, solver, x_T=x_T, t_min=t_min, max_nfe=2)  # less than starting and one step


@pytest.mark.parametrize("solver", ["bosh3", "dopri5", "adaptive_sde"])
def test_step_size_underflow_is_a_clear_error(solver):
    # A score with a non-integrable singularity at t = 0.5: the solution blows up there and steps shrink to nothing.
    singular = lambda x, t: torch.ones_like(x) / ((t - 0.5) ** 2)[:, None]  # noqa: E731
    with pytest.raises(StepSizeError, match=r"underflow at t = 0\.5 "):
        sd.sample(sd.VPSDE(), singular, solver, shape=(4, 2), dtype=torch.float64, max_steps=5000,
                  generator=torch.Generator().manual_seed(0))


def test_running_out_of_attempts_is_a_clear_error():
    sde, model, x_T, t_min, _ = problem("mixture", "vp")
    with pytest.raises(StepSizeError, match="max_steps=3"):
        sd.sample(sde, model, "bosh3", x_T=x_T, t_min=t_min, rtol=1e-8, atol=1e-8, max_steps=3)


@pytest.mark.parametrize("solver", ["dopri5", "adaptive_sde"])
def test_nan_mid_solve_names_the_step_and_time(solver):
    sde = sd.VPSDE()
    exact = DATA["mixture"]().score_model(sde)

    def broken(x, t):
        score = exact.network(x, t)
        return torch.where((t < 0.3)[:, None], torch.full_like(score, float("nan")), score)

    with pytest.raises(sd.NonFiniteError, match=r"after step \d+ of an adaptive run \(t = 0\.[0-9]+ -> 0\.[0-9]+"):
        sd.sample(sde, broken, solver, shape=(8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_options_are_checked():
    for bad in (dict(variable="sigma"), dict(h_init=2.0), dict(max_nfe=0), dict(rtol=-1.0), dict(norm="l1")):
        with pytest.raises(ValueError):
            sd.solvers.get("dopri5", **bad)
    for bad in (dict(exponent=0.0), dict(h_init=0.0), dict(max_nfe=1.5)):
        with pytest.raises(ValueError):
            sd.solvers.get("adaptive_sde", **bad)


def test_brownian_memory_keeps_the_path():
    # Put an increment back, take it in two parts: the parts add up to it exactly, and the bridge has the right law.
    n = 20000
    g = torch.Generator().manual_seed(0)
    memory = BrownianMemory.empty(torch.zeros(n, 1, dtype=torch.float64))
    dW = torch.randn(n, 1, generator=g, dtype=torch.float64) * 2.0  # an increment over dt = 4
    memory.put_back(torch.full((n,), 4.0, dtype=torch.float64), dW)
    first = memory.take(torch.full((n,), 1.0, dtype=torch.float64), g)
    rest = memory.take(torch.full((n,), 5.0, dtype=torch.float64), g)  # the remaining 3, then 2 fresh
    fresh = rest - (dW - first)
    # W(1) | W(4) ~ N(W(4) / 4, 3 / 4): the residual is independent of dW with variance 3/4.
    residual = first - dW / 4
    assert abs(float(residual.var()) - 0.75) < 5 * 0.75 * (2 / n) ** 0.5
    assert abs(float((residual * dW).mean())) < 5 * (0.75 * 4 / n) ** 0.5
    assert abs(float(fresh.var()) - 2.0) < 5 * 2.0 * (2 / n) ** 0.5
    assert int(memory.depth.max()) == 0


def test_brownian_memory_follows_its_samples():
    # A subset's memory, changed and merged back, changes only those samples' stacks.
    g = torch.Generator().manual_seed(1)
    memory = BrownianMemory.empty(torch.zeros(4, 2, dtype=torch.float64))
    memory.put_back(torch.full((4,), 1.0, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64))
    idx = torch.tensor([1, 3])
    part = memory.select(idx)
    part.put_back(torch.full((2,), 0.5, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64))
    merged = memory.merge(idx, part)
    assert merged.depth.tolist() == [1, 2, 1, 2] and memory.depth.tolist() == [1, 1, 1, 1]
    assert torch.equal(merged.dW[idx, 1], torch.ones(2, 2, dtype=torch.float64))
    kept = part.where(torch.tensor([True, False]), memory.select(idx))
    assert kept.depth.tolist() == [2, 1]


@pytest.mark.parametrize(
    "sde_name, options",
    [
        ("vp", {}),
        ("vp", dict(per_sample=True)),
        pytest.param("ve", {}, marks=pytest.mark.slow),
        pytest.param("ou", dict(per_sample=True), marks=pytest.mark.slow),
    ],
)
def test_adaptive_sde_samples_the_gaussian(sde_name, options):
    sde, gaussian = SDES[sde_name](), DATA["gaussian"]()
    result = sd.sample(sde, gaussian.score_model(sde), "adaptive_sde", shape=(4000, 2), dtype=torch.float64,
                       generator=torch.Generator().manual_seed(0), **options)
    law = gaussian.marginal(sde, sde.default_t_min)
    # Bias budget 0.02: on 20000 samples the whitened moments are off by <= 0.014 (VP, VE) and 0.022 (OU, per sample).
    assert_moments(result.x, law.mean(), law.covariance(), bias=0.02)


def test_redrawing_rejected_noise_biases_low_dimensional_samples():
    # The paper redraws the Brownian increment of a rejected step. With per-sample control in 2-D each sample's
    # accept/reject decision selects its own noise; memory of the path removes the bias (see BrownianMemory).
    sde, gaussian = SDES["vp"](), DATA["gaussian"]()
    options = dict(shape=(4000, 2), dtype=torch.float64, generator=torch.Generator().manual_seed(0), per_sample=True)
    redrawn = sd.sample(sde, gaussian.score_model(sde), "adaptive_sde", brownian_memory=False, **options)
    law = gaussian.marginal(sde, sde.default_t_min)
    with pytest.raises(AssertionError, match="covariance"):
        assert_moments(redrawn.x, law.mean(), law.covariance(), bias=0.02)


@pytest.mark.parametrize("sde_name", ["vp", pytest.param("ve", marks=pytest.mark.slow), pytest.param("ou", marks=pytest.mark.slow)])
def test_adaptive_sde_reaches_the_two_sample_floor_on_a_mixture(sde_name):
    # A sliced W2 between finite samples fluctuates by ~25% of its mean at any size, so the solver's sample is cut
    # into chunks, each compared with a fresh draw of the exact law at t_min, and the mean is compared with the mean
    # of as many two-sample floors: within 3 standard errors of the difference.
    sde, mixture = SDES[sde_name](), DATA["mixture"]()
    chunks, n = 16, 1000
    law = mixture.marginal(sde, sde.default_t_min)
    directions = random_projections(2, 128, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    result = sd.sample(sde, mixture.score_model(sde), "adaptive_sde", shape=(chunks * n, 2), dtype=torch.float64,
                       generator=torch.Generator().manual_seed(3))
    solver = torch.tensor([sliced_wasserstein(x, law.sample(n, g), directions) for x in result.x.split(n)])
    floor = torch.tensor([sliced_wasserstein(law.sample(n, g), law.sample(n, g), directions) for _ in range(chunks)])
    standard_error = ((solver.var() + floor.var()) / chunks).sqrt()
    assert solver.mean() < floor.mean() + 3 * standard_error


def test_adaptive_sde_counts_and_denoises():
    sde, mixture = SDES["vp"](), DATA["mixture"]()
    model = mixture.score_model(sde)
    run = lambda **kw: sd.sample(sde, model, "adaptive_sde", shape=(64, 2), dtype=torch.float64,  # noqa: E731
                                 generator=torch.Generator().manual_seed(5), **kw)
    plain, denoised = run(), run(denoise=True)  # the paper's final denoising step is sample's one denoise option
    stats = plain.stats
    assert stats["attempts"] == stats["accepted_steps"] + stats["rejected_steps"]
    # One evaluation per attempt, plus one per accepted step (a rejected step reuses F(x, t)).
    assert plain.nfe == stats["attempts"] + stats["accepted_steps"]
    assert denoised.nfe == plain.nfe + 1
    torch.testing.assert_close(denoised.x, model.x0(plain.x, sde.default_t_min))
    capped = run(max_nfe=40)
    assert capped.nfe <= 40 and capped.stats["budget_limited_steps"] >= 1 and torch.isfinite(capped.x).all()
    assert run(extrapolation=False).nfe > 0


@pytest.mark.parametrize("solver, options", [("dopri5", {}), ("bosh3", dict(per_sample=True)), ("adaptive_sde", {}),
                                              ("adaptive_sde", dict(per_sample=True))])
def test_any_tensor_rank(solver, options):
    # Image-shaped samples give the flat samples' result: norms, steps and noise do not depend on the layout.
    flat = sd.GaussianMixture.random(16, 2, generator=torch.Generator().manual_seed(6))
    image = sd.GaussianMixture(flat.weights, flat.means, flat.covs, event_shape=(1, 4, 4))
    sde = SDES["vp"]()
    x_T = sde.prior_sample((32, 16), torch.Generator().manual_seed(7), dtype=torch.float64)
    run = lambda data, x: sd.sample(sde, data.score_model(sde), solver, x_T=x, generator=torch.Generator().manual_seed(8), **options)  # noqa: E731
    a, b = run(image, x_T.reshape(32, 1, 4, 4)), run(flat, x_T)
    assert a.x.shape == (32, 1, 4, 4) and a.nfe == b.nfe
    torch.testing.assert_close(a.x.reshape(32, 16), b.x, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("solver, options", [("dopri5", {}), ("bosh3", dict(variable="t")), ("adaptive_sde", {}),
                                              ("adaptive_sde", dict(per_sample=True))])
def test_float32_end_to_end(solver, options):
    sde, mixture = SDES["ve"](), DATA["mixture"]()
    result = sd.sample(sde, mixture.score_model(sde), solver, shape=(32, 2), generator=torch.Generator().manual_seed(9), **options)
    assert result.x.dtype == torch.float32 and torch.isfinite(result.x).all()


def test_a_sliver_of_a_last_step_is_stretched_away():
    """On the arena's ring under EDM at 1e-5, the step before the last ends 0.2% of its size short of t_min: without
    stretching, a whole step of 6 evaluations covers that sliver; with it (the default), the step reaches t_min."""
    sde, mixture = sd.EDMSDE(), sd.GaussianMixture.ring()
    model = mixture.score_model(sde)
    x_T = mixture.marginal(sde, sde.T).sample(256, torch.Generator().manual_seed(1), dtype=torch.float64)
    runs = {stretch: sd.sample(sde, model, "dopri5", x_T=x_T, rtol=1e-5, atol=1e-5, stretch=stretch, keep_trajectory=True)
            for stretch in (1.0, 1.01)}
    lam = sde.log_snr(runs[1.0].times)
    assert (lam[-1] - lam[-2]) < 0.01 * (lam[-2] - lam[-3])  # the sliver
    assert runs[1.01].nfe == runs[1.0].nfe - 6 and runs[1.01].stats["accepted_steps"] == runs[1.0].stats["accepted_steps"] - 1
    assert torch.equal(runs[1.01].times[:-1], runs[1.0].times[:-2])
    with pytest.raises(ValueError, match="stretch"):
        sd.solvers.get("dopri5", stretch=0.9)
