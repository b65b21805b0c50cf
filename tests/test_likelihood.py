"""Likelihood through the probability-flow ODE, against exact Gaussian-mixture densities (float64, exact scores).

With the exact score the flow maps p_eps onto p_T, so log p_eps(x0) = log p_T(x_T) + int_eps^T div F dt holds
exactly; the tests use the exact marginals at eps and at T (`GaussianMixture.marginal`) and check the default
prior separately, so that neither the smoothing at eps nor the prior mismatch at T hides or fakes an error.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

import sde_diffusion as sd
from sde_diffusion.likelihood import Quantization, bits_per_dim, draw_probes, evaluate_bits_per_dim, log_prob
from sde_diffusion.solvers import AdaptiveController, DiffusionProblem, Solver

from .helpers import observed_order

SDES = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE(sigma_min=0.01, sigma_max=50.0), "ou": sd.OUSDE()}
EPS = 1e-5
TOL_PER_DIM = 1e-3  # nats per dimension: the accuracy the likelihood promises at tight solver tolerance


def _gaussian() -> sd.GaussianMixture:
    """A correlated 3-D Gaussian away from the origin (so that the prior at T is visibly not p_T)."""
    a = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.5, 0.0], [-0.3, 0.2, 0.3]], dtype=torch.float64)
    return sd.GaussianMixture.gaussian([1.5, -1.0, 0.5], a @ a.T)


DATA = {
    "gaussian": _gaussian,
    "mix2d": lambda: sd.GaussianMixture.random(2, 3, generator=torch.Generator().manual_seed(1)),
    "mix8d": lambda: sd.GaussianMixture.random(8, 4, generator=torch.Generator().manual_seed(2)),
}


def _per_dim_error(result, exact, dim) -> float:
    return float(((result - exact).abs() / dim).max())


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("name", SDES)
def test_exact_divergence_matches_the_exact_density(name, data):
    sde, mix = SDES[name], DATA[data]()
    x0 = mix.sample(12, torch.Generator().manual_seed(3))
    p_T = mix.marginal(sde, sde.T)
    result = log_prob(sde, mix.score_model(sde), x0, eps=EPS, rtol=1e-8, atol=1e-8, prior_log_prob=p_T.log_prob)
    exact = mix.marginal(sde, EPS).log_prob(x0)
    assert _per_dim_error(result.log_prob, exact, mix.dim) < TOL_PER_DIM
    # At rtol = atol = 1e-8 the solver's own error is ~1e-7 nats/dim (benchmarks/likelihood_accuracy.py); a
    # hundredfold margin still catches any modelling slip of the size of p_0 vs p_eps (~1e-4) or of the prior.
    assert _per_dim_error(result.log_prob, exact, mix.dim) < 1e-5
    assert torch.allclose(result.prior_log_prob, p_T.log_prob(result.x_T))
    assert torch.allclose(result.log_prob, result.prior_log_prob + result.delta_log_prob)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_default_prior_and_why_the_comparison_uses_the_exact_one(name):
    """The default prior is sde.prior_log_prob at x_T. For data away from the origin it differs from p_T by more
    than 1e-3 nats/dim, so the comparison above, made with the default prior, would fail: it can see a wrong prior."""
    sde, mix = SDES[name], DATA["mix8d"]()
    x0 = mix.sample(12, torch.Generator().manual_seed(4))
    result = log_prob(sde, mix.score_model(sde), x0, eps=EPS, rtol=1e-8, atol=1e-8)
    assert torch.allclose(result.prior_log_prob, sde.prior_log_prob(result.x_T))
    exact = mix.marginal(sde, EPS).log_prob(x0)
    corrected = result.delta_log_prob + mix.marginal(sde, sde.T).log_prob(result.x_T)
    assert _per_dim_error(corrected, exact, mix.dim) < 1e-5
    assert _per_dim_error(result.log_prob, exact, mix.dim) > TOL_PER_DIM


def test_p_eps_is_not_p_0_for_ve():
    """VE smooths the data by sigma(eps) >= sigma_min: the likelihood is that of p_eps, not of the raw data."""
    sde, mix = SDES["ve"], DATA["mix2d"]()
    x0 = mix.sample(12, torch.Generator().manual_seed(5))
    result = log_prob(sde, mix.score_model(sde), x0, eps=EPS, rtol=1e-8, atol=1e-8, prior_log_prob=mix.marginal(sde, sde.T).log_prob)
    assert _per_dim_error(result.log_prob, mix.marginal(sde, EPS).log_prob(x0), 2) < 1e-5
    assert _per_dim_error(result.log_prob, mix.log_prob(x0), 2) > TOL_PER_DIM


def test_user_built_sde():
    sde = sd.LinearSDE.from_beta(lambda t: 0.1 + 19.9 * t)
    mix = DATA["mix2d"]()
    x0 = mix.sample(8, torch.Generator().manual_seed(6))
    result = log_prob(sde, mix.score_model(sde), x0, eps=1e-3, rtol=1e-8, atol=1e-8, prior_log_prob=mix.marginal(sde, sde.T).log_prob)
    assert _per_dim_error(result.log_prob, mix.marginal(sde, 1e-3).log_prob(x0), 2) < 1e-5


# -- torch solvers -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SDES)
def test_rk4_on_the_log_snr_grid(name):
    sde, mix = SDES[name], DATA["mix8d"]()
    x0 = mix.sample(8, torch.Generator().manual_seed(7))
    result = log_prob(sde, mix.score_model(sde), x0, eps=EPS, method="rk4", steps=128, prior_log_prob=mix.marginal(sde, sde.T).log_prob)
    assert result.nfe == 4 * 128
    assert _per_dim_error(result.log_prob, mix.marginal(sde, EPS).log_prob(x0), mix.dim) < TOL_PER_DIM


@pytest.mark.parametrize("method, order", [("heun", 2), ("rk4", 4)])
def test_order_of_convergence(method, order):
    """The log-likelihood converges at the solver's order (VE: the log-SNR grid is uniform in t)."""
    sde, mix = SDES["ve"], DATA["mix2d"]()
    x0 = mix.sample(8, torch.Generator().manual_seed(8))
    model, prior = mix.score_model(sde), mix.marginal(sde, sde.T).log_prob
    exact = mix.marginal(sde, EPS).log_prob(x0)
    steps = [64, 128, 256]
    errors = [float((log_prob(sde, model, x0, eps=EPS, method=method, steps=n, prior_log_prob=prior).log_prob - exact).abs().max()) for n in steps]
    assert abs(observed_order([1 / n for n in steps], errors) - order) < 0.3, errors


