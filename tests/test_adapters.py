"""Adapters: the same network and x_T through our solvers and through diffusers' schedulers give the same samples,
and exact ground truth dressed as a foreign model comes back exact through every deterministic solver.

Tiny randomly initialised diffusers networks only; nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch

import sde_diffusion as sd

diffusers = pytest.importorskip("diffusers")

F64 = torch.float64
SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=2, out_channels=2, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()


def x_T():
    return torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))


def run_scheduler(unet, scheduler, x, **step_options):
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            x = scheduler.step(unet(x, timestep).sample, timestep, x, **step_options).prev_sample
    return x


def assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal to float32 rounding: relative to the output's scale (a random network's outputs reach 1e2-1e5)."""
    error = float((ours - theirs).abs().max() / theirs.abs().max())
    assert error < 2e-6, f"relative difference {error:.3g}"


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddim_reproduces_diffusers_ddim(unet, schedule):
    """DDIMScheduler (eta 0, final alpha 1) on its own timesteps = our ddim on the same times, then Tweedie's x0 at the
    last one (the scheduler's step to alpha = 1): 10 network calls each."""
    scheduler = diffusers.DDIMScheduler(beta_schedule=schedule, set_alpha_to_one=True, clip_sample=False)
    scheduler.set_timesteps(10)
    theirs = run_scheduler(unet, scheduler, x_T(), eta=0.0)
    sde, model = sd.adapters.from_diffusers(unet, scheduler)
    with torch.no_grad():
        ours = sd.sample(sde, model, "ddim", x_T=x_T(), grid=sde.time_of_timestep(scheduler.timesteps.to(F64)), denoise=True)
    assert ours.nfe == 10
    assert_same(ours.x, theirs)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_dpm_solver_pp_2m_reproduces_diffusers(unet, schedule):
    """DPMSolverMultistepScheduler (dpmsolver++, order 2, 20 steps, final sigma 0) = our dpm_solver_pp_2m on its
    timesteps, then Tweedie's x0 at the last one (its first-order step to sigma = 0): 20 calls each. Under 15 steps
    the two disagree by convention: diffusers keeps the step into the last timestep at second order, our
    `lower_order_final` drops it to first (pass lower_order_final=False to match)."""
    scheduler = diffusers.DPMSolverMultistepScheduler(beta_schedule=schedule, algorithm_type="dpmsolver++", solver_order=2)
    scheduler.set_timesteps(20)
    theirs = run_scheduler(unet, scheduler, x_T())
    sde, model = sd.adapters.from_diffusers(unet, scheduler)
    with torch.no_grad():
        ours = sd.sample(sde, model, "dpm_solver_pp_2m", x_T=x_T(), grid=sde.time_of_timestep(scheduler.timesteps.to(F64)),
                         denoise=True)
    assert ours.nfe == 20
    assert_same(ours.x, theirs)


