"""Models brought from elsewhere: our solvers against diffusers' schedulers on a discrete table and on flow matching.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/foreign_models.py            # ~1 min on 2 cores

Two foreign models of exact scores (a 2-D ring and an 8-D mixture, 512 draws each), as diffusers would hold them:

- "table": an eps network on the integer timesteps of SD's scaled-linear table (`DDPMScheduler(beta_schedule=
  "scaled_linear")`), brought in by `sd.adapters.from_diffusers`. Peers: DDIM (trailing spacing), DPM-Solver++(2M),
  UniPC (bh2) and Euler (trailing), on the same scheduler config, all starting at timestep 999 (t = 1) from the same
  x_T. Reference: the exact probability flow to timestep 0 (scipy DOP853, 1e-10), then Tweedie's x0.
- "flow": a flow-matching velocity model eps - x0 (SD3's convention: timestep = 1000 sigma, shift 3). Peers:
  FlowMatchEuler, FlowMatchHeun, and DPM-Solver++(2M) / UniPC with `use_flow_sigmas` (shift 3), each from its own
  start (sigma = 1 or just below) on x_T = pure noise. Reference: the exact flow dx/dsigma = eps - x0 from sigma = 1
  (scipy DOP853, 1e-10; the velocity at sigma = 1 taken at 1 - 1e-7), then x0 at sigma = 1e-3. Our solvers start
  where our RectifiedFlowSDE does, at T = 1 - 1e-3, from the reference's own state there (the path from 1 to T is
  given to them: a head start of 0.1% of the interval, where the flow is nearly straight).

Every diffusers model call gets the exact prediction at the scheduler's own current sigma (so its timestep rounding
plays no part). NFE: the network calls (ours include the final Tweedie evaluation). Error: relative RMS to the
reference, ||x - x_ref|| / ||x_ref||. Prints one Markdown table per model kind.
"""

from __future__ import annotations

import math
import os
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import numpy as np
import torch
from scipy.integrate import solve_ivp

import sde_diffusion as sd

F64 = torch.float64
BUDGETS = (5, 10, 20)
OURS = [("dpm_solver_pp_2m", {}, None), ("dpm_solver_pp_3m", {}, None), ("unipc", {}, None), ("unipc(order=3)", {"order": 3}, None),
        ("unipc@edm", {}, "edm"), ("dpm_solver_pp_2m@edm", {}, "edm"), ("unipc@uniform", {}, "uniform"),
        ("dpm_solver_pp_2m@uniform", {}, "uniform"), ("unipc@sde", {}, "sde"), ("ddim", {}, None), ("heun", {}, None)]
"""(label, options, grid): our contestants; grid None is the solver's default (log-SNR), "sde" the SDE's own (the
shifted grid on rectified flow), "uniform" uniform in t (the spacing of the peers' timesteps)."""


def problems():
    return {"ring-2d": sd.GaussianMixture.ring(8, radius=2.0, std=0.05),
            "gmm-8d": sd.GaussianMixture.random(8, 4, spread=1.0, generator=torch.Generator().manual_seed(2))}


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.to(F64) - reference).norm() / reference.norm())


def run_ours(sde, model, x_start, t_min, budget):
    """Our best of OURS at `budget` NFE (steps = budget - 1 per evaluation, plus the final Tweedie call)."""
    results = {}
    for label, options, grid in OURS:
        per_step = 2 if label == "heun" else 1
        steps = (budget - 1) // per_step
        if steps < 1:
            continue
        kwargs = dict(grid=sde.default_grid if grid == "sde" else grid) if grid else {}
        out = sd.sample(sde, model, label.split("@")[0].split("(")[0], x_T=x_start, steps=steps, t_min=t_min, denoise=True,
                        **options, **kwargs)
        results[label] = (out.nfe, out.x)
    return results


def run_peer(scheduler, steps, x, eps_or_flow, space, counter: sd.ScoreModel):
    """A diffusers scheduler with the exact prediction at its current sigma. `space`: "vp" (sample scaled by
    1 / sqrt(1 + sigma^2)), "ve" (x0 + sigma eps, the scheduler scales the model input) or "flow". Returns (NFE, x),
    the NFE read off `counter`, the wrapper `eps_or_flow` evaluates."""
    scheduler.set_timesteps(steps)
    start = counter.nfe
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for timestep in scheduler.timesteps:
            index = getattr(scheduler, "step_index", None) or 0
            if hasattr(scheduler, "sigmas"):
                sigma = float(scheduler.sigmas[index])
            else:  # DDIM: the table entry at the timestep
                abar = float(scheduler.alphas_cumprod[int(timestep)])
                sigma = math.sqrt((1 - abar) / abar)
            model_input = scheduler.scale_model_input(x, timestep) if space == "ve" else x
            output = eps_or_flow(model_input, sigma)
            x = scheduler.step(output.to(x.dtype), timestep, x).prev_sample
    return counter.nfe - start, x


