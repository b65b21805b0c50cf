"""Every formula of the seeds, checked numerically: posterior, reverse mean, score-noise equivalence, parameterisations."""

import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.discrete import DiscreteSchedule
from sde_diffusion.score import PREDICTIONS, eps_and_x0, target_from
from tests.conftest import all_linear_sdes


def product_of_gaussians(x0, x_t, alpha_t, alpha_bar_prev):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), by adding precisions (seed 003's derivation)."""
    a1, b1 = alpha_t / (1 - alpha_t), math.sqrt(alpha_t) / (1 - alpha_t) * x_t  # likelihood in x_{t-1}
    a2, b2 = 1 / (1 - alpha_bar_prev), math.sqrt(alpha_bar_prev) / (1 - alpha_bar_prev) * x0  # prior in x_{t-1}
    return (b1 + b2) / (a1 + a2), 1 / (a1 + a2)


def test_posterior_is_the_product_of_two_gaussians():
    sched = DiscreteSchedule.linear()
    g = torch.Generator().manual_seed(0)
    x0, x_t = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    for i in (1, 10, 500, 999):
        mean, var = sched.posterior(x0, x_t, i)
        ref_mean, ref_var = product_of_gaussians(x0, x_t, sched.alphas[i].item(), sched.alpha_bars[i - 1].item())
        torch.testing.assert_close(mean, ref_mean)
        torch.testing.assert_close(var.squeeze(), torch.tensor(ref_var, dtype=torch.float64))


def test_posterior_against_monte_carlo():
    """Sample the chain x_0 -> x_{i-1} -> x_i; the regression of x_{i-1} on x_i matches mu~ and beta~."""
    sched = DiscreteSchedule.linear(n=100, beta_start=1e-3, beta_end=0.2)
    g = torch.Generator().manual_seed(1)
    i, n, x0 = 40, 400000, 0.7
    ab_prev = sched.alpha_bars[i - 1]
    x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
    x_t = sched.alphas[i].sqrt() * x_prev + sched.betas[i].sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
    slope = torch.cov(torch.stack([x_t, x_prev]))[0, 1] / x_t.var()
    resid_var = (x_prev - slope * x_t).var()
    mean, var = sched.posterior(torch.tensor([x0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64), i)
    coef_xt = sched.alphas[i].sqrt() * (1 - ab_prev) / (1 - sched.alpha_bars[i])
    assert abs(slope - coef_xt) < 5 / math.sqrt(n)
    assert abs(resid_var / var.item() - 1) < 5 * math.sqrt(2 / n)
    assert abs((x_prev - slope * x_t).mean() - mean.item()) < 5 * math.sqrt(var.item() / n)


def test_reverse_mean_from_eps_equals_posterior_mean_at_x0_hat():
    """mu_theta(x_t) = (x_t - beta / sqrt(1 - alpha_bar) eps) / sqrt(alpha) is mu~(x_t, x0_hat(eps))."""
    sched = DiscreteSchedule.linear()
    g = torch.Generator().manual_seed(2)
    x_t, eps = torch.randn(4, 2, 3, generator=g, dtype=torch.float64), torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    for i in (1, 100, 999):
        via_x0, _ = sched.posterior(sched.x0_from_eps(x_t, i, eps), x_t, i)
        torch.testing.assert_close(sched.reverse_mean_from_eps(x_t, i, eps), via_x0)


def test_score_noise_equivalence():
    """score = -eps / sqrt(1 - alpha_bar): the exact score of q(x_t | x_0) at x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps."""
    sched = DiscreteSchedule.linear()
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    i = 300
    x_t = sched.q_sample(x0, i, eps)
    ab = sched.alpha_bars[i]
    exact = -(x_t - ab.sqrt() * x0) / (1 - ab)  # grad log N(x_t; sqrt(ab) x0, (1 - ab) I)
    torch.testing.assert_close(sched.score_from_eps(eps, i), exact)


def test_discrete_and_continuous_posteriors_agree():
    """DiscreteSchedule.from_sde(VP) at consecutive times equals LinearSDE.posterior between those times."""
    sde = sd.VPSDE()
    sched = DiscreteSchedule.from_sde(sde, n=50)
    g = torch.Generator().manual_seed(4)
    x0, x_t = torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64)
    for i in (1, 25, 49):
        t, s = torch.tensor((i + 1) / 50, dtype=torch.float64), torch.tensor(i / 50, dtype=torch.float64)
        m1, v1 = sched.posterior(x0, x_t, i)
        m2, v2 = sde.posterior(x0, x_t, t, s)
        torch.testing.assert_close(m1, m2)
        torch.testing.assert_close(v1.squeeze(), v2.squeeze())


def test_variance_choices_bracket():
    sched = DiscreteSchedule.linear()
    i = torch.arange(1, 1000)
    post, fwd = sched.variance(i, "posterior"), sched.variance(i, "forward")
    mid = sched.variance(i, "interpolated", 0.5)
    assert (post <= fwd).all() and (post <= mid).all() and (mid <= fwd).all()
    torch.testing.assert_close(sched.variance(i, "interpolated", 1.0), fwd)
    torch.testing.assert_close(sched.variance(i, "interpolated", 0.0), post)
    with pytest.raises(ValueError, match="unknown variance"):
        sched.variance(i, "learned")
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        DiscreteSchedule(torch.tensor([0.1, 1.2]))


@pytest.mark.parametrize("name", ["vp", "ve", "edm", "subvp"])
def test_parameterisations_round_trip(name):
    """From (eps, x0) to each target and back: every conversion of ScoreModel is exact."""
    sde = all_linear_sdes()[name]
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64) * sde.T * 0.9 + 0.05 * sde.T
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    x = alpha * x0 + sigma * eps
    for p in PREDICTIONS:
        raw = target_from(eps, x0, p, alpha, sigma)
        e, x0_back = eps_and_x0(raw, p, x, alpha, sigma)
        torch.testing.assert_close(e, eps)
        torch.testing.assert_close(x0_back, x0)
        model = sd.ScoreModel(lambda x_, t_, raw=raw: raw, sde, prediction=p)
        torch.testing.assert_close(model.score(x, t), -eps / sigma)
        torch.testing.assert_close(model.x0(x, t), x0)
        torch.testing.assert_close(model.v(x, t), alpha * eps - sigma * x0)
    assert model.nfe == 3
