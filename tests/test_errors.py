"""Bad input fails at the boundary with a message that says what was wrong and how to fix it."""

import pytest
import torch

import sde_diffusion as sd
from tests.helpers import TanhSDE

SDE = sd.VPSDE()
GAUSSIAN = sd.GaussianMixture.gaussian([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]])


def test_time_outside_range():
    model = GAUSSIAN.score_model(SDE)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\] = \[0, 1\]; got 1.5"):
        model.score(torch.zeros(4, 2), 1.5)
    with pytest.raises(ValueError, match=r"got -0\.1"):
        model.eps(torch.zeros(4, 2), torch.tensor([0.5, -0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        model.score(torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="t_max <= T"):
        sd.sample(SDE, model, "euler", shape=(4, 2), steps=5, t_max=2.0)


def test_network_output_shape_mismatch():
    model = sd.ScoreModel(lambda x, t: x[:, :1], SDE, prediction="eps")
    with pytest.raises(ValueError, match=r"output must have the shape of x, \(4, 2\), to be read as a 'eps' prediction; got \(4, 1\)"):
        sd.sample(SDE, model, "euler", shape=(4, 2), steps=3)
    not_a_tensor = sd.ScoreModel(lambda x, t: 0.0, SDE, prediction="eps")
    with pytest.raises(ValueError, match="got float"):
        not_a_tensor.score(torch.zeros(2, 2), 0.5)


def test_unknown_solver_and_options():
    model = GAUSSIAN.score_model(SDE)
    with pytest.raises(ValueError, match="unknown solver 'eulr'; did you mean 'euler'"):
        sd.sample(SDE, model, "eulr", shape=(4, 2))
    with pytest.raises(ValueError, match=r"solver 'heun' has no option\(s\) \['rtol'\]"):
        sd.sample(SDE, model, "heun", shape=(4, 2), rtol=1e-3)
    with pytest.raises(ValueError, match="unknown time grid 'logsnr'; did you mean 'log_snr'"):
        sd.sample(SDE, model, "heun", shape=(4, 2), grid="logsnr")
    with pytest.raises(ValueError, match="unknown corrector"):
        sd.solvers.get("pc", corrector="metropolis")
    with pytest.raises(ValueError, match="unknown torchsde method"):
        sd.solvers.get("torchsde", method="rk4")
    with pytest.raises(ValueError, match="unknown prediction"):
        sd.ScoreModel(lambda x, t: x, SDE, prediction="noise")


def test_nan_mid_sampling_names_the_step_and_time():
    def network(x, t):
        # the exact score, until t drops below 0.5
        return torch.where(t[:, None] < 0.5, torch.full_like(x, float("nan")), GAUSSIAN.score(x, t, SDE))

    model = sd.ScoreModel(network, SDE, prediction="score")
    # grid 1, 0.9001, ..., 0.001: the first step from below t = 0.5 is the 7th, from t = 0.4006
    with pytest.raises(sd.NonFiniteError, match=r"euler_maruyama: NaN or inf after step 7 of 10 \(t = 0.4006 -> 0.3007\)"):
        sd.sample(SDE, model, "euler_maruyama", shape=(8, 2), steps=10, generator=torch.Generator().manual_seed(0))
    with pytest.raises(sd.NonFiniteError, match="NaN or inf"):
        sd.sample(SDE, model, "scipy", shape=(8, 2))
    with pytest.raises(sd.NonFiniteError, match="step"):
        sd.sample(SDE, model, "dpm_solver_pp_2m", shape=(8, 2), steps=10)


def test_bad_starting_points():
    model = GAUSSIAN.score_model(SDE)
    with pytest.raises(ValueError, match="exactly one of shape"):
        sd.sample(SDE, model, "euler", shape=(4, 2), x_T=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="NaN or inf"):
        sd.sample(SDE, model, "euler", x_T=torch.full((4, 2), float("inf")))
    with pytest.raises(ValueError, match="floating-point tensor"):
        sd.sample(SDE, model, "euler", x_T=torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="built for"):
        sd.sample(sd.VESDE(), model, "euler", shape=(4, 2))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        sd.sample(SDE, model, "euler", shape=(4, 2), steps=0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sd.sample(SDE, model, "euler", shape=(4, 2), grid=[0.5, 0.7])


def test_non_linear_sde_gets_only_what_it_supports():
    cubic = TanhSDE()  # dx = -tanh(x) dt + dW: only score models and drift-based solvers apply
    with pytest.raises(ValueError, match="needs a LinearSDE"):
        sd.ScoreModel(lambda x, t: x, cubic, prediction="eps")
    result = sd.sample(cubic, lambda x, t: -x, "euler_maruyama", shape=(16, 2), steps=10, t_min=1e-3)
    assert result.nfe == 10 and torch.isfinite(result.x).all()
    with pytest.raises(ValueError, match="LinearSDE"):
        sd.sample(cubic, lambda x, t: -x, "ancestral", shape=(16, 2), steps=10, t_min=1e-3)
    with pytest.raises(ValueError, match="LinearSDE"):
        sd.sample(cubic, lambda x, t: -x, "heun", shape=(16, 2), steps=10, t_min=1e-3, grid="log_snr")


def test_a_solver_that_needs_a_linear_sde_fails_before_any_evaluation():
    calls = []
    counting = lambda x, t: calls.append(1) or -x  # noqa: E731
    for solver in ("dpm_solver_pp_2m", "edm_heun", "ancestral", "pc", "adaptive_dpm_solver", "dopri5"):
        with pytest.raises(ValueError, match="needs a LinearSDE"):
            sd.sample(TanhSDE(), counting, solver, shape=(4, 2), steps=3)
    with pytest.raises(ValueError, match="denoise=True needs a LinearSDE"):
        sd.sample(TanhSDE(), counting, "euler", shape=(4, 2), steps=3, denoise=True)
    with pytest.raises(ValueError, match="LinearSDE"):
        sd.calibrate_grid(TanhSDE(), counting, "dpm_solver_pp_2m", 4, shape=(4, 2))
    assert not calls
    # A solver of terms runs on the same SDE, and so does an embedded pair integrating in t.
    assert sd.sample(TanhSDE(), counting, "dopri5", shape=(4, 2), variable="t", t_min=1e-2).nfe == len(calls) > 0


def test_a_non_finite_final_denoising_step_is_named():
    exact = GAUSSIAN.score_model(SDE)
    nan_at_the_end = sd.ScoreModel(lambda x, t: torch.where((t < 0.01)[:, None], float("nan"), exact.network(x, t)), SDE, "score")
    assert torch.isfinite(sd.sample(SDE, nan_at_the_end, "euler", shape=(4, 2), steps=4).x).all()
    with pytest.raises(sd.NonFiniteError, match=r"final denoising step .* at t = 0\.001"):
        sd.sample(SDE, nan_at_the_end, "euler", shape=(4, 2), steps=4, denoise=True)
