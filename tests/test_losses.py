"""The denoising score-matching loss: L_simple as a special case, the four parameterisations, the weightings,
importance sampling, and the loss at the true score against its analytic value on Gaussian data."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import sde_diffusion as sd
from sde_diffusion.networks import MLP
from sde_diffusion.score import target_from
from sde_diffusion.training import DSMLoss, eps_error_scale
from sde_diffusion.training.losses import WEIGHTINGS

from .conftest import all_linear_sdes

PREDICTIONS = ("eps", "x0", "v", "score", "flow")


def exact_network(mixture, sde, prediction, shift=None):
    """A network giving the `prediction` implied by the exact score of `mixture` (plus a constant `shift` in score)."""

    def network(x, t):
        score = mixture.score(x, t, sde)
        if shift is not None:
            score = score + shift
        alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        eps = -sigma * score
        return target_from(eps, (x - sigma * eps) / alpha, prediction, alpha, sigma)

    return network


def gaussian_data():
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)
    return sd.GaussianMixture.gaussian(torch.tensor([0.5, -1.0]), cov)


def test_l_simple_is_the_eps_matching_special_case():
    """eps prediction, sigma^2 weighting, mean reduction: exactly the seeds' L_simple = E||eps - eps_theta(x_t, t)||^2
    with x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps, alpha_bar = alpha(t)^2 (the VP SDE's continuous DDPM)."""
    sde = sd.VPSDE()
    torch.manual_seed(0)
    net = MLP(2, width=32, depth=2).double()
    torch.nn.init.normal_(net.output.weight)  # a non-trivial network
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(64, 2, generator=g, dtype=torch.float64)
    loss = DSMLoss(sde, prediction="eps", weighting="sigma2", t_min=1e-3)

    value = loss(net, x0, torch.Generator().manual_seed(2))

    g = torch.Generator().manual_seed(2)  # the documented draw order: t, then eps
    t = 1e-3 + (1 - 1e-3) * torch.rand(64, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 2, generator=g, dtype=torch.float64)
    alpha_bar = sde.alpha(t)[:, None] ** 2
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    l_simple = torch.nn.functional.mse_loss(net(x_t, t), eps)
    assert torch.allclose(value, l_simple, rtol=1e-12, atol=0)


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_every_parameterisation_gives_the_same_score_matching_loss(weighting):
    """sigma2 and likelihood are weightings of the score error, so a network expressing the same score in any
    parameterisation has the same loss: this checks eps_error_scale against the conversions of score.py."""
    mixture = gaussian_data()
    g = torch.Generator().manual_seed(0)
    x0 = mixture.sample(256, g)
    t = torch.rand(256, generator=g, dtype=torch.float64) * 0.99 + 0.005
    eps = torch.randn(256, 2, generator=g, dtype=torch.float64)
    shift = torch.tensor([0.3, -0.2], dtype=torch.float64)  # not the minimiser: the loss is not a constant
    for sde in all_linear_sdes().values():
        tt = t * sde.T
        values = [
            DSMLoss(sde, p, weighting, t_min=1e-3).per_example(exact_network(mixture, sde, p, shift), x0, tt, eps)
            for p in PREDICTIONS
        ]
        for p, v in zip(PREDICTIONS[1:], values[1:], strict=True):
            assert torch.allclose(v, values[0], rtol=1e-8), (sde, p)


def test_weightings_match_their_formulas():
    """likelihood: g^2 ||s_theta + eps / sigma||^2; target: ||raw - target||^2; sum reduction: summed over dimensions."""
    mixture, sde = gaussian_data(), sd.SubVPSDE()
    g = torch.Generator().manual_seed(0)
    x0, t = mixture.sample(128, g), torch.rand(128, generator=g, dtype=torch.float64) * 0.9 + 0.05
    eps = torch.randn(128, 2, generator=g, dtype=torch.float64)
    shift = torch.tensor([0.3, -0.2], dtype=torch.float64)
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    x_t = alpha * x0 + sigma * eps
    score = exact_network(mixture, sde, "score", shift)(x_t, t)
    expected = sde.g2(t) * ((score + eps / sigma) ** 2).sum(1)
    got = DSMLoss(sde, "score", "likelihood", reduction="sum").per_example(exact_network(mixture, sde, "score", shift), x0, t, eps)
    assert torch.allclose(got, expected, rtol=1e-10)
    for p in PREDICTIONS:
        net = exact_network(mixture, sde, p, shift)
        target = target_from(eps, x0, p, alpha, sigma)
        got = DSMLoss(sde, p, "target").per_example(net, x0, t, eps)
        assert torch.allclose(got, ((net(x_t, t) - target) ** 2).mean(1), rtol=1e-10)


def test_eps_error_scale_is_the_derivative_of_the_eps_conversion():
    alpha, sigma = torch.tensor([0.9, 0.3]), torch.tensor([0.4, 0.95])
    x, raw = torch.randn(2, 3), torch.randn(2, 3)
    for p in PREDICTIONS:
        e1 = sd.score.eps_and_x0(raw, p, x, alpha[:, None], sigma[:, None])[0]
        e0 = sd.score.eps_and_x0(torch.zeros_like(raw), p, x, alpha[:, None], sigma[:, None])[0]
        assert torch.allclose(e1 - e0, eps_error_scale(p, alpha, sigma)[:, None] * raw, atol=1e-6)


@pytest.mark.parametrize("name", list(all_linear_sdes()))
def test_g2_over_sigma2_is_minus_twice_the_log_snr_slope(name):
    """The identity importance sampling rests on: g^2 / sigma^2 = -2 d log_snr / dt, for every linear SDE."""
    sde = all_linear_sdes()[name]
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64) * sde.T
    h = 1e-5 * sde.T
    slope = (sde.log_snr(t + h) - sde.log_snr(t - h)) / (2 * h)
    assert torch.allclose(sde.g2(t) / sde.sigma(t) ** 2, -2 * slope, rtol=1e-5)


