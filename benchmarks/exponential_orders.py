"""Trajectory error vs NFE of the exponential integrators, against a tight reference from the same x_T.

For each target (2-D ring, 32-D random Gaussian mixture with condition number 50), SDE (EDM, sigma 80 -> 0.002;
VP, t 1 -> 1e-3), time grid (uniform, log_snr, edm) and NFE budget (10, 20, 50), every deterministic solver is
run with the largest number of steps its cost allows (steps = NFE // evaluations per step) and its relative RMS
error ||x - x_ref|| / ||x_ref|| against scipy's DOP853 at rtol = atol = 1e-11 (float64) is printed, with the NFE it
actually spent in brackets when that differs from the budget. The adaptive solver picks its own steps: it is
reported at three tolerances (rtol = atol) with its measured NFE.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/exponential_orders.py [--samples 128] [--plot out.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
import sde_diffusion as sd
from sde_diffusion.arena.problems import get_problem, get_sde
from sde_diffusion.metrics import relative_error

SOLVERS = [  # (label, name, options, evaluations per step)
    ("ddim", "ddim", {}, 1),
    ("dpm_solver_2", "dpm_solver_2", {}, 2),
    ("dpm_solver_3", "dpm_solver_3", {}, 3),
    ("dpm_solver_pp_2s", "dpm_solver_pp_2s", {}, 2),
    ("dpm_solver_pp_2m", "dpm_solver_pp_2m", {}, 1),
    ("dpm_solver_pp_3m", "dpm_solver_pp_3m", {}, 1),
    ("unipc-2 bh2", "unipc", {"order": 2, "variant": "bh2"}, 1),
    ("unipc-3 bh2", "unipc", {"order": 3, "variant": "bh2"}, 1),
    ("unipc-3 bh1", "unipc", {"order": 3, "variant": "bh1"}, 1),
]
GRIDS = ("uniform", "log_snr", "edm")
NFES = (10, 20, 50)
ADAPTIVE_TOLS = (1e-2, 1e-3, 1e-4)


def targets():
    """The arena's 2-D ring and 32-D mixture (sde_diffusion.arena.problems)."""
    return {name: get_problem(name).data for name in ("ring-2d", "gmm-32d")}


def sdes():
    return {name: get_sde(name) for name in ("edm", "vp")}


def reference(sde, model, x_T, t_min):
    times = torch.tensor([sde.T, t_min], dtype=torch.float64)
    return sd.solvers.get("scipy", method="DOP853", rtol=1e-11, atol=1e-11).solve(model, x_T, times).x


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=128, help="trajectories per configuration")
    parser.add_argument("--plot", default=None, help="write an error-vs-NFE chart (log_snr grid) to this PNG")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    results = {}
    for tname, target in targets().items():
        for sname, sde in sdes().items():
            model = target.score_model(sde)
            x_T = sde.prior_sample((args.samples, target.dim), torch.Generator().manual_seed(1), dtype=torch.float64)
            t_min = sde.default_t_min
            start = time.time()
            ref = reference(sde, model, x_T, t_min)
            print(f"\n## {tname}, {sname} SDE (t {sde.T:g} -> {t_min:g}); reference {time.time() - start:.1f}s, "
                  f"{args.samples} trajectories; relative RMS error [NFE spent if not the budget]")
            header = f"| {'solver':18s} | {'grid':8s} | " + " | ".join(f"NFE {n:<9d}" for n in NFES) + " |"
            print(header)
            print("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|")
            for label, name, options, cost in SOLVERS:
                for grid in GRIDS:
                    cells = []
                    for nfe in NFES:
                        steps = max(nfe // cost, 1)
                        r = sd.sample(sde, model, name, x_T=x_T, steps=steps, grid=grid, t_min=t_min, **options)
                        err = relative_error(r.x, ref)
                        results[(tname, sname, label, grid, nfe)] = (err, r.nfe)
                        cells.append(f"{err:.2e}" + (f" [{r.nfe}]" if r.nfe != nfe else "").ljust(5))
                    print(f"| {label:18s} | {grid:8s} | " + " | ".join(f"{c:13s}" for c in cells) + " |")
            for tol in ADAPTIVE_TOLS:
                r = sd.sample(sde, model, "adaptive_dpm_solver", x_T=x_T, t_min=t_min, rtol=tol, atol=tol)
                err = relative_error(r.x, ref)
                results[(tname, sname, "adaptive", tol)] = (err, r.nfe)
                print(f"| adaptive_dpm_solver rtol=atol={tol:g}: error {err:.2e}, NFE {r.nfe} "
                      f"({r.stats['accepted_steps']} accepted, {r.stats['rejected_steps']} rejected) |")
    if args.plot:
        plot(results, args.plot)
    return results


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(k[0], k[1]) for k in results if len(k) == 5})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (tname, sname) in zip(axes[0], panels, strict=True):
        for label, *_ in SOLVERS:
            pts = [results[(tname, sname, label, "log_snr", n)] for n in NFES]
            ax.loglog([p[1] for p in pts], [p[0] for p in pts], "o-", label=label)
        ada = [results[(tname, sname, "adaptive", tol)] for tol in ADAPTIVE_TOLS]
        ax.loglog([p[1] for p in ada], [p[0] for p in ada], "k*--", label="adaptive")
        ax.set(title=f"{tname}, {sname} (log_snr grid)", xlabel="NFE", ylabel="relative RMS error")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
