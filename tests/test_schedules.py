"""Schedules brought from elsewhere: marginal coefficients, discrete DDPM tables, rectified flow, the flow prediction.

Each is checked against closed forms where one exists, and every registered solver is run on each against the exact
Gaussian marginal (moments within 5 standard errors at n = 4000, plus a stated discretisation budget).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sde_diffusion as sd
from tests.helpers import assert_moments

F64 = torch.float64


def linear_betas(n: int = 1000) -> torch.Tensor:
    return torch.linspace(1e-4, 0.02, n, dtype=F64)


def scaled_linear_betas(n: int = 1000) -> torch.Tensor:
    return torch.linspace(0.00085**0.5, 0.012**0.5, n, dtype=F64) ** 2


def cosine_betas(n: int = 1000, s: float = 0.008) -> torch.Tensor:
    """diffusers' squaredcos_cap_v2 table (Nichol & Dhariwal 2021), betas capped at 0.999."""
    f = lambda i: math.cos((i / n + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(n)], dtype=F64)


def table(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(1 - betas, 0)


def sdes():
    cosine_marginal = sd.LinearSDE.from_alpha_sigma(lambda t: torch.cos(0.49 * math.pi * t), lambda t: torch.sin(0.49 * math.pi * t))
    return {
        "alphas_cumprod": sd.LinearSDE.from_alphas_cumprod(table(scaled_linear_betas())),
        "rectified_flow": sd.RectifiedFlowSDE(),
        "rectified_flow_shift3": sd.RectifiedFlowSDE(shift=3.0),
        "alpha_sigma": cosine_marginal,
    }


SDES = sdes()


# -- from_alphas_cumprod ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("betas", [linear_betas, scaled_linear_betas, cosine_betas])
def test_a_table_is_reproduced_at_its_timesteps(betas):
    abar = table(betas())
    sde = sd.LinearSDE.from_alphas_cumprod(abar)
    t = sde.time_of_timestep(torch.arange(1000, dtype=F64))
    torch.testing.assert_close(sde.alpha(t) ** 2, abar, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.sigma(t) ** 2, 1 - abar, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(sde.timestep(t), torch.arange(1000, dtype=F64), rtol=0, atol=1e-9)
    between = torch.linspace(1e-3, 1.0, 9999, dtype=F64)
    torch.testing.assert_close(sde.t_of_log_snr(sde.log_snr(between)), between, rtol=1e-12, atol=1e-14)
    lam = sde.log_snr(torch.linspace(0, 1, 20001, dtype=F64))
    assert (lam[1:] < lam[:-1]).all()  # monotone between the nodes too


def test_a_table_of_the_vp_sde_gives_back_the_vp_sde():
    """Sampled at t_i = (i + 1) / N from the continuous VP SDE, the table's interpolant recovers it between nodes, to
    the accuracy of a cubic on steps h = 1 / N: about h^4 times lambda's fourth derivative, which grows like 1 / t^4
    near t = 0 (lambda ~ -log(t) / 2 there): 3e-4 at t = 3e-3, below 1e-6 from t = 0.02."""
    vp, n = sd.VPSDE(), 1000
    nodes = (torch.arange(n, dtype=F64) + 1) / n
    sde = sd.LinearSDE.from_alphas_cumprod(vp.alpha(nodes) ** 2)
    t = torch.linspace(2e-3, 1.0, 777, dtype=F64)
    error, later = (sde.log_snr(t) - vp.log_snr(t)).abs(), t >= 0.02
    assert error.max() < 1e-3 and error[later].max() < 1e-6
    assert ((sde.g2(t[later]) - vp.g2(t[later])) / vp.g2(t[later])).abs().max() < 1e-3  # a C1 interpolant's slope


def test_a_zero_terminal_snr_table_gets_a_finite_log_snr():
    abar = table(linear_betas()).clone()
    abar[-1] = 0.0  # Lin et al. (2024): rescaled to zero terminal SNR
    sde = sd.LinearSDE.from_alphas_cumprod(abar)
    assert math.isclose(float(sde.alpha(torch.tensor(1.0, dtype=F64)) ** 2), 2.0**-24, rel_tol=1e-12)
    result = sd.sample(sde, sd.GaussianMixture.ring(4).score_model(sde), "dpm_solver_pp_2m", shape=(8, 2), dtype=F64)
    assert torch.isfinite(result.x).all()


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.tensor([0.9, 0.95, 0.5]), "decrease strictly"),
        (torch.tensor([0.9, 0.5, -0.1]), r"must lie in \(0, 1\]"),
        (torch.tensor([1.2, 0.5, 0.1]), r"must lie in \(0, 1\]"),
        (torch.tensor([0.9, 0.0, 0.0]), "decrease strictly|must lie"),
        (torch.tensor([1.0, 0.5, 0.1]), "no noise at the first timestep"),
        (torch.tensor([0.5]), "at least 2"),
        (torch.tensor([[0.9, 0.5], [0.3, 0.1]]), "1-D table"),
        (torch.tensor([0.9, float("nan"), 0.1]), "NaN"),
    ],
)
def test_bad_tables_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        sd.LinearSDE.from_alphas_cumprod(bad)


