"""Inpainting against the closed-form conditional of a correlated Gaussian with its exact score.

x ~ N(mu, S); observing the entries K leaves the others U with
    mean mu_U + S_UK S_KK^-1 (y - mu_K),    covariance S_UU - S_UK S_KK^-1 S_KU.
The default method (TMPD) uses the exact conditional score for Gaussian data, so its samples must match both within
sampling error, with a stochastic and a deterministic solver; replacement is biased (measured, and the bias is
asserted to be there, so the comparison is not vacuous).
"""

from __future__ import annotations

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.analytic import gaussian_conditional
from sde_diffusion.inpainting import conjugate_gradient
from sde_diffusion.metrics import moment_errors

N = 4000


def correlated_gaussian():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64)
    cov = A @ A.T / 4 + 0.2 * torch.eye(4, dtype=torch.float64)
    return torch.tensor([0.5, -1.0, 0.3, 1.0], dtype=torch.float64), cov


MEAN, COV = correlated_gaussian()
KNOWN_ENTRIES = torch.tensor([True, False, True, False])
Y = torch.tensor([1.0, 0.0, -0.5, 0.0], dtype=torch.float64)  # the observation (unknown entries: ignored)


def standard_errors(x: torch.Tensor):
    """(mean error, covariance error) of the missing entries, in standard errors of n samples of the true law."""
    return moment_errors(x, *gaussian_conditional(MEAN, COV, KNOWN_ENTRIES, Y))


def run(method: str, solver: str, steps: int, sde=None, **options):
    sde = sde or sd.VPSDE()
    model = sd.GaussianMixture.gaussian(MEAN, COV).score_model(sde)
    known = Y.expand(N, 4).clone()
    known[:, ~KNOWN_ENTRIES] = float("nan")  # unobserved entries may hold anything
    return sd.inpaint(sde, model, solver, known=known, mask=KNOWN_ENTRIES, method=method, steps=steps, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(1), **options)


@pytest.mark.parametrize("solver, steps", [pytest.param("euler_maruyama", 400, marks=pytest.mark.slow),
                                           ("sde_dpm_solver_pp_2m", 100), ("dpm_solver_pp_2m", 50)])
def test_tmpd_samples_the_exact_conditional_gaussian(solver, steps):
    result = run("tmpd", solver, steps)
    assert torch.equal(result.x[:, KNOWN_ENTRIES], Y[KNOWN_ENTRIES].expand(N, 2))  # known entries exactly
    mean_z, cov_z = standard_errors(result.x[:, ~KNOWN_ENTRIES])
    assert mean_z.abs().max() < 4.5 and cov_z.abs().max() < 4.5, (mean_z, cov_z)
    # one forward per score evaluation (steps + the final denoise), counted; the CG's products counted apart
    assert result.nfe == result.stats["inpainting"]["forward"] == (2 * steps if solver == "heun" else steps) + 1
    assert result.nfe < result.stats["inpainting"]["vjp"] <= 6 * result.nfe


def test_tmpd_on_another_sde_and_rank():
    """Generic over the SDE (VE) and the tensor rank (samples of shape (2, 2), mask of one sample)."""
    sde = sd.VESDE(sigma_min=0.01, sigma_max=20.0)
    model = sd.GaussianMixture(torch.ones(1), MEAN[None], COV[None], event_shape=(2, 2)).score_model(sde)
    known, mask = Y.reshape(1, 2, 2).expand(N, 2, 2), KNOWN_ENTRIES.reshape(2, 2)
    result = sd.inpaint(sde, model, "dpm_solver_pp_2m", known=known, mask=mask, steps=50, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2))
    assert result.x.shape == (N, 2, 2) and torch.equal(result.x[:, mask], known[:, mask])
    mean_z, cov_z = standard_errors(result.x.reshape(N, 4)[:, ~KNOWN_ENTRIES])
    assert mean_z.abs().max() < 4.5 and cov_z.abs().max() < 4.5, (mean_z, cov_z)


