"""Cheap grid calibration and autotune on the arena's EDM cases, against every diffusers scheduler, on fresh draws.

For each problem (ring-2d, gmm-32d under EDM, exact mixture scores) and NFE budget, UniPC (orders 2 and 3) is
calibrated by `calibrate_grid(method="gradient")` at each calibration cost (sample-evaluations in all, counted by the
library's counter; the pilot batch grows with it), then judged with every diffusers peer on `--sets` independent sets
of `--samples` draws from the exact marginal p_T, each against DOP853 at 1e-9. Printed per setting: cost, wall time,
pilot and validation error (held-out prior draws) and the error pooled over all fresh draws (relative RMS), its ratio
to the best peer's, and the number of switched samples (per-sample error above half the data's RMS norm).

With `--autotune`, also `sd.autotune` at each budget against the exhaustive sweep (every candidate calibrated on its
own at the largest cost), both judged on the same fresh draws.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/cheap_calibration.py [--problems ring-2d gmm-32d]
        [--budgets 10 20] [--costs 10000 100000 1000000] [--sets 4] [--samples 2048] [--autotune]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
import sde_diffusion as sd
from sde_diffusion.arena.contestants import DIFFUSERS_PEERS, Diffusers
from sde_diffusion.arena.problems import get_problem, get_sde

PILOT = {10_000: 16, 100_000: 64, 1_000_000: 512}
"""Pilot draws per calibration cost (the validation batch is 128, 16 at 1e4): the teacher and each descent step
scale with the pilot, so a larger budget affords a larger pilot, which over-fits less."""


def fresh_sets(sde, mixture, model, t_min, sets, samples):
    """[(x_T, reference)]: draws from the exact p_T and their DOP853 solves at 1e-9, denoised."""
    out = []
    for k in range(sets):
        x_T = mixture.marginal(sde, sde.T).sample(samples, torch.Generator().manual_seed(777 + k), dtype=torch.float64)
        times = torch.tensor([sde.T, t_min], dtype=torch.float64)
        ref = model.x0(sd.solvers.get("scipy", method="DOP853", rtol=1e-9, atol=1e-9).solve(model, x_T, times).x, t_min)
        out.append((x_T, ref))
    return out


def judge(solve, sets):
    """(pooled relative RMS, switched samples) of `solve(x_T)` over the fresh sets."""
    squared, norms, switched = 0.0, 0.0, 0
    for x_T, ref in sets:
        per_sample = (solve(x_T) - ref).reshape(len(ref), -1).norm(dim=1)
        scale = ref.reshape(len(ref), -1).pow(2).sum(1).mean().sqrt()
        squared, norms = squared + float(per_sample.pow(2).sum()), norms + float(ref.pow(2).sum())
        switched += int((per_sample > 0.5 * scale).sum())
    return (squared / norms) ** 0.5, switched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", default=["ring-2d", "gmm-32d"])
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--costs", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--orders", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--sets", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--autotune", action="store_true")
    args = parser.parse_args()
    if any(c not in PILOT for c in args.costs):
        parser.error(f"--costs must be among {sorted(PILOT)} (each has its pilot size)")
    if min(args.budgets) < 3 or args.sets < 1 or args.samples < 1:
        parser.error("--budgets must be >= 3 NFE, --sets and --samples positive")
    torch.set_num_threads(1)
    sde = get_sde("edm")
    t_min = sde.default_t_min
    peers = [Diffusers(*peer) for peer in DIFFUSERS_PEERS]
    if any(peer.unavailable() for peer in peers):
        sys.exit(f"diffusers is needed for the peers: {peers[0].unavailable()} (pip install -e .[peers])")
    for problem in args.problems:
        mixture = get_problem(problem).data
        model = mixture.score_model(sde)
        start = time.perf_counter()
        sets = fresh_sets(sde, mixture, model, t_min, args.sets, args.samples)
        print(f"\n## {problem} / EDM ({args.sets} x {args.samples} fresh draws; references {time.perf_counter() - start:.0f} s)")
        probe = sets[0][0][:2]
        plans = {p.label: {s.budget: s for s in p.plan(sde, model, probe, t_min, args.budgets, ())} for p in peers}
        best_peer = {}
        for budget in args.budgets:
            rows = [(p.label, *judge(lambda x: p.solve(sde, model, x, t_min, plans[p.label][budget], None), sets))
                    for p in peers]
            best_peer[budget] = min(rows, key=lambda r: r[1])
            print(f"{budget} NFE, best peer {best_peer[budget][0]}: {best_peer[budget][1]:.4g} "
                  f"({best_peer[budget][2]} switched)")
        print("\n| NFE | solver | cost (sample-evals) | wall s | pilot | validation | val / pilot | fresh error | "
              "switched | / best peer |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for budget in args.budgets:
            for order in args.orders:
                for cost in args.costs:
                    pilot = PILOT[cost]
                    cal = sd.calibrate_grid(sde, sd.ScoreModel(model.network, sde, "score"), "unipc", budget - 1,
                                            shape=(pilot, mixture.dim), validation=16 if cost < 100_000 else 128,
                                            budget=cost, generator=torch.Generator().manual_seed(20261202 + budget),
                                            dtype=torch.float64, order=order)
                    error, switched = judge(lambda x: sd.sample(sde, model, "unipc", x_T=x, grid=cal.times,
                                                                denoise=True, order=order).x, sets)
                    print(f"| {budget} | unipc(order={order}) | {cal.cost} | {cal.wall_time_s:.1f} | {cal.error:.4g} | "
                          f"{cal.validation_error:.4g} | {cal.validation_error / cal.error:.2f} | {error:.4g} | "
                          f"{switched} | {error / best_peer[budget][1]:.2f} |", flush=True)
        if args.autotune:
            autotune_rows(sde, mixture, model, t_min, args, sets, best_peer)


def autotune_rows(sde, mixture, model, t_min, args, sets, best_peer):
    """autotune (its default budget) against every candidate calibrated alone at the largest cost."""
    cost, pilot = max(args.costs), PILOT[max(args.costs)]
    print(f"\n| NFE | autotune: solver (cost) | its fresh error | exhaustive best (cost, at {cost} each) | "
          "its fresh error | autotune / exhaustive | / best peer |")
    print("|---|---|---|---|---|---|---|")
    for budget in args.budgets:
        tuned = sd.autotune(sde, sd.ScoreModel(model.network, sde, "score"), nfe=budget, shape=(1, mixture.dim),
                            dtype=torch.float64, cache=False)
        ours, _ = judge(lambda x: sd.sample(sde, model, tuned.solver, x_T=x, grid=tuned.times, denoise=True,
                                            **tuned.options).x, sets)
        sweep, spent = [], 0
        for name, options in sd.autotuning.CANDIDATES:
            steps = sd.autotuning.steps_within(sde, model, sd.solvers.get(name, **options), budget, sets[0][0][:1],
                                               t_min, sde.T)
            cal = sd.calibrate_grid(sde, sd.ScoreModel(model.network, sde, "score"), name, steps,
                                    shape=(pilot, mixture.dim), budget=cost, dtype=torch.float64,
                                    generator=torch.Generator().manual_seed(20261202 + budget), **options)
            spent += cal.cost
            error, _ = judge(lambda x: sd.sample(sde, model, name, x_T=x, grid=cal.times, denoise=True, **options).x, sets)
            sweep.append((error, f"{name}{options or ''}"))
        best = min(sweep)
        print(f"| {budget} | {tuned.solver}{tuned.options or ''} ({tuned.cost}) | {ours:.4g} | {best[1]} ({spent}) | "
              f"{best[0]:.4g} | {ours / best[0]:.2f} | {ours / best_peer[budget][1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