def test_nfe_is_what_the_wrapper_counted():
    """One drift-and-divergence evaluation is one network call, whatever the number of backward passes."""
    sde, mix = SDES["vp"], DATA["mix2d"]()
    x0 = mix.sample(4, torch.Generator().manual_seed(9))
    model = mix.score_model(sde)
    scipy_run = log_prob(sde, model, x0, rtol=1e-6, atol=1e-6)
    assert scipy_run.nfe == scipy_run.stats["scipy_nfev"] > 0
    assert scipy_run.stats["backward_passes"] == 2 * scipy_run.nfe + 1  # exact trace: D = 2 each, + 1 check
    exact = log_prob(sde, model, x0, method="heun", steps=10)
    hutch = log_prob(sde, model, x0, method="heun", steps=10, divergence="hutchinson", n_probes=3, generator=torch.Generator().manual_seed(0))
    assert exact.nfe == hutch.nfe == 20
    assert hutch.stats["backward_passes"] == 3 * 20 + 1
    assert model.nfe == scipy_run.nfe + 40


class _HeunEuler(Solver):
    """A user's embedded Heun(2) / Euler(1) pair: a step with an error estimate, and the library's controller."""

    name = "heun_euler_test"
    order, error_order, evaluations_per_step, adaptive = 2, 1, 2, True

    def __init__(self, rtol: float = 1e-6, atol: float = 1e-6):
        self.rtol, self.atol = rtol, atol

    def controller(self, times):
        return AdaptiveController(self.rtol, self.atol, h_init=0.01).between(times[0], times[-1])

    def step(self, term, y, t, t_next, state, generator):
        h = (t_next - t).to(y.dtype)
        k1 = term.drift(y, t.to(y.dtype))
        k2 = term.drift(y + h * k1, t_next.to(y.dtype))
        return y + 0.5 * h * (k1 + k2), 0.5 * h * (k2 - k1), state