FEW_STEP_PEERS = [
    ("dpm_solver_pp_2m", {}, "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    ("unipc", {}, "UniPCMultistepScheduler", {"solver_order": 2}),
    ("unipc", {"order": 3}, "UniPCMultistepScheduler", {"solver_order": 3}),
]


@pytest.mark.parametrize("name,options,scheduler_name,config", FEW_STEP_PEERS, ids=[f"{n}{o}" for n, o, _, _ in FEW_STEP_PEERS])
@pytest.mark.parametrize("steps", [4, 6, 10])
def test_count_denoise_reproduces_diffusers_under_15_steps(unet, name, options, scheduler_name, config, steps):
    """Under 15 steps diffusers' `lower_order_final` counts its step to sigma = 0 (Tweedie's x0) as the first-order
    final step; `count_denoise=True` does the same with `denoise=True`, so the two agree at every step count, and the
    default (the last step on the grid first order as well) does not. (DPM-Solver++(3M) is left out: its third-order
    update is not diffusers' by design, see `exponential.data_multistep_update`.)"""
    scheduler = getattr(diffusers, scheduler_name)(beta_schedule="scaled_linear", **config)
    scheduler.set_timesteps(steps)
    theirs = run_scheduler(unet, scheduler, x_T())
    sde, model = sd.adapters.from_diffusers(unet, scheduler)
    grid = sde.time_of_timestep(scheduler.timesteps.to(F64))
    with torch.no_grad():
        ours = sd.sample(sde, model, name, x_T=x_T(), grid=grid, denoise=True, count_denoise=True, **options)
        default = sd.sample(sde, model, name, x_T=x_T(), grid=grid, denoise=True, **options)
    assert ours.nfe == default.nfe == steps
    assert_same(ours.x, theirs)
    assert float((default.x - theirs).abs().max() / theirs.abs().max()) > 5 * 2e-6  # beyond assert_same's rounding


def test_euler_on_rectified_flow_reproduces_flow_match_euler(unet):
    """FlowMatchEulerDiscreteScheduler (shift 3) = our euler on RectifiedFlowSDE(shift=3), on its sigmas, then Tweedie's
    x0 at the last one (its Euler step to sigma = 0 is exactly that). Its first step starts at sigma = 1, where alpha
    = 0 and the SDE's drift is infinite; our T is 1 - 1e-3, so the comparison starts from the state after it."""
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    with torch.no_grad():
        first = scheduler.step(unet(x_T(), scheduler.timesteps[0]).sample, scheduler.timesteps[0], x_T()).prev_sample
        theirs = first
        for timestep in scheduler.timesteps[1:]:
            theirs = scheduler.step(unet(theirs, timestep).sample, timestep, theirs).prev_sample
    sde, model = sd.adapters.from_diffusers(unet, scheduler)
    assert isinstance(sde, sd.RectifiedFlowSDE) and sde.shift == 3.0 and model.prediction == "flow"
    with torch.no_grad():
        ours = sd.sample(sde, model, "euler", x_T=first, grid=scheduler.sigmas[1:-1].to(F64), denoise=True)
    assert ours.nfe == 9
    assert_same(ours.x, theirs)


# -- exact ground truth dressed as a foreign model ------------------------------------------------------------------
MIXTURE = sd.GaussianMixture.random(4, 3, condition=10.0, spread=1.5, generator=torch.Generator().manual_seed(4))


class ForeignEps:
    """What a diffusers eps network on a discrete table computes: the exact eps at t = (timestep + 1) / N."""

    def __init__(self, sde):
        self.sde, self.exact = sde, MIXTURE.score_model(sde)

    def __call__(self, x, timestep):
        return self.exact.eps(x, self.sde.time_of_timestep(timestep.to(F64)))


class ForeignFlow:
    """A flow-matching velocity model with diffusers' timestep convention (sigma * 1000)."""

    def __init__(self, sde):
        self.exact = MIXTURE.score_model(sde)

    def __call__(self, x, timestep):
        return self.exact.flow(x, timestep.to(F64) / 1000)


def foreign_models():
    ddpm = diffusers.DDPMScheduler(beta_schedule="scaled_linear")
    table = sd.LinearSDE.from_alphas_cumprod(ddpm.alphas_cumprod)
    flow = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    return {"discrete_eps": (ForeignEps(table), ddpm), "flow": (ForeignFlow(sd.RectifiedFlowSDE(shift=3.0)), flow)}


@pytest.mark.parametrize("kind", ["discrete_eps", "flow"])
def test_a_foreign_model_of_exact_scores_is_exact_through_the_adapter(kind):
    network, scheduler = foreign_models()[kind]
    sde, model = sd.adapters.from_diffusers(network, scheduler)
    exact = MIXTURE.score_model(sde)
    x, t = torch.randn(16, 4, dtype=F64), torch.rand(16, dtype=F64) * 0.9 + 0.05
    torch.testing.assert_close(model.score(x, t), exact.score(x, t), rtol=1e-9, atol=1e-9)
    x_T = sde.prior_sample((256, 4), torch.Generator().manual_seed(5), dtype=F64)
    times = torch.tensor([sde.T, sde.default_t_min], dtype=F64)
    reference = sd.solvers.get("scipy", method="DOP853", rtol=1e-10, atol=1e-10).solve(exact, x_T, times).x
    for name in sd.solvers.names():
        solver = sd.solvers.get(name)
        if solver.stochastic:
            continue
        steps = None if solver.adaptive else (400 if solver.order == 1 else 40)
        result = sd.sample(sde, model, solver, x_T=x_T, steps=steps)
        error = float((result.x - reference).norm() / reference.norm())
        assert error < 2e-2, f"{kind}, {name}: trajectory error {error:.3g} against the exact flow"


# -- the rest of the adapter's contract -----------------------------------------------------------------------------
def test_prediction_types_learned_variance_and_conditioning():
    ddpm = diffusers.DDPMScheduler(beta_schedule="linear", prediction_type="v_prediction")
    sde = sd.LinearSDE.from_alphas_cumprod(ddpm.alphas_cumprod)
    exact = MIXTURE.score_model(sde)
    seen = {}

    def v_network(x, timestep, class_labels=None):  # a learned-variance network: 2C channels, the second half junk
        seen["labels"] = class_labels
        v = exact.v(x, sde.time_of_timestep(timestep.to(F64)))
        return torch.cat([v, torch.full_like(v, float("nan"))], dim=1)

    labels = torch.tensor([3])
    _, model = sd.adapters.from_diffusers(v_network, ddpm, class_labels=labels)
    x, t = torch.randn(5, 4, dtype=F64), torch.full((5,), 0.3, dtype=F64)
    torch.testing.assert_close(model.x0(x, t), exact.x0(x, t), rtol=1e-9, atol=1e-9)
    assert seen["labels"] is labels and model.prediction == "v"
    for kind, ours in (("epsilon", "eps"), ("sample", "x0")):
        assert sd.adapters.from_diffusers(v_network, diffusers.DDPMScheduler(prediction_type=kind))[1].prediction == ours
    flow_sigmas = diffusers.UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)
    flow_sde, flow_model = sd.adapters.from_diffusers(v_network, flow_sigmas)
    assert isinstance(flow_sde, sd.RectifiedFlowSDE) and flow_sde.shift == 3.0 and flow_model.prediction == "flow"


