"""Accuracy of the probability-flow likelihood against exact Gaussian-mixture densities, and the NFE it costs.

    PYTHONPATH=src python benchmarks/likelihood_accuracy.py [--samples 32] [--plot benchmarks/results/likelihood_accuracy.png]

For VP, sub-VP, VE and OU on random 2-D and 8-D Gaussian mixtures (exact scores, float64, exact divergence):

1. scipy solve_ivp (RK45 and DOP853) at rtol = atol = tol: the error of log p_eps(x0) in nats per dimension
   (max and mean over the samples) against `GaussianMixture.marginal(sde, eps).log_prob`, with the exact p_T as
   the prior, and the NFE the ScoreModel wrapper counted. Beside it, what the default prior `sde.prior_log_prob`
   adds (|log prior - log p_T| at x_T) and how far p_eps is from the raw data density p_0.
2. The framework's fixed-step torch solvers (heun, rk4) on the uniform and the log-SNR grid.
3. The Hutchinson estimator's standard deviation per sample (Rademacher / Gaussian, 1 and 4 probes).
4. Bits/dim of a dequantised toy image set (4x4 Gaussian pixels, 16 and 256 levels in [-1, 1]): the ODE route,
   the analytic density on the same draws, and the exact discrete -log2 P(y) / D.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import sde_diffusion as sd
from sde_diffusion.likelihood import Quantization, bits_per_dim, log_prob

EPS = 1e-5


def sdes():
    return {"VP": sd.VPSDE(), "sub-VP": sd.SubVPSDE(), "VE": sd.VESDE(0.01, 50.0), "OU": sd.OUSDE()}


def mixtures():
    return {
        "2-D": sd.GaussianMixture.random(2, 3, generator=torch.Generator().manual_seed(1)),
        "8-D": sd.GaussianMixture.random(8, 4, generator=torch.Generator().manual_seed(2)),
    }


def per_dim(a: torch.Tensor, b: torch.Tensor, dim: int) -> tuple[float, float]:
    err = (a - b).abs() / dim
    return float(err.max()), float(err.mean())


def scipy_table(samples: int, tolerances, methods) -> list[dict]:
    rows = []
    print("\n## 1. scipy solve_ivp, exact divergence: error of log p_eps in nats/dim (exact p_T as prior)\n")
    print("| data | SDE | method | tol | max err | mean err | NFE | default-prior error | p_eps vs p_0 | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for data, mix in mixtures().items():
        x0 = mix.sample(samples, torch.Generator().manual_seed(3))
        for name, sde in sdes().items():
            model, p_T = mix.score_model(sde), mix.marginal(sde, sde.T)
            exact = mix.marginal(sde, EPS).log_prob(x0)
            p0_gap = per_dim(exact, mix.log_prob(x0), mix.dim)[0]
            for method in methods:
                for tol in tolerances:
                    start = time.perf_counter()
                    r = log_prob(sde, model, x0, eps=EPS, method=method, rtol=tol, atol=tol, prior_log_prob=p_T.log_prob)
                    seconds = time.perf_counter() - start
                    err_max, err_mean = per_dim(r.log_prob, exact, mix.dim)
                    prior_err = per_dim(sde.prior_log_prob(r.x_T), p_T.log_prob(r.x_T), mix.dim)[0]
                    rows.append(dict(data=data, sde=name, method=method, tol=tol, err=err_max, nfe=r.nfe))
                    print(
                        f"| {data} | {name} | {method} | {tol:.0e} | {err_max:.1e} | {err_mean:.1e} | {r.nfe} | "
                        f"{prior_err:.1e} | {p0_gap:.1e} | {seconds:.1f} |"
                    )
    return rows


def torch_table(samples: int, steps_list) -> list[dict]:
    rows = []
    print("\n## 2. torch fixed-step solvers on the 8-D mixture: max error in nats/dim (NFE = steps x stages)\n")
    print("| SDE | solver | grid | " + " | ".join(f"{n} steps" for n in steps_list) + " |")
    print("|---|---|---|" + "---|" * len(steps_list))
    mix = mixtures()["8-D"]
    x0 = mix.sample(samples, torch.Generator().manual_seed(3))
    for name, sde in sdes().items():
        model, prior = mix.score_model(sde), mix.marginal(sde, sde.T).log_prob
        exact = mix.marginal(sde, EPS).log_prob(x0)
        for solver in ("heun", "rk4"):
            for grid in ("uniform", "log_snr"):
                cells = []
                for n in steps_list:
                    r = log_prob(sde, model, x0, eps=EPS, method=solver, steps=n, grid=grid, prior_log_prob=prior)
                    err = per_dim(r.log_prob, exact, mix.dim)[0]
                    rows.append(dict(sde=name, solver=solver, grid=grid, steps=n, err=err, nfe=r.nfe))
                    cells.append(f"{err:.1e}")
                print(f"| {name} | {solver} | {grid} | " + " | ".join(cells) + " |")
    return rows


def hutchinson_table(copies: int) -> None:
    print(f"\n## 3. Hutchinson on the 8-D mixture, VP, RK45 tol 1e-6: {copies} estimates of one point\n")
    print("| probe | probes | mean - exact (nats) | std of one estimate (nats) | z = (mean - exact) / SE | NFE |")
    print("|---|---|---|---|---|---|")
    sde, mix = sd.VPSDE(), mixtures()["8-D"]
    point = mix.sample(1, torch.Generator().manual_seed(4))
    exact = float(mix.marginal(sde, EPS).log_prob(point))
    for probe in ("rademacher", "gaussian"):
        for n_probes in (1, 4):
            r = log_prob(
                sde, mix.score_model(sde), point.expand(copies, -1), eps=EPS, rtol=1e-6, atol=1e-6,
                divergence="hutchinson", probe=probe, n_probes=n_probes, generator=torch.Generator().manual_seed(5),
                prior_log_prob=mix.marginal(sde, sde.T).log_prob,
            )
            mean, std = float(r.log_prob.mean()), float(r.log_prob.std())
            z = (mean - exact) / (std / math.sqrt(copies))
            print(f"| {probe} | {n_probes} | {mean - exact:+.4f} | {std:.3f} | {z:+.2f} | {r.nfe} |")


def bpd_table(samples: int) -> None:
    print("\n## 4. bits/dim of 4x4 Gaussian toy images quantised in [-1, 1] (VP, exact score, default prior, RK45 1e-6)\n")
    print("| levels | offset -log2 w | ODE bpd | analytic bpd, same draws | max per-draw difference | exact discrete bpd | NFE |")
    print("|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(15)
    stds = 0.2 + 0.2 * torch.rand(16, generator=g, dtype=torch.float64)
    mix = sd.GaussianMixture.gaussian(torch.zeros(16), torch.diag(stds**2), event_shape=(1, 4, 4))
    x = mix.sample(samples, g)
    sde = sd.VPSDE()
    for levels in (16, 256):
        quant = Quantization(levels, -1.0, 1.0)
        w = quant.bin_width
        y = (torch.round((x + 1) / w) * w - 1).clamp(-1, 1)
        r = bits_per_dim(sde, mix.score_model(sde), y, levels=levels, n_dequant=4, rtol=1e-6, atol=1e-6, generator=torch.Generator().manual_seed(16))
        g_again = torch.Generator().manual_seed(16)
        analytic = torch.stack([quant.bits_per_dim(mix.log_prob(quant.dequantize(y, g_again)), 16) for _ in range(4)])
        cdf = lambda z: 0.5 * torch.special.erfc(-z / math.sqrt(2))  # noqa: E731
        yf = y.reshape(len(y), 16)
        discrete = -torch.log(cdf((yf + w / 2) / stds) - cdf((yf - w / 2) / stds)).sum(1) / 16 / math.log(2)
        print(
            f"| {levels} | {-math.log2(w):.4f} | {r.mean:.4f} +- {r.stderr:.4f} | {float(analytic.mean()):.4f} | "
            f"{float((r.draws - analytic).abs().max()):.1e} | {float(discrete.mean()):.4f} | {r.nfe} |"
        )


def plot(rows_scipy, rows_torch, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(sdes(), ("C0", "C1", "C2", "C3"), strict=True))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (data, name, method), group in _groups(rows_scipy, ("data", "sde", "method")).items():
        style = ("o" if data == "2-D" else "s") + ("-" if method == "RK45" else "--")
        axes[0].loglog([r["nfe"] for r in group], [max(r["err"], 1e-12) for r in group], style, color=colors[name], label=f"{name} {data} {method}")
    axes[0].set(xlabel="NFE", ylabel="max error (nats/dim)", title="scipy, exact divergence")
    for (name, solver, grid), group in _groups(rows_torch, ("sde", "solver", "grid")).items():
        if solver == "rk4":
            style = "o-" if grid == "log_snr" else "x:"
            axes[1].loglog([r["nfe"] for r in group], [max(r["err"], 1e-12) for r in group], style, color=colors[name], label=f"{name} {grid}")
    axes[1].set(xlabel="NFE", ylabel="max error (nats/dim)", title="rk4, 8-D mixture")
    for ax in axes:
        ax.axhline(1e-3, color="gray", lw=0.8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"\nplot written to {path}")


def _groups(rows, keys):
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1e-3, 1e-5, 1e-7, 1e-9])
    parser.add_argument("--methods", nargs="+", default=["RK45", "DOP853"])
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--copies", type=int, default=512, help="Hutchinson estimates per probe setting")
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/results/likelihood_accuracy.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows_scipy = scipy_table(args.samples, args.tolerances, args.methods)
    rows_torch = torch_table(args.samples, args.steps)
    hutchinson_table(args.copies)
    bpd_table(args.samples)
    if args.plot:
        plot(rows_scipy, rows_torch, args.plot)


if __name__ == "__main__":
    main()
