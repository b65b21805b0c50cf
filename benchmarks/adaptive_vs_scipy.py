"""Adaptive solvers against the baselines of the fast-solver issue, on exact Gaussian-mixture scores (float64).

Targets: a 2-D ring (8 components, std 0.05) and a 32-D random mixture (6 components, condition number 50);
SDEs: EDM (sigma 80 -> 0.002) and VP (t 1 -> 1e-3).

ODE: relative trajectory error ||x - x_ref|| / ||x_ref|| against scipy's DOP853 at rtol = atol = 1e-11 from the same
x_T, and the NFE the score wrapper counted, for dopri5, tsit5 and bosh3 (default variable log-SNR, and dopri5 in t; all
with the default predictive step-size cap) over a ladder of tolerances (rtol = atol), beside our `scipy` solver
(RK45, rtol = atol = 1e-5). The issue's target: reach scipy's accuracy with at most half its NFE. "best" is the
cheapest of our runs at least as accurate as scipy's.

SDE: sliced Wasserstein-2 (128 fixed directions) between the samples at t_min and fresh draws of the exact law
there, averaged over chunks (mean +- standard error), beside the floor two exact samples of the chunk size reach,
for adaptive_sde at several rtol (atol = 0.0078) and 1000-step Euler-Maruyama on the uniform and EDM grids. The
target: the sliced-W2 of 1000-step EM with at most a third of its NFE; an adaptive run "matches" an EM run when it
is no worse on both measures below, up to 2 standard errors of the difference.
On mixtures the sliced W2 of finite samples is dominated by the multinomial noise of the component weights, so it
resolves little beyond "at the floor". Beside it: the gap in mean exact log-density, E_solver[log p] - E_exact[log p]
under the law at t_min (+- standard error), a low-noise diagnostic: negative when components are blurred or
shifted, positive when samples crowd into the modes (too little spread); zero for an exact sampler.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/adaptive_vs_scipy.py [--ode-samples 256] [--seeds 1 2 3]
        [--sde-samples N (default 64000 in 2-D, 16000 in 32-D)] [--chunks 8] [--skip-sde] [--plot PATH]
        [--sdes edm] [--runs tsit5] [--variant LABEL SOLVER JSON ...]

`--variant` adds an ODE run over the fine tolerance ladder with solver options, e.g. a step-size controller setting:
    --variant "tsit5 factor_max=3" tsit5 '{"factor_max": 3}'
(the key "atol_per_rtol" sets atol = that x rtol instead of atol = rtol).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
import sde_diffusion as sd
from sde_diffusion.arena.problems import get_problem, get_sde
from sde_diffusion.metrics import (
    random_projections,
    relative_error,
    sliced_wasserstein,
)

FINE_LADDER = (1e-3, 5e-4, 3e-4, 2e-4, 1e-4, 7e-5, 5e-5, 4e-5, 3e-5, 2.5e-5, 2e-5, 1.5e-5, 1e-5, 7e-6, 5e-6, 3e-6, 2e-6, 1e-6)
ODE_RUNS = (  # (label, solver, options, tolerances)
    ("dopri5", "dopri5", {}, FINE_LADDER),
    ("tsit5", "tsit5", {}, FINE_LADDER),
    ("bosh3", "bosh3", {}, (1e-3, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)),
    ("dopri5 in t", "dopri5", {"variable": "t"}, (1e-4, 3e-5, 1e-5, 3e-6)),
)
SDE_RTOLS = (0.1, 0.05, 0.02, 0.01, 0.005)


def targets():
    """The arena's 2-D ring and 32-D mixture (sde_diffusion.arena.problems)."""
    return {name: get_problem(name).data for name in ("ring-2d", "gmm-32d")}


def sdes(names=("edm", "vp")):
    return {name: get_sde(name) for name in names}