def table_case(data, n=512):
    import diffusers

    ddpm = diffusers.DDPMScheduler(beta_schedule="scaled_linear")
    sde = sd.LinearSDE.from_alphas_cumprod(ddpm.alphas_cumprod)
    exact = data.score_model(sde)
    network = lambda x, timestep: exact.eps(x, sde.time_of_timestep(timestep.to(F64)))  # noqa: E731
    sde, model = sd.adapters.from_diffusers(network, ddpm)
    x_T = sde.prior_sample((n, data.dim), torch.Generator().manual_seed(1), dtype=F64)
    t_min = float(sde.time_of_timestep(torch.tensor(0.0)))
    times = torch.tensor([sde.T, t_min], dtype=F64)
    x_ref = exact.x0(sd.solvers.get("scipy", method="DOP853", rtol=1e-10, atol=1e-10).solve(exact, x_T, times).x, t_min)

    def eps_at_sigma(x_vp, sigma):  # x_vp = x / sqrt(alpha^2 + sigma^2): alpha^2 + sigma^2 = 1 on a VP table
        t = sde.t_of_log_snr(-torch.log(torch.tensor(sigma, dtype=F64)))
        return exact.eps(x_vp.to(F64), t)

    config = dict(beta_schedule="scaled_linear")
    peers = {
        "DDIM (trailing)": (diffusers.DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False, **config), "vp"),
        "DPM-Solver++(2M)": (diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **config), "vp"),
        "UniPC (bh2)": (diffusers.UniPCMultistepScheduler(solver_order=2, solver_type="bh2", **config), "vp"),
        "Euler (trailing)": (diffusers.EulerDiscreteScheduler(timestep_spacing="trailing", **config), "ve"),
    }
    rows = {}
    for label, (scheduler, space) in peers.items():
        for budget in BUDGETS:
            start = x_T.float() if space == "vp" else (x_T / sde.alpha(torch.tensor(1.0, dtype=F64))).float()
            calls, x = run_peer(scheduler, budget, start, eps_at_sigma, space, exact)
            rows.setdefault(label, {})[budget] = (calls, relative_error(x, x_ref))
    for budget in BUDGETS:
        for label, (nfe, x) in run_ours(sde, model, x_T, t_min, budget).items():
            rows.setdefault("ours: " + label, {})[budget] = (nfe, relative_error(x, x_ref))
    return rows


def flow_case(data, n=512):
    import diffusers

    sde = sd.RectifiedFlowSDE(shift=3.0)
    exact = sd.ScoreModel(lambda x, t: data.score(x, t, sde), sde, prediction="score", check_time=False)  # up to sigma = 1

    def velocity(x, sigma):  # eps - x0 at sigma (at 1 - 1e-7 for sigma = 1, where x0 from the score is 0 / 0)
        s = torch.full((len(x),), min(float(sigma), 1 - 1e-7), dtype=F64)
        return exact.flow(x.to(F64), s)

    x_noise = torch.randn(n, data.dim, generator=torch.Generator().manual_seed(1), dtype=F64)
    t_min = sde.default_t_min
    y0 = x_noise.numpy().reshape(-1)
    rhs = lambda s, y: velocity(torch.from_numpy(y).reshape(n, -1), s).numpy().reshape(-1)  # noqa: E731
    solution = solve_ivp(rhs, (1.0, t_min), y0, method="DOP853", rtol=1e-10, atol=1e-10, dense_output=True)
    x_at_T = torch.from_numpy(solution.sol(sde.T)).reshape(n, -1)
    x_end = torch.from_numpy(solution.y[:, -1]).reshape(n, -1)
    x_ref = x_end - t_min * velocity(x_end, t_min)  # Tweedie's x0 at t_min on rectified flow

    flow = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)
    peers = {
        "FlowMatchEuler": diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        "FlowMatchHeun": diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0),
        "DPM-Solver++(2M), flow sigmas": diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **flow),
        "UniPC (bh2), flow sigmas": diffusers.UniPCMultistepScheduler(solver_order=2, solver_type="bh2", **flow),
    }
    rows = {}
    for label, scheduler in peers.items():
        for budget in BUDGETS:
            steps = (budget + 1) // 2 if "Heun" in label else budget
            calls, x = run_peer(scheduler, steps, x_noise.float(), velocity, "flow", exact)
            rows.setdefault(label, {})[budget] = (calls, relative_error(x, x_ref))
    model = sd.ScoreModel(lambda x, t: exact.flow(x, t), sde, prediction="flow")
    for budget in BUDGETS:
        for label, (nfe, x) in run_ours(sde, model, x_at_T, t_min, budget).items():
            rows.setdefault("ours: " + label, {})[budget] = (nfe, relative_error(x, x_ref))
    return rows


def table(title: str, rows: dict) -> str:
    lines = [f"### {title}", "", "| solver | " + " | ".join(f"~{b} NFE: NFE, error" for b in BUDGETS) + " |",
             "|---|" + "---|" * len(BUDGETS)]
    for label, cells in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{cells[b][0]}, {cells[b][1]:.2e}" if b in cells else "" for b in BUDGETS) + " |")
    ours = {b: min((c[b] for label, c in rows.items() if label.startswith("ours") and b in c), key=lambda v: v[1]) for b in BUDGETS}
    peers = {b: min((c[b] for label, c in rows.items() if not label.startswith("ours") and b in c), key=lambda v: v[1]) for b in BUDGETS}
    lines.append("| **best ours / best peer** | " + " | ".join(f"{ours[b][1] / peers[b][1]:.2f}x" for b in BUDGETS) + " |")
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(1)
    np.seterr(all="ignore")
    for name, data in problems().items():
        print(table(f"{name}, discrete scaled-linear table (eps network on integer timesteps)", table_case(data)), "\n")
        print(table(f"{name}, flow matching (velocity, shift 3)", flow_case(data)), "\n")


if __name__ == "__main__":
    main()
