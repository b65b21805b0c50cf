"""Cheap grid calibration and autotune on the arena's EDM cases, against every diffusers scheduler, on fresh draws.

For each problem (ring-2d, gmm-32d under EDM, exact mixture scores) and NFE budget, UniPC (orders 2 and 3) is
calibrated by `calibrate_grid(method="gradient")` at each calibration cost (sample-evaluations in all, counted by the
library's counter; the pilot batch grows with it), on a plain pilot of prior draws and on one stratified from a
screened pool (`stratify`), from `--seeds` pilot seeds (one at 1e6), then judged with every diffusers peer on
`--sets` independent sets of `--samples` draws from the exact marginal p_T, each against DOP853 at 1e-9. Printed per
setting, as means over the seeds: cost, wall time, pilot and validation error (held-out draws: prior draws, or for
a stratified pilot a stratified sample of the rest of the pool, weighted alike), the range of validation / pilot,
the error pooled over all fresh draws (relative RMS; mean and worst seed), its ratio to the best peer's, and the
number of switched samples (per-sample error above half the data's RMS norm).

With `--powell`, also today's Powell search at the arena's settings (`POWELL`), on the same fresh draws. With
`--autotune`, `sd.autotune` at each budget against the exhaustive sweep (every candidate calibrated on its own by
`calibrate_grid` at autotune's whole budget, on autotune's pilot draws), both judged on the same fresh draws; with
`--autotune-only`, that alone.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/cheap_calibration.py [--problems ring-2d gmm-32d]
        [--budgets 10 20] [--costs 10000 100000 1000000] [--seeds 3] [--sets 4] [--samples 2048] [--powell]
        [--autotune] [--autotune-only]
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
import sde_diffusion as sd
from sde_diffusion.arena.contestants import DIFFUSERS_PEERS, Diffusers
from sde_diffusion.arena.problems import get_problem, get_sde

PILOT = {10_000: (16, 16), 100_000: (64, 64), 1_000_000: (512, 128)}
"""(pilot, validation) draws per calibration cost: the teacher and each descent step scale with the pilot, so a
larger budget affords a larger pilot, which over-fits less."""
SCREENING_SHARE = 0.3
"""With a stratified pilot, the pool is as large as a screening of this share of the cost allows (each pool draw
costs 3 * steps + 2 evaluations to screen)."""
POWELL = dict(pool=16384, pilot=2048)
"""Today's search at the arena's settings: Powell against DOP853 at 1e-9 on 2048 pilot draws stratified from 16384
(here with 128 held-out draws stratified from the same pool, which the arena leaves out)."""


def pool_size(cost: int, steps: int) -> int:
    pilot, validation = PILOT[cost]
    return max(pilot + validation, int(SCREENING_SHARE * cost / (3 * steps + 2)))


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
    parser.add_argument("--seeds", type=int, default=3, help="calibrations (pilot seeds) per setting below 1e6")
    parser.add_argument("--powell", nargs="*", default=[], metavar="NFE:ORDER",
                        help="also today's Powell search for these (NFE, UniPC order) pairs, e.g. 10:2 20:3 "
                             "(minutes per grid)")
    parser.add_argument("--autotune", action="store_true")
    parser.add_argument("--autotune-only", action="store_true", help="the autotune rows alone (no calibration table)")
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
        if not args.autotune_only:
            calibrated_table(sde, mixture, model, sets, best_peer, args)
        if args.powell and not args.autotune_only:
            print("\n| NFE | solver | today's Powell: cost | wall s | pilot error | validation | fresh error | switched | "
                  "/ best peer |")
            print("|---|---|---|---|---|---|---|---|---|")
            for pair in args.powell:
                budget, order = map(int, pair.split(":"))
                print(powell_row(sde, mixture, model, sets, best_peer, budget, order), flush=True)
        if args.autotune or args.autotune_only:
            autotune_rows(sde, mixture, model, t_min, args, sets, best_peer)


def calibrated_table(sde, mixture, model, sets, best_peer, args):
    print("\n| NFE | solver | pilot | cost (sample-evals) | wall s | pilot error | validation | val / pilot | "
          "fresh error (mean, worst) | switched | / best peer |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for budget in args.budgets:
        for order in args.orders:
            for cost in args.costs:
                for stratified in (False, True):
                    print(calibrated_row(sde, mixture, model, sets, best_peer, budget, order, cost, stratified,
                                         args.seeds if cost < 1_000_000 else 1), flush=True)


def calibrated_row(sde, mixture, model, sets, best_peer, budget, order, cost, stratified, seeds):
    """One table row: UniPC-`order` calibrated at `cost` (plain or stratified pilot) from `seeds` pilot seeds, each
    judged on the fresh sets; means, and the worst fresh error."""
    pilot, validation = PILOT[cost]
    steps = budget - 1
    pool = pool_size(cost, steps) if stratified else pilot
    rows = []
    for seed in range(seeds):
        cal = sd.calibrate_grid(sde, sd.ScoreModel(model.network, sde, "score"), "unipc", steps, shape=(pool, mixture.dim),
                                validation=validation, budget=cost, stratify=pilot if stratified else None,
                                generator=torch.Generator().manual_seed(20261202 + 100 * seed + budget),
                                dtype=torch.float64, order=order)
        error, switched = judge(lambda x: sd.sample(sde, model, "unipc", x_T=x, grid=cal.times, denoise=True,
                                                    order=order).x, sets)
        rows.append((cal.cost, cal.wall_time_s, cal.error, cal.validation_error, error, switched))
    mean = [sum(r[k] for r in rows) / len(rows) for k in range(6)]
    ratios = [r[3] / r[2] for r in rows]
    worst = max(r[4] for r in rows)
    label = f"{pilot} of {pool} stratified" if stratified else f"{pilot}"
    return (f"| {budget} | unipc(order={order}) | {label} | {mean[0]:.0f} | {mean[1]:.1f} | {mean[2]:.3g} | {mean[3]:.3g} | "
            f"{min(ratios):.2f}-{max(ratios):.2f} | {mean[4]:.3g}, {worst:.3g} | {mean[5]:.0f} | "
            f"{mean[4] / best_peer[budget][1]:.2f} |")


def powell_row(sde, mixture, model, sets, best_peer, budget, order):
    """Today's search at the arena's settings (`POWELL`), judged on the same fresh sets."""
    pool = sde.prior_sample((POWELL["pool"], mixture.dim), torch.Generator().manual_seed(20261202 + budget),
                            dtype=torch.float64)
    cal = sd.calibrate_grid(sde, sd.ScoreModel(model.network, sde, "score"), "unipc", budget - 1, x_T=pool,
                            method="powell", stratify=POWELL["pilot"], validation=128,
                            generator=torch.Generator().manual_seed(budget), dtype=torch.float64, order=order)
    error, switched = judge(lambda x: sd.sample(sde, model, "unipc", x_T=x, grid=cal.times, denoise=True, order=order).x,
                            sets)
    return (f"| {budget} | unipc(order={order}) | {cal.cost} | {cal.wall_time_s:.0f} | {cal.error:.3g} | "
            f"{cal.validation_error:.3g} | {error:.3g} | {switched} | {error / best_peer[budget][1]:.2f} |")


def autotune_rows(sde, mixture, model, t_min, args, sets, best_peer):
    """autotune (its defaults, `--seeds` seeds) against the exhaustive sweep: for each seed, every candidate
    calibrated on its own by `calibrate_grid` at autotune's whole budget on that seed's autotune pilot draws (so the
    two differ by the search alone, and autotune costs a quarter of the sweep). Fresh errors are means over the
    seeds; the sweep's best is the candidate of least mean error, and its range over the seeds shows how much one
    calibration moves with its pilot draws alone."""
    defaults = {k: v.default for k, v in inspect.signature(sd.autotune).parameters.items()
                if v.default is not inspect.Parameter.empty}
    budget_each = defaults["budget"]
    labels = [f"{name}{options or ''}" for name, options in sd.autotuning.CANDIDATES]
    print(f"\n| NFE | autotune's choices (mean cost) | its fresh error (mean over {args.seeds} seeds) | sweep: each "
          f"candidate's fresh error (at {budget_each} each) | sweep's best (mean total cost) | its range over the seeds | "
          "autotune / sweep's best | / best peer |")
    print("|---|---|---|---|---|---|---|---|")
    for budget in args.budgets:
        ours, choices, cost, sweep, spent = [], [], 0, {label: [] for label in labels}, 0
        for seed in range(args.seeds):
            tuned = sd.autotune(sde, sd.ScoreModel(model.network, sde, "score"), nfe=budget, shape=(1, mixture.dim),
                                dtype=torch.float64, cache=False, seed=seed)
            ours.append(judge(lambda x: sd.sample(sde, model, tuned.solver, x_T=x, grid=tuned.times, denoise=True,
                                                  **tuned.options).x, sets)[0])
            choices.append(f"{tuned.solver}{tuned.options or ''}")
            cost += tuned.cost
            x_pilot, _ = sd.autotuning.pilot_draws(sde, (mixture.dim,), defaults["pilot"], defaults["validation"],
                                                   seed=seed, dtype=torch.float64)
            for (name, options), label in zip(sd.autotuning.CANDIDATES, labels, strict=True):
                steps = sd.autotuning.steps_within(sde, model, sd.solvers.get(name, **options), budget,
                                                   sets[0][0][:1], t_min, sde.T)
                cal = sd.calibrate_grid(sde, sd.ScoreModel(model.network, sde, "score"), name, steps, x_T=x_pilot,
                                        validation=defaults["validation"], budget=budget_each, dtype=torch.float64,
                                        generator=torch.Generator().manual_seed(20261202 + budget + seed), **options)
                spent += cal.cost
                sweep[label].append(judge(lambda x: sd.sample(sde, model, name, x_T=x, grid=cal.times, denoise=True,
                                                              **options).x, sets)[0])
        mean = {label: sum(errors) / len(errors) for label, errors in sweep.items()}
        best = min(mean, key=mean.get)
        ours_mean = sum(ours) / len(ours)
        each = ", ".join(f"{label} {error:.3g}" for label, error in mean.items())
        chosen = ", ".join(f"{c} x{choices.count(c)}" for c in dict.fromkeys(choices))
        print(f"| {budget} | {chosen} ({cost // args.seeds}) | {ours_mean:.3g} (worst {max(ours):.3g}) | {each} | "
              f"{best} ({spent // args.seeds}) | {min(sweep[best]):.3g}-{max(sweep[best]):.3g} | "
              f"{ours_mean / mean[best]:.2f} | {ours_mean / best_peer[budget][1]:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
