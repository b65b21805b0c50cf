"""EDM's Heun sampler and linear multistep (LMS) on any linear SDE, against exact Gaussian / Gaussian-mixture scores.

Orders: the log-log slope of the trajectory error (RMS over a batch, against a DOP853 reference at 1e-11 from the
same x_T) vs the number of steps on the EDM grid (rho = 7). The grid spans sigma_tilde from about 150 (VP, OU) or
50 (VE) down to 0.03 (VP, OU) or 0.01 (VE), so the step counts are chosen where the slopes have settled; what is
left of the pre-asymptotic regime is the stated slack on each slope (measured: Heun 2.03-2.2 on 16-64 steps;
LMS 1.92-1.95, 2.84-2.90, 3.73-3.82 for orders 2, 3, 4 on 64-256 steps).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.solvers.edm import adams_bashforth_coefficients
from tests.conftest import SDE_FACTORIES
from tests.helpers import TanhSDE, assert_moments, observed_order, reference_solution, rms

SDES = {k: SDE_FACTORIES[k] for k in ("vp", "ve", "ou", "user")}
DATA = {
    "gaussian": lambda: sd.GaussianMixture.gaussian([0.5, -0.3], [[1.0, 0.3], [0.3, 0.5]]),
    "mixture": lambda: sd.GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [[0.2, 0.1], [0.3, 0.05]]),
}
_PROBLEMS: dict = {}


def problem(data: str, sde_name: str):
    """(sde, exact score model, x_T, t_min, reference x at t_min), built once per session."""
    key = (data, sde_name)
    if key not in _PROBLEMS:
        sde, mixture = SDES[sde_name](), DATA[data]()
        model = mixture.score_model(sde)
        x_T = sde.prior_sample((16, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
        t_min = sde.default_t_min
        _PROBLEMS[key] = sde, model, x_T, t_min, reference_solution(sde, model, x_T, t_min)
    return _PROBLEMS[key]


def slope(solver: str, data: str, sde_name: str, steps, **options) -> float:
    sde, model, x_T, t_min, ref = problem(data, sde_name)
    errors = [rms(sd.sample(sde, model, solver, x_T=x_T, t_min=t_min, steps=n, grid="edm", **options).x, ref) for n in steps]
    return -observed_order(steps, errors)


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("data", DATA)
def test_edm_heun_is_second_order(data, sde_name):
    assert abs(slope("edm_heun", data, sde_name, [16, 32, 64]) - 2) < 0.25


LMS_CASES = [
    pytest.param(order, data, sde_name, marks=[] if (data == "mixture" and sde_name in ("vp", "user")) else [pytest.mark.slow])
    for order in (2, 3, 4)
    for data in DATA
    for sde_name in SDES
]


@pytest.mark.parametrize("order, data, sde_name", LMS_CASES)
def test_lms_has_its_order(order, data, sde_name):
    assert abs(slope("lms", data, sde_name, [64, 128, 256], order=order) - order) < 0.3


def test_adams_bashforth_weights_are_exact():
    # Equal steps: the classical weights (23, -16, 5) / 12 and (55, -59, 37, -9) / 24.
    assert adams_bashforth_coefficients([0.0, -1.0, -2.0], 1.0) == pytest.approx([23 / 12, -16 / 12, 5 / 12], rel=1e-12)
    assert adams_bashforth_coefficients([0.0, -1.0, -2.0, -3.0], 1.0) == pytest.approx([55 / 24, -59 / 24, 37 / 24, -9 / 24], rel=1e-12)
    # Unequal, decreasing nodes: exact for cubics, e.g. int_{80}^{19} s^3 ds.
    nodes, target = [80.0, 57.0, 40.0, 28.0], 19.0
    weights = adams_bashforth_coefficients(nodes, target)
    for p in range(4):
        assert sum(w * s**p for w, s in zip(weights, nodes, strict=True)) == pytest.approx((target ** (p + 1) - nodes[0] ** (p + 1)) / (p + 1), rel=1e-10)


@pytest.mark.parametrize("solver, per_step", [("edm_heun", 2), ("lms", 1)])
def test_nfe_is_counted(solver, per_step):
    sde, model, x_T, t_min, _ = problem("mixture", "vp")
    result = sd.sample(sde, model, solver, x_T=x_T, t_min=t_min, steps=10)
    assert result.nfe == per_step * 10
    denoised = sd.sample(sde, model, solver, x_T=x_T, t_min=t_min, steps=10, denoise=True)
    assert denoised.nfe == per_step * 10 + 1  # EDM's last Euler step to sigma = 0 is Tweedie's denoising


def test_edm_heun_on_the_edm_sde_needs_no_change_of_variables():
    # For sigma(t) = t, alpha = 1 the general form is Karras et al.'s Algorithm 1 in x and sigma.
    sde = sd.EDMSDE()
    model = DATA["mixture"]().score_model(sde)
    x_T = sde.prior_sample((16, 2), torch.Generator().manual_seed(2), dtype=torch.float64)
    times = sd.solvers.get_grid("edm")(sde, 8, sde.sigma_min)
    x = x_T
    for t, t_next in itertools.pairwise(times):
        d = (x - model.x0(x, t)) / t
        x_euler = x + (t_next - t) * d
        x = x + (t_next - t) * 0.5 * (d + (x_euler - model.x0(x_euler, t_next)) / t_next)
    result = sd.sample(sde, model, "edm_heun", x_T=x_T, steps=8)
    torch.testing.assert_close(result.x, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_edm_heun_with_churn_samples_the_gaussian(sde_name):
    # x at t_min must follow N(alpha mu, alpha^2 Sigma + sigma^2 I) exactly up to the discretisation error.
    sde = SDES[sde_name]()
    gaussian = DATA["gaussian"]()
    n, steps = 4000, 192
    solver = sd.solvers.get("edm_heun", S_churn=60.0, S_min=0.05, S_max=50.0)  # gamma = 0.31
    assert solver.stochastic
    result = sd.sample(sde, gaussian.score_model(sde), solver, shape=(n, 2), steps=steps,
                       generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    law = gaussian.marginal(sde, sde.default_t_min)
    # Bias budget 0.03: measured on 40000 samples, this run's whitened moments are off by <= 0.004 (VP) and 0.017
    # (VE). Churn lengthens the Heun step from sigma_hat, so the bias grows fast with fewer steps (0.05 at 48 steps,
    # 0.12 at 24, gamma = 0.3): the budget would not hide a wrong noise level.
    assert_moments(result.x, law.mean(), law.covariance(), bias=0.03)
    assert result.nfe == 2 * steps


def test_churn_is_capped_at_the_prior_noise_level():
    sde = sd.VPSDE()
    model = DATA["mixture"]().score_model(sde)
    solver = sd.solvers.get("edm_heun", S_churn=1000.0)  # gamma = sqrt(2) - 1 everywhere, beyond sigma_tilde(T) at first
    result = sd.sample(sde, model, solver, shape=(64, 2), steps=12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.isfinite(result.x).all() and result.nfe == 24


def test_churn_options_are_checked():
    with pytest.raises(ValueError, match="S_churn"):
        sd.solvers.get("edm_heun", S_churn=-1.0)
    with pytest.raises(ValueError, match="S_max"):
        sd.solvers.get("edm_heun", S_min=2.0, S_max=1.0)
    with pytest.raises(ValueError, match="order"):
        sd.solvers.get("lms", order=5)


def test_non_linear_sdes_are_refused_with_a_clear_error():
    sde = TanhSDE()
    with pytest.raises(ValueError, match="LinearSDE"):
        sd.sample(sde, lambda x, t: -x, "lms", shape=(4, 2), steps=3, grid=[1.0, 0.5, 0.1])


def test_float32_and_any_rank():
    sde = sd.VPSDE()
    mixture = sd.GaussianMixture(torch.ones(1), torch.zeros(1, 12), torch.ones(1), event_shape=(3, 2, 2))
    model = mixture.score_model(sde)
    for solver in ("edm_heun", "lms"):
        result = sd.sample(sde, model, solver, shape=(5, 3, 2, 2), steps=10, generator=torch.Generator().manual_seed(5))
        assert result.x.shape == (5, 3, 2, 2) and result.x.dtype == torch.float32 and torch.isfinite(result.x).all()
        assert math.isfinite(float(result.x.std()))