def test_an_adaptive_torch_solver_plugs_in():
    sde, mix = SDES["ou"], DATA["mix2d"]()
    x0 = mix.sample(8, torch.Generator().manual_seed(10))
    model = mix.score_model(sde)
    result = log_prob(sde, model, x0, eps=EPS, method=_HeunEuler(1e-5, 1e-5), prior_log_prob=mix.marginal(sde, sde.T).log_prob)
    assert result.stats["accepted_steps"] > 10 and result.nfe >= 2 * result.stats["accepted_steps"]
    assert result.nfe == 2 * result.stats["attempts"]
    assert _per_dim_error(result.log_prob, mix.marginal(sde, EPS).log_prob(x0), 2) < TOL_PER_DIM


@pytest.mark.parametrize("method", ["heun", "rk4", "scipy", "bosh3", "dopri5", "tsit5"])
def test_every_ode_solver_of_terms_integrates_the_likelihood(method):
    """Every deterministic solver of generic terms, by name, the embedded pairs included (integrating in t, whatever
    their log-SNR default for sampling), reaches the exact log p_eps."""
    sde, mix = SDES["vp"], DATA["mix2d"]()
    x0 = mix.sample(6, torch.Generator().manual_seed(12))
    options = dict(steps=400) if method in ("heun", "rk4") else dict(rtol=1e-6, atol=1e-6)
    result = log_prob(sde, mix.score_model(sde), x0, eps=1e-3, method=method, prior_log_prob=mix.marginal(sde, sde.T).log_prob, **options)
    assert _per_dim_error(result.log_prob, mix.marginal(sde, 1e-3).log_prob(x0), 2) < TOL_PER_DIM


# -- Hutchinson ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    """n copies of each point each get their own probe in one solve: n independent estimates. Their mean lies
    within 4 standard errors of the exact log p_eps; averaging 4 probes cuts the variance about fourfold."""
    sde, mix = SDES["vp"], DATA["mix8d"]()
    n, points = 256, mix.sample(2, torch.Generator().manual_seed(11))
    x0 = points.repeat_interleave(n, dim=0)
    model, prior = mix.score_model(sde), mix.marginal(sde, sde.T).log_prob
    exact = mix.marginal(sde, EPS).log_prob(points)
    variances = []
    for n_probes in (1, 4):
        est = log_prob(
            sde, model, x0, eps=EPS, rtol=1e-7, atol=1e-7, divergence="hutchinson", probe=probe, n_probes=n_probes,
            generator=torch.Generator().manual_seed(12), prior_log_prob=prior,
        ).log_prob.reshape(2, n)
        mean, se = est.mean(1), est.std(1) / math.sqrt(n)
        assert (se > 0).all()
        assert ((mean - exact).abs() < 4 * se).all(), (mean - exact, se)
        variances.append(est.var(1))
    # The log of a sample variance has standard error ~ sqrt(2 / (n - 1)); a ratio of two, sqrt(2) times that.
    ratio, spread = variances[0] / variances[1], 5 * math.sqrt(4 / (n - 1))
    assert ((ratio.log() - math.log(4)).abs() < spread).all(), ratio


def _gaussian_flow_integral(sde, cov, eps) -> torch.Tensor:
    """M = int_eps^T dF/dx dt for Gaussian data, where dF/dx = f(t) I + g(t)^2 / 2 (alpha^2 C + sigma^2 I)^-1
    does not depend on x: computed eigenvalue by eigenvalue with scipy's quad."""
    lam, U = torch.linalg.eigh(cov)

    def integrand(t, eigenvalue):
        t = torch.tensor(t, dtype=torch.float64)
        return float(sde.f(t) + 0.5 * sde.g2(t) / (sde.alpha(t) ** 2 * eigenvalue + sde.sigma(t) ** 2))

    m = [integrate.quad(integrand, eps, sde.T, args=(float(ev),), epsabs=1e-12, epsrel=1e-12, limit=200)[0] for ev in lam]
    return U @ torch.diag(torch.tensor(m, dtype=torch.float64)) @ U.T


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_probes_are_held_fixed_through_the_solve(probe):
    """For Gaussian data the Jacobian of the drift does not depend on x, so with the probes v_k held fixed the
    estimate is exactly mean_k v_k^T M v_k with M = int dF/dx dt; probes redrawn along the way would not give it."""
    sde, mix = SDES["vp"], _gaussian()
    x0 = mix.sample(6, torch.Generator().manual_seed(13))
    result = log_prob(
        sde, mix.score_model(sde), x0, eps=EPS, rtol=1e-9, atol=1e-9, divergence="hutchinson", probe=probe, n_probes=3,
        generator=torch.Generator().manual_seed(14),
    )
    v = draw_probes(probe, 3, x0, torch.Generator().manual_seed(14))
    M = _gaussian_flow_integral(sde, mix.covs[0], EPS)
    expected = torch.einsum("kbi,ij,kbj->b", v, M, v) / 3
    assert torch.allclose(result.delta_log_prob, expected, atol=1e-6)
    assert not torch.allclose(expected, M.trace().expand(6), atol=1e-2)  # the estimate is a real, noisy one