@pytest.mark.parametrize("name", list(all_linear_sdes()))
def test_importance_sampling_draws_t_proportional_to_g2_over_sigma2(name):
    """Kolmogorov-Smirnov test of the drawn times against the CDF of g^2 / sigma^2 integrated numerically from the
    SDE's g2 and sigma (independent of the log-SNR route the sampler takes)."""
    sde = all_linear_sdes()[name]
    t_min = sde.default_t_min
    loss = DSMLoss(sde, weighting="likelihood", importance_sampling=True)
    n = 20000
    t = loss.sample_time(n, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert t.min() >= t_min and t.max() <= sde.T
    grid = torch.from_numpy(np.geomspace(t_min, sde.T, 20001))
    density = (sde.g2(grid) / sde.sigma(grid) ** 2).numpy()
    cdf = integrate.cumulative_trapezoid(density, grid.numpy(), initial=0.0)
    cdf /= cdf[-1]
    result = stats.kstest(t.numpy(), lambda s: np.interp(s, grid.numpy(), cdf))
    assert result.statistic < 1.95 / math.sqrt(n), result  # 0.1% level
    # the density relative to U[t_min, T] integrates to one
    mass = integrate.trapezoid(loss.time_density(grid).numpy(), grid.numpy()) / (sde.T - t_min)
    assert abs(mass - 1) < 1e-3


def analytic_loss(sde, loss, mixture, shift_norm2):
    """E of the per-example loss (mean reduction) for Gaussian data N(m, C) and the network s = true score + b:

        E ||s_theta - grad log q||^2 = d / sigma^2 - tr(Sigma_t^-1) + |b|^2,   Sigma_t = alpha^2 C + sigma^2 I,

    (the cross term vanishes because E[grad log q(x_t|x_0) | x_t] is the true score), times lambda(t) / d,
    averaged over t ~ U[t_min, T] by adaptive quadrature."""
    eig = torch.linalg.eigvalsh(mixture.covs[0])
    d = len(eig)

    def integrand(s):
        t = torch.tensor(s, dtype=torch.float64)
        alpha, sigma = sde.alpha(t), sde.sigma(t)
        eps_mse = d - sigma**2 * (1 / (alpha**2 * eig + sigma**2)).sum() + sigma**2 * shift_norm2
        lam_over_sigma2 = {"sigma2": 1.0, "likelihood": sde.g2(t) / sigma**2}[loss.weighting]
        return float(lam_over_sigma2 * eps_mse / d)

    lo = loss.t_min
    breaks = list(np.geomspace(lo, sde.T, 12)[1:-1])
    value, _ = integrate.quad(integrand, lo, sde.T, points=breaks, limit=400, epsabs=0, epsrel=1e-10)
    return value / (sde.T - lo)


@pytest.mark.parametrize("sde_name", ["vp", "ve", "cosine", "user"])
@pytest.mark.parametrize("weighting,importance", [("sigma2", False), ("likelihood", False), ("likelihood", True)])
def test_loss_at_the_true_score_equals_its_analytic_minimum(sde_name, weighting, importance):
    """Monte Carlo loss of the exact-score network (every parameterisation) within 5 standard errors of the
    analytic minimum; with the score shifted by b the loss rises to the analytic value for b, many errors away."""
    sde, mixture = all_linear_sdes()[sde_name], gaussian_data()
    loss = DSMLoss(sde, "eps", weighting, importance_sampling=importance)
    n = 40000
    x0 = mixture.sample(n, torch.Generator().manual_seed(1))
    minimum = analytic_loss(sde, loss, mixture, 0.0)
    for prediction in PREDICTIONS:
        loss.prediction = prediction
        g = torch.Generator().manual_seed(2)
        t = loss.sample_time(n, g, dtype=torch.float64)
        eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
        per_example = loss.per_example(exact_network(mixture, sde, prediction), x0, t, eps)
        mean, se = per_example.mean().item(), per_example.std().item() / math.sqrt(n)
        assert abs(mean - minimum) < 5 * se, (prediction, mean, minimum, se)
    shift = torch.tensor([0.6, 0.8], dtype=torch.float64)
    shifted = analytic_loss(sde, loss, mixture, 1.0)
    per_example = loss.per_example(exact_network(mixture, sde, loss.prediction, shift), x0, t, eps)
    mean, se = per_example.mean().item(), per_example.std().item() / math.sqrt(n)
    assert abs(mean - shifted) < 5 * se
    assert shifted - minimum > 10 * se  # the test can tell the minimiser from a near miss


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("weighting,importance", [("sigma2", False), ("likelihood", True), ("target", False)])
def test_gradient_vanishes_in_expectation_at_the_true_score(prediction, weighting, importance):
    """Score model = true score + theta_0 + theta_1 x. At theta = 0 each gradient component is within 5 standard
    errors of zero (40 independent batches); at theta_0 = (0.3, -0.3) the gradient points back towards 0."""
    sde, mixture = sd.VPSDE(), gaussian_data()
    loss = DSMLoss(sde, prediction, weighting, importance_sampling=importance)
    g = torch.Generator().manual_seed(3)

    def batch_gradients(theta0):
        grads = []
        for _ in range(40):
            b = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
            w = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
            x0 = mixture.sample(500, g)
            t = loss.sample_time(500, g, dtype=torch.float64)
            eps = torch.randn(500, 2, generator=g, dtype=torch.float64)

            def network(x, tt):
                return exact_network(mixture, sde, prediction, shift=b + x @ w)(x, tt)  # noqa: B023  (called within this iteration)

            value = loss.per_example(network, x0, t, eps).mean()
            grads.append(torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(value, (b, w))]))
        grads = torch.stack(grads)
        return grads.mean(0), grads.std(0) / math.sqrt(len(grads))

    mean, se = batch_gradients([0.0, 0.0])
    assert (mean.abs() < 5 * se).all(), (mean, se)
    mean, se = batch_gradients([0.3, -0.3])
    assert mean[0] > 5 * se[0] and mean[1] < -5 * se[1]