def test_bad_models_are_refused_clearly():
    ddpm = diffusers.DDPMScheduler()
    _, wrong_channels = sd.adapters.from_diffusers(lambda x, timestep: x[:, :1], ddpm)
    with pytest.raises(ValueError, match="output channels must equal the input's"):
        wrong_channels(torch.zeros(2, 3), 0.5)
    ddpm.register_to_config(prediction_type="velocity")
    with pytest.raises(ValueError, match="unknown prediction_type 'velocity'"):
        sd.adapters.from_diffusers(lambda x, timestep: x, ddpm)
    with pytest.raises(TypeError, match="diffusers scheduler"):
        sd.adapters.from_diffusers(lambda x, timestep: x, object())
    with pytest.raises(TypeError, match="callable"):
        sd.adapters.from_diffusers("unet", ddpm)


def test_an_edm_denoiser_samples_like_the_exact_model():
    sde_exact = sd.EDMSDE()
    exact = MIXTURE.score_model(sde_exact)
    sde, model = sd.adapters.from_denoiser(lambda x, sigma: exact.x0(x, sigma), sigma_min=0.002, sigma_max=80.0)
    x_T = sde.prior_sample((64, 4), torch.Generator().manual_seed(6), dtype=F64)
    ours = sd.sample(sde, model, "edm_heun", x_T=x_T, steps=18, denoise=True)
    truth = sd.sample(sde_exact, exact, "edm_heun", x_T=x_T, steps=18, denoise=True)
    torch.testing.assert_close(ours.x, truth.x, rtol=1e-12, atol=1e-12)
    assert model.prediction == "x0" and ours.nfe == truth.nfe == 37