# -- bits per dimension ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [16, 256])
def test_bits_per_dim_two_ways(levels):
    """Toy 4x4 "images": zero-mean Gaussian pixels with their own stds, quantised to `levels` values in [-1, 1].

    (a) the ODE route (default prior) and the analytic density agree on the same dequantisation draws;
    (b) averaged over draws, they estimate the closed-form dequantised bound
        E_u[-log N(y + w (u - 1/2))] = sum_i ((y_i - mu_i)^2 + w^2 / 12) / (2 s_i^2) + log(2 pi s_i^2) / 2;
    (c) that bound lies just above the exact discrete -log2 P(y) / D (normal CDFs over each bin): the Jensen gap
        (~ w^2 (y - mu)^2 / (24 s^4) per dimension) is small, and the offset -log2 w is the right one.
    """
    g = torch.Generator().manual_seed(15)
    stds = 0.2 + 0.2 * torch.rand(16, generator=g, dtype=torch.float64)
    mix = sd.GaussianMixture.gaussian(torch.zeros(16), torch.diag(stds**2), event_shape=(1, 4, 4))
    quant = Quantization(levels, -1.0, 1.0)
    w = 2 / (levels - 1)
    y = (torch.round((mix.sample(24, g) + 1) / w) * w - 1).clamp(-1, 1)
    sde, n_dequant, D = SDES["vp"], 3, 16

    result = bits_per_dim(sde, mix.score_model(sde), y, levels=levels, n_dequant=n_dequant, rtol=1e-7, atol=1e-7, generator=torch.Generator().manual_seed(16))
    assert result.draws.shape == (n_dequant, 24) and result.stats["bin_width"] == pytest.approx(w)
    g_again = torch.Generator().manual_seed(16)
    analytic = torch.stack([quant.bits_per_dim(mix.log_prob(quant.dequantize(y, g_again)), D) for _ in range(n_dequant)])
    assert ((result.draws - analytic).abs() < TOL_PER_DIM / math.log(2)).all()  # (a)

    yf, s = y.reshape(24, D), stds
    expected_bound = ((0.5 * ((yf**2 + w**2 / 12) / s**2 + torch.log(2 * math.pi * s**2))).sum(1) / D - math.log(w)) / math.log(2)
    deviation = result.bits_per_dim - expected_bound
    assert abs(float(deviation.mean())) < 4 * float(deviation.std()) / math.sqrt(24) + TOL_PER_DIM / math.log(2)  # (b)

    cdf = lambda z: 0.5 * torch.special.erfc(-z / math.sqrt(2))  # noqa: E731
    log_P = torch.log(cdf((yf + w / 2) / s) - cdf((yf - w / 2) / s)).sum(1)
    exact_bpd = -log_P / D / math.log(2)
    gap = expected_bound - exact_bpd
    # Bins of width (high - low) / levels instead would shift bits/dim by log2(levels / (levels - 1)); the
    # Jensen gap is well below half of that, so the comparison tells the two conventions apart.
    assert (gap >= 0).all() and (gap < 0.5 * math.log2(levels / (levels - 1))).all(), gap  # (c)