def test_label_dropout_replaces_labels_with_the_null_label():
    seen = []

    def network(x, t, labels):
        seen.append(labels.clone())
        return torch.zeros_like(x)

    loss = DSMLoss(sd.VPSDE(), label_dropout=0.3)
    labels = torch.arange(10).repeat(200)
    loss(network, torch.zeros(2000, 2), torch.Generator().manual_seed(0), labels)
    dropped = seen[0] == -1
    assert abs(dropped.float().mean().item() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / 2000)
    assert torch.equal(seen[0][~dropped], labels[~dropped])


def test_bad_options_fail_with_the_valid_choices():
    with pytest.raises(ValueError, match="weighting"):
        DSMLoss(sd.VPSDE(), weighting="snr")
    with pytest.raises(ValueError, match="prediction"):
        DSMLoss(sd.VPSDE(), prediction="noise")
    with pytest.raises(ValueError, match="t_min"):
        DSMLoss(sd.VPSDE(), t_min=0.0)
    with pytest.raises(ValueError, match="reduction"):
        DSMLoss(sd.VPSDE(), reduction="max")
    assert set(WEIGHTINGS) == {"sigma2", "likelihood", "target"}


@pytest.mark.parametrize("importance", [False, True])
def test_stratified_times_put_one_draw_in_each_nth_and_each_draw_is_uniform(importance):
    """VDM's low-discrepancy times: the n draws of a batch fall one in each n-th of [t_min, T] (of the log-SNR range
    under importance sampling), and each draw, over batches, has the unstratified law (KS at the 0.1% level)."""
    sde = sd.VPSDE()
    plain, strat = (DSMLoss(sde, importance_sampling=importance, stratified=s) for s in (False, True))
    g = torch.Generator().manual_seed(4)

    def unit(t):  # the uniform variable the time was mapped from
        if not importance:
            return (t - strat.t_min) / (sde.T - strat.t_min)
        lam_T, lam_min = strat._log_snr_range(torch.float64, None)
        return (sde.log_snr(t) - lam_T) / (lam_min - lam_T)

    n = 16
    t = strat.sample_time(n, g, dtype=torch.float64)
    assert sorted((unit(t) * n).floor().long().clamp(0, n - 1).tolist()) == list(range(n))
    first = torch.stack([strat.sample_time(n, g, dtype=torch.float64)[3] for _ in range(3000)])
    reference = plain.sample_time(20000, g, dtype=torch.float64)
    assert stats.ks_2samp(first.numpy(), reference.numpy()).pvalue > 1e-3