@pytest.mark.parametrize("method", ["replacement", "repaint"])
def test_replacement_and_repaint_keep_the_known_entries_and_are_biased(method):
    result = run(method, "dpm_solver_pp_2m", 50, **({"resample": 3} if method == "repaint" else {}))
    assert torch.equal(result.x[:, KNOWN_ENTRIES], Y[KNOWN_ENTRIES].expand(N, 2))
    mean_z, _ = standard_errors(result.x[:, ~KNOWN_ENTRIES])
    assert mean_z.abs().max() > 6, mean_z  # measured: replacement ~38 SE, repaint (3 resamplings) ~10 SE
    assert result.nfe == (50 if method == "replacement" else 150) + 1


def test_conjugate_gradient_solves_batched_spd_systems():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(3, 5, 5, generator=g, dtype=torch.float64)
    A = B @ B.transpose(1, 2) + 0.5 * torch.eye(5, dtype=torch.float64)
    b = torch.randn(3, 5, generator=g, dtype=torch.float64)
    z, used = conjugate_gradient(lambda v: (A @ v[:, :, None])[:, :, 0], b, 50, rtol=1e-12)
    assert used <= 6 and torch.allclose(z, torch.linalg.solve(A, b), atol=1e-8)


def test_conjugate_gradient_stops_a_sample_at_bad_curvature():
    """An indefinite (or too stiff) operator stops the samples it misleads, leaving the others to converge."""
    A = torch.stack([torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64)),
                     torch.diag(torch.tensor([-1.0, 1.0], dtype=torch.float64)),
                     torch.diag(torch.tensor([50.0, 1.0], dtype=torch.float64))])
    b = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    z, _ = conjugate_gradient(lambda v: (A @ v[:, :, None])[:, :, 0], b, 10, max_curvature=torch.full((3, 1), 10.0))
    assert torch.allclose(z[0], torch.tensor([0.5, 1.0], dtype=torch.float64)) and torch.equal(z[1:], torch.zeros(2, 2, dtype=torch.float64))


def test_a_noise_level_window_or_trust_region_that_never_binds_changes_nothing():
    full, window = run("tmpd", "dpm_solver_pp_2m", 10), run("tmpd", "dpm_solver_pp_2m", 10, max_noise_level=1e6)
    assert torch.equal(full.x, window.x) and full.stats == window.stats
    assert torch.equal(full.x, run("tmpd", "dpm_solver_pp_2m", 10, max_update=1e6).x)  # a slack trust region
    low = run("tmpd", "dpm_solver_pp_2m", 10, max_noise_level=0.5)
    assert low.nfe == full.nfe and low.stats["inpainting"]["vjp"] < full.stats["inpainting"]["vjp"]


def test_bad_inpainting_input_fails_clearly():
    sde = sd.VPSDE()
    model = sd.GaussianMixture.gaussian(MEAN, COV).score_model(sde)
    known = Y.expand(8, 4).clone()
    with pytest.raises(ValueError, match=r"mask must have the shape of known, \(8, 4\)"):
        sd.inpaint(sde, model, "euler", known=known, mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be boolean"):
        sd.inpaint(sde, model, "euler", known=known, mask=torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="unknown inpainting method"):
        sd.inpaint(sde, model, "euler", known=known, mask=KNOWN_ENTRIES, method="magic")
    with pytest.raises(ValueError, match="NaN or inf at observed entries"):
        sd.inpaint(sde, model, "euler", known=torch.full((8, 4), float("nan")), mask=KNOWN_ENTRIES)
    with pytest.raises(ValueError, match="do not pass denoise"):
        sd.inpaint(sde, model, "euler", known=known, mask=KNOWN_ENTRIES, denoise=False)
    with pytest.raises(ValueError, match="one sample is drawn per row"):
        sd.inpaint(sde, model, "euler", known=known, mask=KNOWN_ENTRIES, shape=(16, 4))
    with pytest.raises(ValueError, match="is adaptive"):
        sd.inpaint(sde, model, "dopri5", known=known, mask=KNOWN_ENTRIES, method="replacement")
    with pytest.raises(ValueError, match="max_update must be positive"):
        sd.inpaint(sde, model, "euler", known=known, mask=KNOWN_ENTRIES, max_update=-1.0)
    with pytest.raises(ValueError, match="max_noise_level"):
        sd.inpaint(sde, model, "euler", known=known, mask=KNOWN_ENTRIES, max_noise_level=0.0)
    with pytest.raises(ValueError, match="resample must be a positive integer"):
        sd.inpaint(sde, model, "euler", known=known, mask=KNOWN_ENTRIES, method="repaint", resample=0)