def test_bits_per_dim_offset_follows_the_scaling():
    """The same data in [0, 1] or in [-1, 1] (twice as wide) differ by exactly 1 bit/dim in the bin width and by
    the change of variables in the density: the two cancel, as they must for the same discrete distribution."""
    mix = sd.GaussianMixture.gaussian(torch.zeros(2), 0.04 * torch.eye(2))
    y = (torch.round((mix.sample(16, torch.Generator().manual_seed(17)) + 1) * 15 / 2) * 2 / 15 - 1).clamp(-1, 1)
    wide, narrow = Quantization(16, -1.0, 1.0), Quantization(16, 0.0, 1.0)
    assert narrow.bin_width == pytest.approx(wide.bin_width / 2)
    x = wide.dequantize(y, torch.Generator().manual_seed(18))
    half = sd.GaussianMixture.gaussian(torch.full((2,), 0.5), 0.01 * torch.eye(2))  # law of (x + 1) / 2
    assert torch.allclose(wide.bits_per_dim(mix.log_prob(x), 2), narrow.bits_per_dim(half.log_prob((x + 1) / 2), 2))


def test_evaluate_bits_per_dim_from_a_hydra_config():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "likelihood" / "bpd.yaml")
    cfg.n_dequant, cfg.batch_size, cfg.divergence = 2, 5, "exact"
    evaluate = instantiate(cfg)
    mix = sd.GaussianMixture.gaussian(torch.zeros(2), 0.04 * torch.eye(2))
    y = (torch.round((mix.sample(12, torch.Generator().manual_seed(19)) + 1) * 127.5) / 127.5 - 1).clamp(-1, 1)
    sde = SDES["vp"]
    summary = evaluate(sde, mix.score_model(sde), y)
    assert summary["n_samples"] == 12 and summary["n_batches"] == 3 and summary["n_dequant"] == 2
    loader = [(y, None)]  # a DataLoader of (x, label) works the same: one batch, the same draws as the call below
    again = evaluate_bits_per_dim(sde, mix.score_model(sde), loader, n_dequant=2, divergence="exact", seed=cfg.seed)
    direct = bits_per_dim(sde, mix.score_model(sde), y, n_dequant=2, generator=torch.Generator().manual_seed(cfg.seed))
    assert again["n_samples"] == 12 and again["bits_per_dim"] == pytest.approx(direct.mean, abs=1e-12)
    # Other batches draw other dequantisation noise: two estimates of the same mean, each with standard error
    # (std over draws) / sqrt(draws * samples), agree within 5 standard errors of their difference.
    se = float(direct.draws.std(0).mean()) / math.sqrt(2 * 12)
    assert summary["bits_per_dim"] == pytest.approx(direct.mean, abs=5 * math.sqrt(2) * se)


def test_float32_works():
    sde, mix = SDES["vp"], DATA["mix2d"]()
    x0 = mix.sample(8, torch.Generator().manual_seed(20))
    r32 = log_prob(sde, mix.to(dtype=torch.float32).score_model(sde), x0.float(), rtol=1e-6, atol=1e-6)
    r64 = log_prob(sde, mix.score_model(sde), x0, rtol=1e-6, atol=1e-6)
    assert r32.log_prob.dtype == torch.float32
    assert _per_dim_error(r32.log_prob.double(), r64.log_prob, 2) < 1e-3


# -- bad input -------------------------------------------------------------------------------------------------------
def _setup():
    sde, mix = SDES["vp"], DATA["mix2d"]()
    return sde, mix.score_model(sde), mix.sample(4, torch.Generator().manual_seed(21))