def test_stratified_times_lower_the_variance_of_the_loss_at_the_true_score():
    sde, mixture = sd.VPSDE(), gaussian_data()
    network = exact_network(mixture, sde, "eps")
    spread = {}
    for stratified in (False, True):
        loss, g = DSMLoss(sde, stratified=stratified), torch.Generator().manual_seed(5)
        values = torch.stack([loss(network, mixture.sample(64, g), g) for _ in range(300)])
        spread[stratified] = values.var().item()
    assert spread[True] < 0.8 * spread[False], spread


def test_antithetic_loss_evaluates_each_example_with_eps_and_minus_eps():
    sde, mixture = sd.VPSDE(), gaussian_data()
    network = exact_network(mixture, sde, "eps", shift=torch.tensor([0.2, -0.1], dtype=torch.float64))
    x0 = mixture.sample(8, torch.Generator().manual_seed(6))
    value = DSMLoss(sde, antithetic=True)(network, x0, torch.Generator().manual_seed(7))
    plain, g = DSMLoss(sde), torch.Generator().manual_seed(7)
    t, eps = plain.sample_time(8, g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)
    pair = (plain.per_example(network, x0, t, eps) + plain.per_example(network, x0, t, -eps)) / 2
    torch.testing.assert_close(value, pair.mean())


def test_antithetic_pairs_lower_the_gradient_noise_at_equal_network_cost():
    """At the true score the gradient of the loss in a shift b of the eps prediction is zero in expectation; its
    spread over batches of n examples in antithetic pairs (2n rows) is below that of 2n independent examples: the
    error eps_theta - eps is about -eps at small sigma, odd in eps, and cancels within a pair (measured: 0.7x)."""
    sde, mixture = sd.VPSDE(), gaussian_data()
    exact = exact_network(mixture, sde, "eps")
    spread = {}
    for antithetic, n in ((False, 64), (True, 32)):
        loss, g = DSMLoss(sde, antithetic=antithetic), torch.Generator().manual_seed(8)
        grads = []
        for _ in range(500):
            b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
            value = loss(lambda x, t, b=b: exact(x, t) + b, mixture.sample(n, g), g)
            grads.append(torch.autograd.grad(value, b)[0])
        spread[antithetic] = torch.stack(grads).var(0).sum().item()
    assert spread[True] < 0.8 * spread[False], spread
