"""Baseline solvers against exact ground truth: sliced-W2 beside the two-sample floor, and observed ODE orders.

    PYTHONPATH=src python benchmarks/baseline_solvers.py [--quick]

Problems: a 2-D ring of 8 narrow Gaussians (radius 2, std 0.05) and a 16-D mixture of 4 anisotropic Gaussians
(condition number 20), VP SDE, exact scores. Sliced-W2 uses 128 fixed directions, averaged over 32 chunks of 250
samples, each chunk paired with a fresh data sample (`sd.metrics.distance_and_floor`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import sde_diffusion as sd
from sde_diffusion import metrics

PROBLEMS = {
    "ring": lambda: sd.GaussianMixture.ring(8, radius=2.0, std=0.05),
    "aniso16": lambda: sd.GaussianMixture.random(16, 4, condition=20.0, scale=0.5, spread=1.5, generator=torch.Generator().manual_seed(6)),
}
SOLVERS = [
    ("euler_maruyama", {}, 1000),
    ("reverse_diffusion", {}, 1000),
    ("ancestral", {}, 1000),
    ("pc", dict(predictor="reverse_diffusion", corrector="langevin", snr=0.05), 500),
    ("pc", dict(predictor="reverse_diffusion", corrector="langevin", snr=0.16), 500),
    ("torchsde", dict(method="euler"), 1000),
    ("heun", {}, 100),
    ("rk4", {}, 50),
    ("scipy", dict(rtol=1e-5, atol=1e-5), 1),
]


def sliced_w2_table(repeats: int, n: int) -> None:
    sde = sd.VPSDE()
    print(f"\nSliced-W2 to fresh data vs the two-sample floor (VP, denoised, {repeats} x {n} samples)\n")
    print("| problem | solver | options | NFE | sliced-W2 | floor | ratio | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for problem, build in PROBLEMS.items():
        data = build()
        proj = metrics.random_projections(data.dim, 128, torch.Generator().manual_seed(8))
        sw = lambda a, b: metrics.sliced_wasserstein(a, b, proj)  # noqa: E731, B023  (called within this iteration)
        for name, options, steps in SOLVERS:
            start = time.perf_counter()
            result = sd.sample(sde, data.score_model(sde), name, shape=(repeats * n, data.dim), steps=steps,
                               generator=torch.Generator().manual_seed(7), denoise=True, dtype=torch.float64, **options)
            seconds = time.perf_counter() - start
            distance, floor = metrics.distance_and_floor(result.x, data.sample, sw, repeats, torch.Generator().manual_seed(9))
            print(f"| {problem} | {name} | {options or ''} | {result.nfe} | {distance:.4f} | {floor:.4f} | {distance / floor:.3f} | {seconds:.1f} |", flush=True)


def order_table() -> None:
    print("\nObserved order: slope of log(RMS error) vs log(step size), reference DOP853 at 1e-11 (VP, t_min = 0.01)\n")
    print("| data | solver | steps | errors | slope |")
    print("|---|---|---|---|---|")
    problems = {
        "gaussian": (sd.GaussianMixture.gaussian([1.0, -0.5], [[1.0, 0.6], [0.6, 0.8]]), {1: [16, 32, 64, 128], 2: [16, 32, 64, 128], 4: [16, 32, 64, 128]}),
        "mixture": (sd.GaussianMixture.random(3, 3, condition=10.0, scale=0.5, spread=1.0, generator=torch.Generator().manual_seed(4)),
                    {1: [256, 512, 1024, 2048], 2: [64, 128, 256, 512], 4: [64, 128, 256, 512]}),
    }
    sde = sd.VPSDE()
    for label, (data, steps_by_order) in problems.items():
        model = data.score_model(sde)
        x_T = data.marginal(sde, sde.T).sample(32, torch.Generator().manual_seed(5))
        times = torch.tensor([sde.T, 1e-2], dtype=torch.float64)
        reference = sd.solvers.get("scipy", method="DOP853", rtol=1e-11, atol=1e-11).solve(model, x_T, times).x
        for solver, order in [("euler", 1), ("heun", 2), ("rk4", 4)]:
            steps = steps_by_order[order]
            errors = [float(((sd.sample(sde, model, solver, x_T=x_T, steps=k, t_min=1e-2).x - reference) ** 2).mean().sqrt()) for k in steps]
            slope = np.polyfit(np.log(1 / np.array(steps)), np.log(errors), 1)[0]
            print(f"| {label} | {solver} | {steps} | {', '.join(f'{e:.1e}' for e in errors)} | {slope:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 chunks instead of 32")
    args = parser.parse_args()
    order_table()
    sliced_w2_table(8 if args.quick else 32, 250)


if __name__ == "__main__":
    main()
