"""Gaussian-mixture ground truth: density, exact marginal score under any linear SDE, stability."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import sde_diffusion as sd
from tests.conftest import all_linear_sdes
from tests.helpers import assert_moments


@pytest.fixture
def mixture():
    return sd.GaussianMixture.random(5, 3, condition=50.0, generator=torch.Generator().manual_seed(0))


def test_log_prob_matches_scipy(mixture):
    x = mixture.sample(50, torch.Generator().manual_seed(1))
    dens = sum(
        w.item() * multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
        for w, m, c in zip(mixture.weights, mixture.means, mixture.covs, strict=True)
    )
    np.testing.assert_allclose(mixture.log_prob(x).numpy(), np.log(np.asarray(dens)), rtol=1e-10)


def test_random_mixture_has_the_asked_condition_number(mixture):
    cond = torch.linalg.cond(mixture.covs)
    torch.testing.assert_close(cond, torch.full_like(cond, 50.0))


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "ou", "edm", "user"])
def test_score_is_gradient_of_marginal_log_density(mixture, name):
    sde = all_linear_sdes()[name]
    g = torch.Generator().manual_seed(2)
    t = torch.rand(20, generator=g, dtype=torch.float64) * sde.T
    x = mixture.sample(20, g) * sde.alpha(t)[:, None] + sde.sigma(t)[:, None] * torch.randn(20, 5, generator=g, dtype=torch.float64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(mixture.marginal_log_prob(x, t, sde).sum(), x)
    torch.testing.assert_close(mixture.score(x.detach(), t, sde), grad)
    # and the marginal object agrees with the per-sample-time density
    s = 0.3 * sde.T
    torch.testing.assert_close(mixture.marginal(sde, s).log_prob(x.detach()), mixture.marginal_log_prob(x.detach(), s, sde))


def test_marginal_matches_forward_noising(mixture):
    sde, g = sd.VPSDE(), torch.Generator().manual_seed(3)
    x0 = mixture.sample(40000, g)
    mean, std = sde.marginal(x0, 0.4)
    xt = mean + std * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    m = mixture.marginal(sde, 0.4)
    assert_moments(xt, m.mean(), m.covariance())


def test_sample_moments(mixture):
    x = mixture.sample(40000, torch.Generator().manual_seed(4))
    assert_moments(x, mixture.mean(), mixture.covariance())


def test_float32_score_is_stable_far_from_every_component():
    ring = sd.GaussianMixture.ring(8, radius=2.0, std=0.01)
    sde = sd.VPSDE()
    x = torch.tensor([[50.0, -80.0], [0.0, 0.0], [2.0, 0.0]], dtype=torch.float32)
    for t in (1e-5, 1e-3, 0.5, 1.0):
        s32 = ring.score(x, t, sde)
        s64 = ring.score(x.double(), t, sde)
        assert torch.isfinite(s32).all()
        torch.testing.assert_close(s32.double(), s64, rtol=1e-4, atol=1e-3)


def test_event_shape_any_rank():
    """A 16-D Gaussian viewed as 1x4x4 images: same score as the flat one, reshaped."""
    g = torch.Generator().manual_seed(5)
    flat = sd.GaussianMixture.random(16, 2, generator=g)
    img = sd.GaussianMixture(flat.weights, flat.means, flat.covs, event_shape=(1, 4, 4))
    x = img.sample(7, g)
    assert x.shape == (7, 1, 4, 4)
    sde = sd.OUSDE()
    torch.testing.assert_close(img.score(x, 2.0, sde).reshape(7, 16), flat.score(x.reshape(7, 16), 2.0, sde))
    with pytest.raises(ValueError, match="shape"):
        img.score(x.reshape(7, 16), 2.0, sde)


def test_exact_score_model_counts_nfe():
    model = sd.GaussianMixture.ring().score_model(sd.VPSDE())
    x = torch.zeros(3, 2)
    model.score(x, 0.5), model.eps(x, 0.5)
    assert model.nfe == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, -1.0]]]), "positive definite"),
        (([1.0, 1.0], [[0.0, 0.0]], [1.0]), "weights must have shape"),
        (([-1.0], [[0.0, 0.0]], [1.0]), "positive"),
        (([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]]), "symmetric"),
    ],
)
def test_bad_mixtures_fail_clearly(args, message):
    with pytest.raises(ValueError, match=message):
        sd.GaussianMixture(*args)


def test_ring_geometry():
    ring = sd.GaussianMixture.ring(8, radius=3.0, std=0.1)
    torch.testing.assert_close(ring.means.norm(dim=1), torch.full((8,), 3.0, dtype=torch.float64))
    assert math.isclose(ring.covs[0, 0, 0].item(), 0.01)
