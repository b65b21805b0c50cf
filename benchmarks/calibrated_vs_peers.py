"""UniPC on calibrated grids against the best diffusers schedulers, over independent sets of draws.

On the arena's 32-D mixture the relative RMS trajectory error at 10-20 NFE is dominated by a handful of trajectories
that end in another mixture component than the exact flow's (a few per 8192 draws), so one arena run's ratio to the
best peer swings with the draws. This script fits the arena's calibrated contestants once (the same calls, pilot
batches and seeds as `benchmarks/arena.py`) and then measures them and the diffusers peers on several independent
sets of draws from the exact marginal p_T, each against its own DOP853 reference at 1e-9: per set the RMS error,
the number of switched samples (per-sample error above half the data's RMS norm) and the ratio to the best peer of
that set, and at the end the ratio of the errors pooled over all sets.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/calibrated_vs_peers.py [--problem gmm-32d] [--sets 6]
        [--samples 8192] [--budgets 10 20] [--pilot 2048] [--pool 16384] [--max-evaluations 1500]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
import sde_diffusion as sd
from sde_diffusion.arena.contestants import CALIBRATED, DIFFUSERS_PEERS, Calibrated, Diffusers
from sde_diffusion.arena.problems import get_problem, get_sde


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", default="gmm-32d", choices=["gmm-32d", "ring-2d", "gauss-8d"])
    parser.add_argument("--sets", type=int, default=6, help="independent sets of draws")
    parser.add_argument("--samples", type=int, default=8192, help="draws per set")
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--pilot", type=int, default=2048)
    parser.add_argument("--pool", type=int, default=16384)
    parser.add_argument("--max-evaluations", type=int, default=1500, help="Powell solves per initial grid (the arena's)")
    args = parser.parse_args()
    for name in ("sets", "samples", "pilot", "max_evaluations"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer; got {getattr(args, name)}")
    if any(b < 1 for b in args.budgets):
        parser.error(f"--budgets must be positive NFE budgets; got {args.budgets}")
    torch.set_num_threads(1)

    mixture, sde = get_problem(args.problem).data, get_sde("edm")
    model, t_min, dim = mixture.score_model(sde), sde.default_t_min, mixture.dim
    ours = [Calibrated(label, name, options, pilot=args.pilot, pool=args.pool, max_evaluations=args.max_evaluations)
            for label, name, options in CALIBRATED]
    peers = [Diffusers(*peer) for peer in DIFFUSERS_PEERS]
    if any(peer.unavailable() for peer in peers):
        sys.exit(f"diffusers is needed for the peers: {peers[0].unavailable()} (pip install -e .[peers])")
    probe = sde.prior_sample((2, dim), torch.Generator().manual_seed(0), dtype=torch.float64)
    plans = {c.label: {s.budget: s for s in c.plan(sde, model, probe, t_min, args.budgets, ())} for c in ours + peers}
    start = time.perf_counter()
    for c in ours:
        for setting in plans[c.label].values():
            c.grid(sde, model, t_min, setting.steps, probe)
    print(f"{args.problem} / EDM: calibrations {time.perf_counter() - start:.0f} s "
          f"({args.pilot} pilot draws stratified from {args.pool}, <= {args.max_evaluations} solves per initial grid)")

    squared = {(c.label, b): [] for c in ours + peers for b in args.budgets}  # per set: sum of squared errors, norm^2
    print(f"\n| set | NFE | {' | '.join(c.label + ' (RMS, switched)' for c in ours)} | best peer (RMS, switched) | "
          + " | ".join(f"ratio {c.label}" for c in ours) + " |")
    print("|---" * (3 + 2 * len(ours)) + "|")
    for k in range(args.sets):
        x_T = mixture.marginal(sde, sde.T).sample(args.samples, torch.Generator().manual_seed(777 + k), dtype=torch.float64)
        times = torch.tensor([sde.T, t_min], dtype=torch.float64)
        ref = model.x0(sd.solvers.get("scipy", method="DOP853", rtol=1e-9, atol=1e-9).solve(model, x_T, times).x, t_min)
        scale = ref.reshape(len(ref), -1).pow(2).sum(1).mean().sqrt()
        for budget in args.budgets:
            row = {}
            for c in ours + peers:
                x = c.solve(sde, model, x_T, t_min, plans[c.label][budget], None)
                per_sample = (x - ref).reshape(len(ref), -1).norm(dim=1)
                squared[c.label, budget].append((float(per_sample.pow(2).sum()), float(ref.pow(2).sum())))
                row[c.label] = (float(per_sample.pow(2).sum().sqrt() / ref.norm()), int((per_sample > 0.5 * scale).sum()))
            best = min((p.label for p in peers), key=lambda label: row[label][0])
            print(f"| {k} | {budget} | " + " | ".join(f"{row[c.label][0]:.4f}, {row[c.label][1]}" for c in ours)
                  + f" | {best}: {row[best][0]:.4f}, {row[best][1]} | "
                  + " | ".join(f"{row[c.label][0] / row[best][0]:.2f}" for c in ours) + " |", flush=True)

    def pooled(label, budget):
        errors, norms = zip(*squared[label, budget], strict=True)
        return (sum(errors) / sum(norms)) ** 0.5

    print(f"\nPooled over {args.sets} x {args.samples} draws (relative RMS over all of them):")
    for budget in args.budgets:
        best = min((p.label for p in peers), key=lambda label: pooled(label, budget))
        ratios = ", ".join(f"{c.label} {pooled(c.label, budget):.4f} ({pooled(c.label, budget) / pooled(best, budget):.2f}x)"
                           for c in ours)
        print(f"  {budget} NFE: best peer {best} {pooled(best, budget):.4f}; {ratios}")


if __name__ == "__main__":
    main()