def ode_table(n_samples: int, seed: int = 1, sde_names=("edm", "vp"), configs=ODE_RUNS) -> list[dict]:
    rows = []
    for target_name, mixture in targets().items():
        for sde_name, sde in sdes(sde_names).items():
            model = mixture.score_model(sde)
            t_min = sde.default_t_min
            x_T = sde.prior_sample((n_samples, mixture.dim), torch.Generator().manual_seed(seed), dtype=torch.float64)
            times = torch.tensor([sde.T, t_min], dtype=torch.float64)
            ref = sd.solvers.get("scipy", method="DOP853", rtol=1e-11, atol=1e-11).solve(model, x_T, times).x
            base = sd.sample(sde, model, "scipy", x_T=x_T, t_min=t_min, method="RK45", rtol=1e-5, atol=1e-5)
            base_error = relative_error(base.x, ref)
            print(f"\n## ODE {target_name} / {sde_name}, seed {seed}: scipy RK45 at 1e-5: NFE {base.nfe}, error {base_error:.2e}")
            print(f"{'solver':20s} {'tol':>8s} {'NFE':>6s} {'accepted':>8s} {'rejected':>8s} {'rel. error':>10s} {'NFE / scipy':>11s}")
            runs = []
            for label, solver, options, tolerances in configs:
                options = dict(options)
                atol_per_rtol = options.pop("atol_per_rtol", 1.0)
                for tol in tolerances:
                    r = sd.sample(sde, model, solver, x_T=x_T, t_min=t_min, rtol=tol, atol=atol_per_rtol * tol, **options)
                    error = relative_error(r.x, ref)
                    runs.append(dict(label=label, tol=tol, nfe=r.nfe, error=error))
                    print(f"{label:20s} {tol:8.0e} {r.nfe:6d} {r.stats['accepted_steps']:8d} {r.stats['rejected_steps']:8d} "
                          f"{error:10.2e} {r.nfe / base.nfe:11.2f}")
            ours = [run for run in runs if run["error"] <= base_error]
            best = min(ours, key=lambda run: run["nfe"]) if ours else None
            verdict = (f"best: {best['label']} at tol {best['tol']:.0e}, NFE {best['nfe']} = {best['nfe'] / base.nfe:.2f} x scipy "
                       f"-> target (<= 0.5) {'met' if best['nfe'] <= 0.5 * base.nfe else 'NOT met'}") if best else "no run reached scipy's accuracy"
            print(verdict)
            rows.append(dict(target=target_name, sde=sde_name, seed=seed, scipy_nfe=base.nfe, scipy_error=base_error, runs=runs, best=best))
    return rows


def seed_summary(rows: list[dict]) -> None:
    """Per problem / SDE and pair: NFE of the cheapest run as accurate as scipy's, over scipy's NFE, seed by seed."""
    seeds = sorted({row["seed"] for row in rows})
    print(f"\n## ODE summary over x_T seeds {seeds}: cheapest run as accurate as scipy RK45 at 1e-5, NFE / scipy's NFE")
    print(f"{'problem / SDE':18s} {'solver':20s} " + " ".join(f"{'seed ' + str(s):>7s}" for s in seeds) + "  target (<= 0.5) met")
    for target, sde in dict.fromkeys((row["target"], row["sde"]) for row in rows):
        cases = [row for row in rows if (row["target"], row["sde"]) == (target, sde)]
        for label in dict.fromkeys(run["label"] for run in cases[0]["runs"]):
            ratios = []
            for row in cases:
                ok = [run["nfe"] for run in row["runs"] if run["label"] == label and run["error"] <= row["scipy_error"]]
                ratios.append(min(ok) / row["scipy_nfe"] if ok else float("inf"))
            met = sum(r <= 0.5 for r in ratios)
            print(f"{target + ' / ' + sde:18s} {label:20s} " + " ".join(f"{r:7.2f}" for r in ratios) + f"  {met} of {len(ratios)}")


SDE_SAMPLES = {"ring-2d": 64000, "gmm-32d": 16000}


