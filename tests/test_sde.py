"""Forward SDEs: closed forms, internal consistency, numerical integration, and the seeds' forward process."""

import math

import pytest
import torch

import sde_diffusion as sd
from tests.conftest import all_linear_sdes
from tests.helpers import assert_moments

SDES = all_linear_sdes()


def times_of(sde, n=200):
    return torch.linspace(sde.default_t_min, sde.T, n, dtype=torch.float64)


@pytest.mark.parametrize("name", SDES)
def test_coefficients_are_consistent(name):
    """f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2, by central differences."""
    sde = SDES[name]
    t = times_of(sde)[1:-1]
    h = 1e-6 * sde.T
    dlog_alpha = (sde.alpha(t + h).log() - sde.alpha(t - h).log()) / (2 * h)
    dsigma2 = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h)
    torch.testing.assert_close(dlog_alpha, sde.f(t), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dsigma2 - 2 * sde.f(t) * sde.sigma(t) ** 2, sde.g2(t), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", SDES)
def test_log_snr_is_decreasing_and_inverted(name):
    sde = SDES[name]
    t = times_of(sde)
    lam = sde.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()
    torch.testing.assert_close(lam, (sde.alpha(t) / sde.sigma(t)).log())
    torch.testing.assert_close(sde.t_of_log_snr(lam), t, rtol=1e-9, atol=1e-9)
    # The generic bisection agrees with each closed-form inverse.
    torch.testing.assert_close(sd.LinearSDE.t_of_log_snr(sde, lam), t, rtol=1e-9, atol=1e-9)


def test_closed_forms():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    vp = sd.VPSDE(0.1, 20.0)
    B = 0.1 * t + 0.5 * 19.9 * t**2
    torch.testing.assert_close(vp.alpha(t), torch.exp(-B / 2))
    torch.testing.assert_close(vp.sigma(t), torch.sqrt(1 - torch.exp(-B)))
    torch.testing.assert_close(sd.SubVPSDE().sigma(t), 1 - torch.exp(-B))
    ve = sd.VESDE(0.01, 50.0)
    torch.testing.assert_close(ve.sigma(t), 0.01 * (50 / 0.01) ** t)
    ou = sd.OUSDE(rate=0.5)
    torch.testing.assert_close(ou.alpha(t), torch.exp(-t / 2))
    torch.testing.assert_close(ou.sigma(t) ** 2 + ou.alpha(t) ** 2, torch.ones_like(t))
    edm = sd.EDMSDE()
    torch.testing.assert_close(edm.sigma(t), t)
    cos = sd.CosineVPSDE()
    torch.testing.assert_close(cos.alpha(t[:-1]) ** 2 + cos.sigma(t[:-1]) ** 2, torch.ones(10, dtype=torch.float64))


def test_user_sde_from_beta_matches_vp():
    """alpha and sigma integrated numerically from beta(t) alone agree with the VP closed forms to 1e-6."""
    vp, user = sd.VPSDE(), sd.LinearSDE.from_beta(lambda t: 0.1 + 19.9 * t)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    assert (user.alpha(t) - vp.alpha(t)).abs().max() < 1e-6
    assert (user.sigma(t) - vp.sigma(t)).abs().max() < 1e-6
    assert (user.log_snr(t[1:]) - vp.log_snr(t[1:])).abs().max() < 1e-6


def test_user_sde_from_coefficients_matches_ve_and_subvp():
    ve = sd.VESDE(0.01, 50.0)
    r = math.log(50 / 0.01)
    # VE has sigma(0) = sigma_min; the coefficient-built SDE starts at sigma(0) = 0, so compare sigma^2 differences.
    user = sd.LinearSDE.from_coefficients(lambda t: 0 * t, lambda t: 0.01 * torch.exp(r * t) * math.sqrt(2 * r))
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    rel = (user.sigma(t) ** 2 - (ve.sigma(t) ** 2 - 0.01**2)) / ve.sigma(t) ** 2
    assert rel.abs().max() < 1e-6
    sub = sd.SubVPSDE()
    user = sd.LinearSDE.from_coefficients(sub.f, lambda t: sub.g2(t).sqrt())
    assert (user.sigma(t) - sub.sigma(t)).abs().max() < 1e-6


def test_forward_simulation_matches_closed_form_marginal(generator):
    """Euler-Maruyama simulation of dx = f x dt + g dW from x_0 reaches N(alpha x_0, sigma^2) (seeds: q(x_t | x_0))."""
    for sde in (sd.VPSDE(), sd.OUSDE(), sd.SubVPSDE()):
        x0 = torch.tensor([[1.5, -0.5]], dtype=torch.float64).expand(20000, 2)
        n_steps, t_end = 1000, 0.5 * sde.T
        x, dt = x0.clone(), t_end / n_steps
        for k in range(n_steps):
            t = torch.tensor(k * dt, dtype=torch.float64)
            x = x + sde.drift(x, t) * dt + sde.diffusion(t) * math.sqrt(dt) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        mean, std = sde.marginal(x0[:1], t_end)
        # Euler's weak error is O(dt): a budget of 3 dt on the whitened moments.
        assert_moments(x, mean[0], std.item() ** 2 * torch.eye(2, dtype=torch.float64), bias=3 * dt * max(1, abs(sde.f(torch.tensor(0.0)).item())))


def test_ou_leaves_standard_normal_invariant(generator):
    """The seeds' OU process dx = -x/2 dt + dW is Langevin dynamics for N(0, I): N(0, I) stays N(0, I)."""
    ou = sd.OUSDE(rate=0.5)
    x0 = torch.randn(50000, 3, generator=generator, dtype=torch.float64)
    mean, std = ou.marginal(x0, 2.0)
    xt = mean + std * torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    assert_moments(xt, torch.zeros(3), torch.eye(3))
    # and exactly: alpha^2 + sigma^2 = 1 at every time
    t = torch.linspace(0, 10, 50, dtype=torch.float64)
    torch.testing.assert_close(ou.alpha(t) ** 2 + ou.sigma(t) ** 2, torch.ones_like(t))


def test_transition_composes_to_marginal():
    """q(x_t | x_s) composed with q(x_s | x_0) is q(x_t | x_0): a alpha_s = alpha_t, a^2 sigma_s^2 + v = sigma_t^2."""
    for sde in SDES.values():
        s, t = torch.tensor(0.3 * sde.T, dtype=torch.float64), torch.tensor(0.7 * sde.T, dtype=torch.float64)
        a, v = sde.transition(s, t)
        torch.testing.assert_close(a * sde.alpha(s), sde.alpha(t))
        torch.testing.assert_close(a**2 * sde.sigma(s) ** 2 + v, sde.sigma(t) ** 2)


def test_prior():
    sde = sd.VESDE(0.01, 50.0)
    x = sde.prior_sample((4000, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(x.std().item() / sde.prior_std() - 1) < 5 * math.sqrt(1 / 8000)
    lp = sde.prior_log_prob(x)
    expected = torch.distributions.Normal(0.0, sde.prior_std()).log_prob(x).sum(1)
    torch.testing.assert_close(lp, expected)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: sd.VPSDE(beta_min=-0.1), "beta_min"),
        (lambda: sd.VPSDE(beta_min=5.0, beta_max=1.0), "must not decrease"),
        (lambda: sd.VESDE(sigma_min=0.0), "sigma_min"),
        (lambda: sd.VESDE(sigma_min=10.0, sigma_max=1.0), "must increase"),
        (lambda: sd.OUSDE(rate=0.0), "rate"),
        (lambda: sd.CosineVPSDE(T=1.0), "0 < T < 1"),
        (lambda: sd.EDMSDE(sigma_min=1.0, sigma_max=0.5), "must increase"),
        (lambda: sd.LinearSDE.from_beta(lambda t: 1.0 - 2 * t), "positive"),
        (lambda: sd.LinearSDE.from_beta(lambda t: torch.ones(3)), "one value per time"),
        (lambda: sd.LinearSDE.from_coefficients(lambda t: 1 / t, lambda t: 1 + 0 * t), "not finite"),
    ],
)
def test_bad_schedules_fail_clearly(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def _numerics_sdes():
    sdes = all_linear_sdes()
    sdes["from_coefficients"] = sd.LinearSDE.from_coefficients(f=lambda t: -2 * t, g=lambda t: 2 * t.sqrt(), T=2.0)
    return sdes


NUMERICS_SDES = _numerics_sdes()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NUMERICS_SDES)
def test_log_snr_round_trip_down_to_small_t(name, dtype):
    """t -> log_snr -> t_of_log_snr is as accurate as the log-SNR's own rounding allows, from t = 1e-5 to T: the error
    of t from a log-SNR rounded to eps (relative) is eps |lambda| / |d lambda / dt|, so the tolerance is a small
    multiple of eps (t + |lambda| / |lambda'|), with lambda' from float64 finite differences."""
    sde = NUMERICS_SDES[name]
    t64 = torch.logspace(-5, math.log10(0.999 * sde.T), 200, dtype=torch.float64)
    lam64 = sde.log_snr(t64)
    slope = (sde.log_snr(t64 * (1 + 1e-6)) - sde.log_snr(t64 * (1 - 1e-6))) / (2e-6 * t64)
    eps = torch.finfo(dtype).eps
    back = sde.t_of_log_snr(sde.log_snr(t64.to(dtype))).to(torch.float64)
    tolerance = 16 * eps * (t64 + lam64.abs() / slope.abs())
    worst = ((back - t64).abs() / tolerance).max()
    assert worst <= 1, f"{name} {dtype}: round trip off by {worst:.3g} times the tolerance"


@pytest.mark.parametrize("name", NUMERICS_SDES)
def test_sigma_keeps_its_relative_accuracy_in_float32(name):
    """No cancellation in sigma at small t (1 - alpha^2 loses every digit there): float32 agrees with float64."""
    sde = NUMERICS_SDES[name]
    t64 = torch.logspace(-5, math.log10(0.999 * sde.T), 200, dtype=torch.float64)
    relative = (sde.sigma(t64.to(torch.float32)).to(torch.float64) / sde.sigma(t64) - 1).abs().max()
    assert relative < 32 * torch.finfo(torch.float32).eps, f"{name}: sigma in float32 off by {relative:.3g} (relative)"