# -- from_alpha_sigma ---------------------------------------------------------------------------------------------
def test_coefficients_from_the_marginal_match_the_closed_form_vp():
    vp = sd.VPSDE()
    sde = sd.LinearSDE.from_alpha_sigma(vp.alpha, vp.sigma)
    t = torch.linspace(1e-3, 1.0, 101, dtype=F64)
    torch.testing.assert_close(sde.f(t), vp.f(t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sde.g2(t), vp.g2(t), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sde.t_of_log_snr(sde.log_snr(t)), t, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "alpha, sigma, message",
    [
        (lambda t: 1 - t / 2, lambda t: t * 0, "sigma.*positive"),
        (lambda t: 1 - t, lambda t: t, "alpha.*positive"),  # alpha(1) = 0
        (lambda t: 0.5 + 0 * t, lambda t: 1.5 - t, "decrease strictly"),  # increasing log-SNR
        (lambda t: t[:1], lambda t: t, "one finite value per time"),
        (lambda t: torch.from_numpy(np.cos(t.detach().numpy())), torch.sin, "differentiable by autograd"),
    ],
)
def test_bad_marginals_are_refused(alpha, sigma, message):
    with pytest.raises(ValueError, match=message):
        sd.LinearSDE.from_alpha_sigma(alpha, sigma)


# -- rectified flow and the flow prediction ----------------------------------------------------------------------
def test_rectified_flow_coefficients_and_the_shifted_grid():
    sde = sd.RectifiedFlowSDE(shift=3.0)
    t = torch.linspace(1e-3, sde.T, 50, dtype=F64)
    general = sd.LinearSDE.from_alpha_sigma(sde.alpha, sde.sigma, T=sde.T)  # f and g^2 by autograd from the marginal
    torch.testing.assert_close(sde.f(t), general.f(t), rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.g2(t), general.g2(t), rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.t_of_log_snr(sde.log_snr(t)), t, rtol=1e-12, atol=0)
    grid = sd.solvers.get_grid(sde.default_grid)(sde, 10, sde.default_t_min)
    u = torch.linspace(float(grid[0] / (3 - 2 * grid[0])), float(grid[-1] / (3 - 2 * grid[-1])), 11, dtype=F64)
    torch.testing.assert_close(grid, 3 * u / (1 + 2 * u), rtol=1e-12, atol=0)  # SD3's t -> shift t / (1 + (shift - 1) t)


def test_the_flow_prediction_is_eps_minus_x0_and_converts_exactly():
    sde, mixture = sd.RectifiedFlowSDE(), sd.GaussianMixture.random(3, 2, generator=torch.Generator().manual_seed(0))
    exact = mixture.score_model(sde)
    flow = sd.ScoreModel(lambda x, t: exact.eps(x, t) - exact.x0(x, t), sde, prediction="flow")
    x, t = torch.randn(16, 3, dtype=F64), torch.rand(16, dtype=F64) * 0.9 + 0.05
    for name in ("score", "eps", "x0", "v"):
        torch.testing.assert_close(getattr(flow, name)(x, t), getattr(exact, name)(x, t), rtol=1e-10, atol=1e-10)
    # On rectified flow the probability-flow drift is the flow velocity itself: dx/dt = eps_hat - x0_hat.
    drift = sd.ReverseSDE(sde, flow).probability_flow().drift(x, t)
    torch.testing.assert_close(drift, flow.flow(x, t), rtol=1e-10, atol=1e-10)


def test_conditional_flow_matching_trains_a_toy_model_that_every_solver_samples():
    from sde_diffusion.networks import MLP
    from sde_diffusion.training import DSMLoss

    torch.manual_seed(0)
    sde, data = sd.RectifiedFlowSDE(), sd.GaussianMixture.gaussian([1.0, -0.5], [[0.3, 0.1], [0.1, 0.2]])
    network = MLP(2, width=64, depth=2, T=sde.T)
    loss = DSMLoss(sde, prediction="flow", weighting="target")  # E || u_theta - (eps - x0) ||^2
    optimiser = torch.optim.Adam(network.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(300):
        value = loss(network, data.sample(256, g).float(), g)
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
        losses.append(float(value.detach()))
    assert sum(losses[-20:]) / 20 < 0.7 * sum(losses[:20]) / 20
    model = sd.ScoreModel(network, sde, prediction="flow")
    with torch.no_grad():
        for name in sd.solvers.names():
            solver = sd.solvers.get(name)
            x = sd.sample(sde, model, solver, shape=(512, 2), generator=torch.Generator().manual_seed(2), denoise=True).x
            assert torch.isfinite(x).all(), name
            if not solver.stochastic:  # the learned flow's own samples (the reverse-SDE samplers need a better score)
                assert (x.mean(0) - torch.tensor([1.0, -0.5])).abs().max() < 0.2, (name, x.mean(0))


# -- every solver on every imported schedule -----------------------------------------------------------------------
GAUSSIAN = sd.GaussianMixture.gaussian([1.0, -0.5], [[1.0, 0.6], [0.6, 0.8]])
STEPS = {"euler_maruyama": 500, "reverse_diffusion": 500, "ancestral": 500, "pc": 500, "torchsde": 500, "euler": 500,
         "sde_dpm_solver_pp_2m": 200, "ddim": 100, "dpm_solver_1": 100, "lms": 50}
OPTIONS = {"pc": dict(snr=0.05), "bosh3": dict(rtol=1e-5, atol=1e-5), "dopri5": dict(rtol=1e-5, atol=1e-5),
           "tsit5": dict(rtol=1e-5, atol=1e-5), "adaptive_dpm_solver": dict(rtol=1e-4, atol=1e-4),
           "adaptive_sde": dict(rtol=0.01, atol=0.005)}


@pytest.mark.slow
@pytest.mark.parametrize("solver", sd.solvers.names())
@pytest.mark.parametrize("sde_name", SDES)
def test_every_solver_matches_the_gaussian_marginal(sde_name, solver):
    sde = SDES[sde_name]
    g = torch.Generator().manual_seed(3)
    x_T = GAUSSIAN.marginal(sde, sde.T).sample(4000, g)
    result = sd.sample(sde, GAUSSIAN.score_model(sde), solver, x_T=x_T, steps=STEPS.get(solver, 30), generator=g,
                       **OPTIONS.get(solver, {}))
    target = GAUSSIAN.marginal(sde, sde.default_t_min)
    assert_moments(result.x, target.mean(), target.covariance(), bias=0.03)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.EDMSDE(), sd.VESDE()], ids=["vp", "edm", "ve"])
