"""The NFE budget of the adaptive solvers: evaluations spent and trajectory error at a binding `max_nfe`.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/adaptive_budget.py

With tolerances far tighter than the budget can pay for (rtol = atol = 1e-8), each adaptive ODE solver is capped at
a few budgets on a 4-D Gaussian mixture (3 components, exact score, 256 draws of the prior, float64) under four SDEs,
and its output is compared with scipy's DOP853 at 1e-11 from the same x_T (relative RMS). It prints one row per SDE:
NFE spent and error for each (solver, budget). The script runs unchanged on older commits, so a change of the
budget rule can be measured against the old one (check the old commit out beside this one and run it there).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import torch

import sde_diffusion as sd

SDES = {
    "vp": lambda: sd.VPSDE(),
    "ve": lambda: sd.VESDE(sigma_min=0.01, sigma_max=50.0),
    "edm": lambda: sd.EDMSDE(),
    "user": lambda: sd.LinearSDE.from_coefficients(f=lambda t: -2 * t, g=lambda t: 2 * t.sqrt(), T=2.0),
}
RUNS = (("dopri5", 40), ("dopri5", 80), ("tsit5", 60), ("bosh3", 40), ("adaptive_dpm_solver", 30))


def main() -> None:
    torch.set_num_threads(1)
    mixture = sd.GaussianMixture.random(4, 3, condition=10.0, spread=1.5, generator=torch.Generator().manual_seed(3))
    print("| SDE | " + " | ".join(f"{name} max_nfe={budget}: NFE, error" for name, budget in RUNS) + " |")
    print("|---|" + "---|" * len(RUNS))
    for sde_name, make in SDES.items():
        sde = make()
        model = mixture.score_model(sde)
        x_T = sde.prior_sample((256, 4), torch.Generator().manual_seed(11), dtype=torch.float64)
        times = torch.tensor([sde.T, sde.default_t_min], dtype=torch.float64)
        reference = sd.solvers.get("scipy", method="DOP853", rtol=1e-11, atol=1e-11).solve(model, x_T, times).x
        cells = []
        for name, budget in RUNS:
            tolerance = dict(rtol=1e-8, atol=1e-8)
            result = sd.sample(sde, model, name, x_T=x_T, max_nfe=budget, **tolerance)
            error = float((result.x - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt())
            cells.append(f"{result.nfe}, {error:.2e}")
        print(f"| {sde_name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