BAD_LOG_PROB = {
    "1-D x0": (lambda s, m, x: log_prob(s, m, x[0]), ValueError, r"shape \(batch, \*event_shape\).*x0\[None\]"),
    "wrong event shape": (lambda s, m, x: log_prob(s, m, x[:, :1]), ValueError, "shape"),
    "NaN": (lambda s, m, x: log_prob(s, m, torch.where(torch.arange(4)[:, None] == 2, float("nan"), x)), ValueError, "NaN or inf in 1 sample.*index 2"),
    "integer": (lambda s, m, x: log_prob(s, m, x.long()), ValueError, "floating point"),
    "empty": (lambda s, m, x: log_prob(s, m, x[:0]), ValueError, "empty"),
    "not a tensor": (lambda s, m, x: log_prob(s, m, x.tolist()), TypeError, "torch.Tensor"),
    "eps": (lambda s, m, x: log_prob(s, m, x, eps=1.5), ValueError, "eps must satisfy"),
    "divergence": (lambda s, m, x: log_prob(s, m, x, divergence="trace"), ValueError, "unknown divergence"),
    "probe": (lambda s, m, x: log_prob(s, m, x, divergence="hutchinson", probe="sphere"), ValueError, "unknown probe"),
    "n_probes": (lambda s, m, x: log_prob(s, m, x, divergence="hutchinson", n_probes=0), ValueError, "n_probes"),
    "method": (lambda s, m, x: log_prob(s, m, x, method="rk45"), ValueError, "unknown solver.*RK45"),
    "stochastic": (lambda s, m, x: log_prob(s, m, x, method="euler_maruyama"), ValueError, "ODE solver"),
    "steps with scipy": (lambda s, m, x: log_prob(s, m, x, steps=10), ValueError, "steps applies to fixed-step"),
    "tolerance": (lambda s, m, x: log_prob(s, m, x, rtol=0.0), ValueError, "must be positive"),
    "tolerance for rk4": (lambda s, m, x: log_prob(s, m, x, method="rk4", rtol=1e-3), ValueError, "no option"),
    "prior shape": (lambda s, m, x: log_prob(s, m, x, method="euler", steps=2, prior_log_prob=lambda z: z), ValueError, "one value per sample"),
    "foreign score model": (lambda s, m, x: log_prob(sd.VESDE(), m, x), ValueError, "built for"),
}


@pytest.mark.parametrize("case", BAD_LOG_PROB)
def test_log_prob_rejects_bad_input(case):
    call, error, match = BAD_LOG_PROB[case]
    with pytest.raises(error, match=match):
        call(*_setup())


def test_solvers_of_the_diffusion_problem_are_refused_clearly():
    class _ReadsTheSDE(Solver):
        name, needs = "reads_sde", DiffusionProblem

        def step(self, problem, x, t, t_next, state, generator):
            return x * problem.sde.alpha(t_next) / problem.sde.alpha(t), None, state

    for method in (_ReadsTheSDE(), "dpm_solver_pp_2m", "edm_heun"):
        with pytest.raises(ValueError, match="steps the diffusion problem itself"):
            log_prob(*_setup(), method=method, steps=2)


def test_detached_network_is_refused():
    _, _, x = _setup()
    with pytest.raises(RuntimeError, match="differentiable in x"):
        log_prob(sd.VESDE(), lambda x, t: -x.detach(), x, method="euler", steps=2)


BAD_BPD = {
    "outside the range": (lambda y: y * 1.5, "declared range \\[-1, 1\\]; got values in \\[-1.5"),
    "[0, 255] data": (lambda y: torch.round((y + 1) * 127.5), "declared range"),
    "dequantised data": (lambda y: (y + 0.001).clamp(-1, 1), "not quantised to 256 levels"),
    "NaN": (lambda y: torch.where(y > 0.5, float("nan"), y), "NaN"),
}


@pytest.mark.parametrize("case", BAD_BPD)
def test_bits_per_dim_rejects_bad_data(case):
    sde, model, x = _setup()
    y = (torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1).clamp(-1, 1)
    y[0, 0] = 1.0  # make sure each case has values at the edge of the range
    bad, match = BAD_BPD[case]
    with pytest.raises(ValueError, match=match):
        bits_per_dim(sde, model, bad(y))


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(levels=1), "levels"), (dict(data_range=(1.0, -1.0)), "low < high"), (dict(n_dequant=0), "n_dequant")],
)
def test_bits_per_dim_rejects_bad_options(kwargs, match):
    sde, model, x = _setup()
    y = -torch.ones_like(x)  # the lowest level: quantised data for any number of levels in [-1, 1]
    with pytest.raises(ValueError, match=match):
        bits_per_dim(sde, model, y, **kwargs)