def test_the_power_grid_holds_the_edm_and_log_snr_grids_and_the_piecewise_grid_picks_by_steps(sde):
    from sde_diffusion.solvers.grids import PiecewiseGrid, PowerGrid

    t_min, t_max = sde.default_t_min, sde.T
    for steps in (1, 7, 30):
        edm = sd.solvers.EDMGrid(7.0)(sde, steps, t_min, t_max)
        log_snr = sd.solvers.LogSNRGrid()(sde, steps, t_min, t_max)
        torch.testing.assert_close(PowerGrid(1 / 7)(sde, steps, t_min, t_max), edm, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(PowerGrid(0.0)(sde, steps, t_min, t_max), log_snr, rtol=1e-9, atol=1e-12)
        near_zero = PowerGrid(1e-9)(sde, steps, t_min, t_max)  # the limit kappa -> 0 is continuous
        torch.testing.assert_close(near_zero, log_snr, rtol=1e-6, atol=1e-9)
        dense_low = PowerGrid(-0.2)(sde, steps, t_min, t_max)
        assert torch.all(dense_low[1:] < dense_low[:-1]) and dense_low[0] == t_max and dense_low[-1] == t_min
    piecewise = PiecewiseGrid([(1, "edm"), (10, PowerGrid(0.0))])
    torch.testing.assert_close(piecewise(sde, 5, t_min, t_max), sd.solvers.EDMGrid()(sde, 5, t_min, t_max))
    torch.testing.assert_close(piecewise(sde, 12, t_min, t_max), sd.solvers.LogSNRGrid()(sde, 12, t_min, t_max))


def test_bad_power_and_piecewise_grids_are_refused():
    from sde_diffusion.solvers.grids import PiecewiseGrid, PowerGrid

    with pytest.raises(ValueError, match="kappa must be a finite number"):
        PowerGrid(float("nan"))
    with pytest.raises(ValueError, match="increasing order"):
        PiecewiseGrid([(10, "edm"), (5, "log_snr")])
    with pytest.raises(ValueError, match="increasing order"):
        PiecewiseGrid([])
