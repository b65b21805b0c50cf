"""Bias of the inpainting methods on a correlated 4-D Gaussian with its exact score (the test's problem).

Entries 0 and 2 are observed; the law of entries 1 and 3 given them is Gaussian in closed form
(`analytic.gaussian_conditional`). For each method and solver, n samples are drawn and the errors of their mean
and covariance are printed in standard errors of n exact draws (|z| < ~3 is sampling noise). The methods' cost is
printed beside: NFE (forward evaluations of the score) and, for TMPD, vector-Jacobian products.

    OMP_NUM_THREADS=1 PYTHONPATH=src nice python benchmarks/inpainting_bias.py [--n 4000]

Writes benchmarks/results/inpainting_bias.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sde_diffusion as sd
from sde_diffusion.analytic import gaussian_conditional
from sde_diffusion.metrics import moment_errors

RESULTS = Path(__file__).parent / "results"
SOLVERS = [("euler_maruyama", 500), ("sde_dpm_solver_pp_2m", 100), ("heun", 100), ("dpm_solver_pp_2m", 50)]
METHODS = [("tmpd", {}), ("replacement", {}), ("repaint", {"resample": 5})]


def problem():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64)
    cov = A @ A.T / 4 + 0.2 * torch.eye(4, dtype=torch.float64)
    mean = torch.tensor([0.5, -1.0, 0.3, 1.0], dtype=torch.float64)
    return mean, cov, torch.tensor([True, False, True, False]), torch.tensor([1.0, 0.0, -0.5, 0.0], dtype=torch.float64)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--sde", default="vp", choices=["vp", "ve"])
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    mean, cov, known_entries, y = problem()
    sde = sd.VPSDE() if args.sde == "vp" else sd.VESDE(sigma_min=0.01, sigma_max=20.0)
    model = sd.GaussianMixture.gaussian(mean, cov).score_model(sde)
    truth = gaussian_conditional(mean, cov, known_entries, y)
    rows = []
    print(f"{'method':<12} {'solver':<22} {'NFE':>5} {'VJP':>5}  {'mean error / SE':<16} {'max |cov error| / SE':>20} {'s':>5}")
    for method, options in METHODS:
        for solver, steps in SOLVERS:
            start = time.perf_counter()
            result = sd.inpaint(sde, model, solver, known=y.expand(args.n, 4), mask=known_entries, method=method,
                                steps=steps, dtype=torch.float64, generator=torch.Generator().manual_seed(1), **options)
            mean_z, cov_z = moment_errors(result.x[:, ~known_entries], *truth)
            row = {"method": method, "solver": solver, "steps": steps, "nfe": result.nfe,
                   "vjp": result.stats["inpainting"].get("vjp", 0), "mean_z": mean_z.tolist(),
                   "max_abs_cov_z": cov_z.abs().max().item(), "seconds": time.perf_counter() - start,
                   "known_kept_exactly": bool(torch.equal(result.x[:, known_entries], y[known_entries].expand(args.n, 2)))}
            rows.append(row)
            print(f"{method:<12} {solver:<22} {row['nfe']:>5} {row['vjp']:>5}  "
                  f"{' '.join(f'{z:+6.1f}' for z in row['mean_z']):<16} {row['max_abs_cov_z']:>20.1f} {row['seconds']:>5.1f}")
    path = RESULTS / f"inpainting_bias_{args.sde}.json"
    path.write_text(json.dumps({"n": args.n, "sde": args.sde, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
