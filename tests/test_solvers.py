"""Baseline solvers against exact ground truth: Gaussian moments for every solver and SDE, mixtures, ODE orders."""


import pytest
import torch

import sde_diffusion as sd
from sde_diffusion import metrics
from tests.conftest import all_linear_sdes
from tests.helpers import assert_moments, observed_order, reference_solution, rms

GAUSSIAN = sd.GaussianMixture.gaussian([1.0, -0.5], [[1.0, 0.6], [0.6, 0.8]])
SDES = all_linear_sdes()

# (solver, options, steps): steps chosen so that the discretisation bias of the whitened moments, measured at
# n = 1e5, stays under a third of the tolerance (5 standard errors at n = 10000). Euler's bias is first order with
# a large constant on VE (0.044 at 1000 steps), hence 3000 steps. The Langevin corrector runs at snr = 0.05: its
# step 2 (snr sigma)^2 is dimension-free, and at the image-tuned default snr = 0.16 unadjusted Langevin inflates a
# Gaussian's variance by about 1% per corrector step, a bias this test would see.
SOLVER_CASES = {
    "euler_maruyama": ("euler_maruyama", {}, 500),
    "reverse_diffusion": ("reverse_diffusion", {}, 500),
    "ancestral": ("ancestral", {}, 1000),
    "pc_langevin": ("pc", dict(snr=0.05), 500),
    "pc_annealed": ("pc", dict(predictor="euler_maruyama", corrector="annealed_langevin", snr=0.05), 500),
    "euler": ("euler", {}, 3000),
    "heun": ("heun", {}, 50),
    "rk4": ("rk4", {}, 20),
    "scipy": ("scipy", {}, 1),
    "torchsde_euler": ("torchsde", dict(method="euler"), 300),
}
N_SAMPLES = 10000


def draw(sde, solver, options, steps, n=N_SAMPLES, seed=0, data=GAUSSIAN, **kwargs):
    g = torch.Generator().manual_seed(seed)
    x_T = data.marginal(sde, sde.T).sample(n, g)  # the exact law at T: the solver is tested alone
    return sd.sample(sde, data.score_model(sde), solver, x_T=x_T, steps=steps, generator=g, **options, **kwargs)


@pytest.mark.parametrize("case", SOLVER_CASES)
@pytest.mark.parametrize("sde_name", SDES)
def test_gaussian_moments(sde_name, case):
    """Every solver, every SDE: the output at t_min has the mean and covariance of the exact marginal there."""
    sde = SDES[sde_name]
    solver, options, steps = SOLVER_CASES[case]
    result = draw(sde, solver, options, steps)
    target = GAUSSIAN.marginal(sde, sde.default_t_min)
    assert_moments(result.x, target.mean(), target.covariance())


@pytest.mark.parametrize("method, steps", [("srk", 50), ("milstein", 200), ("reversible_heun", 200)])
def test_torchsde_methods(method, steps):
    sde = SDES["vp"]
    result = draw(sde, "torchsde", dict(method=method), steps, n=10000)
    target = GAUSSIAN.marginal(sde, sde.default_t_min)
    assert_moments(result.x, target.mean(), target.covariance())


def test_moment_check_rejects_a_wrong_score():
    """Negative control: a score scaled by 0.8 must fail the same moment check."""
    sde = SDES["vp"]
    exact = GAUSSIAN.score_model(sde)
    wrong = sd.ScoreModel(lambda x, t: 0.8 * exact.score(x, t), sde, prediction="score")
    g = torch.Generator().manual_seed(0)
    x_T = GAUSSIAN.marginal(sde, sde.T).sample(N_SAMPLES, g)
    result = sd.sample(sde, wrong, "euler_maruyama", x_T=x_T, steps=500, generator=g)
    target = GAUSSIAN.marginal(sde, sde.default_t_min)
    with pytest.raises(AssertionError):
        assert_moments(result.x, target.mean(), target.covariance())


def test_prior_start_and_denoise():
    """From the prior (not the exact x_T law) with a final Tweedie step: moments of E[x_0 | x_t_min] for VP."""
    sde = SDES["vp"]
    g = torch.Generator().manual_seed(1)
    result = sd.sample(sde, GAUSSIAN.score_model(sde), "heun", shape=(N_SAMPLES, 2), steps=50, generator=g, denoise=True, dtype=torch.float64)
    # Tweedie for Gaussian data: x0_hat = mu + C alpha S^-1 (x - alpha mu) with S = alpha^2 C + sigma^2 I,
    # so x0_hat has mean mu and covariance alpha^2 C S^-1 C.
    t = torch.tensor(sde.default_t_min, dtype=torch.float64)
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    C = GAUSSIAN.covariance()
    S = alpha**2 * C + sigma**2 * torch.eye(2, dtype=torch.float64)
    assert_moments(result.x, GAUSSIAN.mean(), alpha**2 * C @ torch.linalg.solve(S, C))
    assert result.nfe == 2 * 50 + 1  # the wrapper counted Heun's two evaluations per step and the denoising one


def test_nfe_is_what_the_network_saw():
    calls = []

    def network(x, t):
        calls.append(1)
        return GAUSSIAN.score(x, t, sde)

    sde = SDES["ve"]
    model = sd.ScoreModel(network, sde, prediction="score")
    for solver, steps in [("euler_maruyama", 7), ("heun", 5), ("rk4", 3), ("pc", 4), ("scipy", 1), ("torchsde", 6)]:
        calls.clear()
        result = sd.sample(sde, model, solver, shape=(16, 2), steps=steps, generator=torch.Generator().manual_seed(0))
        assert result.nfe == len(calls) > 0