def log_density_gap(x: torch.Tensor, law, exact: torch.Tensor) -> tuple[float, float]:
    """E_x[log p] - E_exact[log p] and its standard error."""
    a, b = law.log_prob(x), law.log_prob(exact)
    return float(a.mean() - b.mean()), float((a.var() / len(a) + b.var() / len(b)) ** 0.5)


def chunked_sw2(x: torch.Tensor, draw, chunks: int, directions, g) -> tuple[float, float]:
    values = torch.tensor([sliced_wasserstein(c, draw(len(c), g), directions) for c in x.split(len(x) // chunks)][:chunks])
    return float(values.mean()), float(values.std() / chunks**0.5)


def matches(run: dict, em: dict) -> bool:
    """As good as `em` on both measures, up to 2 standard errors of the difference: sliced W2 no larger, and the
    log-density gap no farther from zero (neither more blurred nor more concentrated than the exact law)."""
    sw2_se = (run["sw2"][1] ** 2 + em["sw2"][1] ** 2) ** 0.5
    gap_se = (run["log_p_gap"][1] ** 2 + em["log_p_gap"][1] ** 2) ** 0.5
    return run["sw2"][0] <= em["sw2"][0] + 2 * sw2_se and abs(run["log_p_gap"][0]) <= abs(em["log_p_gap"][0]) + 2 * gap_se


def sde_table(n_samples: int | None, chunks: int) -> list[dict]:
    rows = []
    for target_name, mixture in targets().items():
        for sde_name, sde in sdes().items():
            model = mixture.score_model(sde)
            law = mixture.marginal(sde, sde.default_t_min)
            directions = random_projections(mixture.dim, 128, torch.Generator().manual_seed(2))
            g = torch.Generator().manual_seed(3)
            n = (n_samples or SDE_SAMPLES[target_name]) // chunks
            exact = law.sample(n * chunks, g)
            floor_values = torch.tensor([sliced_wasserstein(law.sample(n, g), law.sample(n, g), directions) for _ in range(chunks)])
            floor = (float(floor_values.mean()), float(floor_values.std() / chunks**0.5))
            print(f"\n## SDE {target_name} / {sde_name}: {chunks} chunks of {n}; floor {floor[0]:.4f} +- {floor[1]:.4f}")
            print(f"{'solver':28s} {'NFE':>6s} {'sliced W2':>18s} {'E log p gap':>20s} {'seconds':>8s}")
            control = law.sample(n * chunks, g)
            sw2, gap = chunked_sw2(control, law.sample, chunks, directions, g), log_density_gap(control, law, exact)
            print(f"{'exact sampler (control)':28s} {0:6d} {sw2[0]:10.4f} +- {sw2[1]:.4f} {gap[0]:+10.4f} +- {gap[1]:.4f}")
            runs = []
            configs = [(f"euler_maruyama 1000 {grid}", "euler_maruyama", dict(steps=1000, grid=grid)) for grid in ("uniform", "edm")]
            configs += [(f"adaptive_sde rtol {rtol:g}", "adaptive_sde", dict(rtol=rtol)) for rtol in SDE_RTOLS]
            for label, solver, options in configs:
                start = time.time()
                r = sd.sample(sde, model, solver, shape=(n * chunks, mixture.dim), dtype=torch.float64,
                              generator=torch.Generator().manual_seed(4), **options)
                value = chunked_sw2(r.x, law.sample, chunks, directions, g)
                gap = log_density_gap(r.x, law, exact)
                runs.append(dict(label=label, nfe=r.nfe, sw2=value, log_p_gap=gap))
                print(f"{label:28s} {r.nfe:6d} {value[0]:10.4f} +- {value[1]:.4f} {gap[0]:+10.4f} +- {gap[1]:.4f} "
                      f"{time.time() - start:8.1f}")
            verdicts = []
            for em in (run for run in runs if run["label"].startswith("euler")):
                matching = [run for run in runs if run["label"].startswith("adaptive") and matches(run, em)]
                best = min(matching, key=lambda run: run["nfe"]) if matching else None
                verdicts.append(dict(em=em["label"], best=best["label"] if best else None, ratio=best["nfe"] / em["nfe"] if best else None))
                print(f"vs {em['label']}: " + (
                    f"cheapest adaptive matching it: {best['label']}, NFE {best['nfe']} = {best['nfe'] / em['nfe']:.2f} x EM "
                    f"-> target (<= 1/3) {'met' if 3 * best['nfe'] <= em['nfe'] else 'NOT met'}" if best else "no adaptive run matched it"))
            rows.append(dict(target=target_name, sde=sde_name, floor=floor, runs=runs, verdicts=verdicts))
    return rows


def plot(ode_rows, sde_rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = (2 if sde_rows else 1), max(len(ode_rows), len(sde_rows))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, row in zip(axes[0], ode_rows, strict=False):  # the grid may be wider than the ODE rows
        for label in dict.fromkeys(run["label"] for run in row["runs"]):
            runs = [run for run in row["runs"] if run["label"] == label]
            ax.loglog([run["nfe"] for run in runs], [run["error"] for run in runs], "o-", label=label, ms=3)
        ax.loglog([row["scipy_nfe"]], [row["scipy_error"]], "k*", ms=10, label="scipy RK45 1e-5")
        ax.set(title=f"ODE {row['target']} {row['sde']}", xlabel="NFE", ylabel="relative error")
        ax.legend(fontsize=7)
    for ax, row in zip(axes[-1], sde_rows, strict=False):  # the grid may be wider than the SDE rows
        for run in row["runs"]:
            marker = "s" if run["label"].startswith("euler") else "o"
            ax.errorbar(run["nfe"], run["sw2"][0], yerr=run["sw2"][1], fmt=marker, ms=4, label=run["label"])
        ax.axhline(row["floor"][0], color="k", lw=0.8, ls="--", label="floor")
        ax.set_xscale("log")
        ax.set(title=f"SDE {row['target']} {row['sde']}", xlabel="NFE", ylabel="sliced W2")
        ax.legend(fontsize=6)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"\nplot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ode-samples", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="seeds of the ODE table's x_T draws (one table each)")
    parser.add_argument("--sde-samples", type=int, default=None)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--skip-sde", action="store_true")
    parser.add_argument("--plot", default=os.path.join(os.path.dirname(__file__), "results", "adaptive_vs_scipy.png"))
    parser.add_argument("--sdes", nargs="+", choices=("edm", "vp"), default=["edm", "vp"], help="forward SDEs of the ODE table")
    labels = [run[0] for run in ODE_RUNS]
    parser.add_argument("--runs", nargs="+", choices=labels, default=labels, help="which of the standard ODE runs to keep")
    parser.add_argument("--variant", nargs=3, action="append", default=[], metavar=("LABEL", "SOLVER", "JSON"),
                        help="an extra ODE run over the fine ladder with these solver options (repeatable)")
    args = parser.parse_args()
    runs = [run for run in ODE_RUNS if run[0] in args.runs]
    for label, solver, options in args.variant:
        try:
            runs.append((label, solver, dict(json.loads(options)), FINE_LADDER))
        except (ValueError, TypeError) as error:
            parser.error(f"--variant {label!r}: the options must be a JSON object, e.g. '{{\"factor_max\": 3}}' ({error})")
    ode_rows = [row for seed in args.seeds for row in ode_table(args.ode_samples, seed, args.sdes, runs)]
    if len(args.seeds) > 1:
        seed_summary(ode_rows)
    sde_rows = [] if args.skip_sde else sde_table(args.sde_samples, args.chunks)
    if args.plot:
        plot([row for row in ode_rows if row["seed"] == args.seeds[0]], sde_rows, args.plot)


if __name__ == "__main__":
    main()