def test_any_tensor_rank():
    """The same code runs on (batch, 1, 4, 4) image-shaped data as on flat vectors."""
    g = torch.Generator().manual_seed(2)
    flat = sd.GaussianMixture.random(16, 2, generator=g)
    image = sd.GaussianMixture(flat.weights, flat.means, flat.covs, event_shape=(1, 4, 4))
    sde = SDES["vp"]
    x_T = image.marginal(sde, sde.T).sample(64, g)
    for solver in ("euler_maruyama", "ancestral", "pc", "heun", "scipy", "torchsde"):
        a = sd.sample(sde, image.score_model(sde), solver, x_T=x_T, steps=10, generator=torch.Generator().manual_seed(3))
        b = sd.sample(sde, flat.score_model(sde), solver, x_T=x_T.reshape(64, 16), steps=10, generator=torch.Generator().manual_seed(3))
        assert a.x.shape == (64, 1, 4, 4)
        torch.testing.assert_close(a.x.reshape(64, 16), b.x, rtol=1e-6, atol=1e-6)


# Step counts in each problem's asymptotic regime (measured: on the mixture, Euler still puts some trajectories in
# the wrong component below ~200 steps, and RK4's error ratio reaches 2^4 from 64 steps on).
ORDER_STEPS = {
    ("gaussian", 1): [16, 32, 64, 128], ("gaussian", 2): [16, 32, 64, 128], ("gaussian", 4): [16, 32, 64, 128],
    ("mixture", 1): [256, 512, 1024, 2048], ("mixture", 2): [64, 128, 256, 512], ("mixture", 4): [64, 128, 256, 512],
}


@pytest.mark.parametrize("solver, order", [("euler", 1), ("heun", 2), ("rk4", 4)])
@pytest.mark.parametrize("data_name", ["gaussian", "mixture"])
def test_ode_order(solver, order, data_name):
    """The log-log slope of trajectory error vs step size, against a DOP853 reference from the same x_T."""
    data = GAUSSIAN if data_name == "gaussian" else sd.GaussianMixture.random(3, 3, condition=10.0, scale=0.5, spread=1.0, generator=torch.Generator().manual_seed(4))
    sde = SDES["vp"]
    model = data.score_model(sde)
    x_T = data.marginal(sde, sde.T).sample(32, torch.Generator().manual_seed(5))
    t_min = 1e-2
    ref = reference_solution(sde, model, x_T, t_min)
    steps = ORDER_STEPS[data_name, order]
    errors = [rms(sd.sample(sde, model, solver, x_T=x_T, steps=n, t_min=t_min).x, ref) for n in steps]
    slope = observed_order([1 / n for n in steps], errors)
    assert abs(slope - order) < 0.25, f"{solver}: observed order {slope:.2f}, expected {order} (errors {errors})"


MIXTURES = {
    "ring": lambda: sd.GaussianMixture.ring(8, radius=2.0, std=0.05),
    "aniso16": lambda: sd.GaussianMixture.random(16, 4, condition=20.0, scale=0.5, spread=1.5, generator=torch.Generator().manual_seed(6)),
}


def distance_and_floor(data, x, repeats, seed=9):
    """Sliced-W2 (128 fixed directions) of x's chunks to fresh data, and the paired two-sample floor."""
    proj = metrics.random_projections(data.dim, 128, torch.Generator().manual_seed(8))
    sw = lambda a, b: metrics.sliced_wasserstein(a, b, proj)  # noqa: E731
    return metrics.distance_and_floor(x, data.sample, sw, repeats, torch.Generator().manual_seed(seed))


@pytest.mark.slow
@pytest.mark.parametrize("solver, options, steps", [
    ("euler_maruyama", {}, 1000),
    ("pc", dict(predictor="reverse_diffusion", corrector="langevin", snr=0.05), 500),
    ("scipy", dict(rtol=1e-5, atol=1e-5), 1),
])
@pytest.mark.parametrize("problem", MIXTURES)
def test_mixture_sliced_wasserstein_near_floor(problem, solver, options, steps):
    """Sliced-W2 to fresh data within 15% of the floor two independent data samples of the same size reach."""
    data, repeats, n = MIXTURES[problem](), 32, 250
    sde = SDES["vp"]
    g = torch.Generator().manual_seed(7)
    result = sd.sample(sde, data.score_model(sde), solver, shape=(repeats * n, data.dim), steps=steps, generator=g, denoise=True, dtype=torch.float64, **options)
    distance, floor = distance_and_floor(data, result.x, repeats)
    assert distance < 1.15 * floor, f"{solver}: sliced-W2 {distance:.4f} vs floor {floor:.4f}"


@pytest.mark.slow
def test_sliced_wasserstein_check_rejects_a_poor_sampler():
    """Negative control: the same check fails for a too-coarse Euler-Maruyama (10 steps)."""
    data, repeats, n = MIXTURES["ring"](), 32, 250
    sde = SDES["vp"]
    result = sd.sample(sde, data.score_model(sde), "euler_maruyama", shape=(repeats * n, 2), steps=10, generator=torch.Generator().manual_seed(7), denoise=True, dtype=torch.float64)
    distance, floor = distance_and_floor(data, result.x, repeats)
    assert distance > 1.15 * floor
