"""Train an MLP on 2-D toys for a fixed wall-clock budget, sample with the PC sampler and the probability-flow ODE,
and compare with fresh data by sliced Wasserstein-2 against the two-sample floor.

For each toy: a residual MLP (Fourier time embedding) trained by eps matching on the VP SDE for `--seconds` of
wall-clock time; samples from the EMA weights with predictor-corrector (reverse diffusion + Langevin) and with the
PF-ODE (scipy's RK45 at rtol = atol = 1e-5, as Song et al. 2021), each ending with the Tweedie denoising step.
Distances are sliced W2 over 512 fixed random directions between `--n` samples and `--n` fresh data points,
averaged over 5 fresh reference sets; the floor is the same average between pairs of fresh data sets.
For the 8 Gaussians, whose exact score is known, the same samplers driven by the exact score show how much of
the distance is the sampler's own discretisation.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/train_toys.py [--seconds 240 --n 5000]

Prints a table, writes benchmarks/results/toys.json and benchmarks/results/toys.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sde_diffusion as sd
from sde_diffusion import data, metrics
from sde_diffusion.networks import MLP
from sde_diffusion.training import DSMLoss, Trainer

RESULTS = Path(__file__).parent / "results"
SAMPLERS = {
    "pc": dict(solver="pc", steps=500, predictor="reverse_diffusion", corrector="langevin", snr=0.16),
    "pf_ode": dict(solver="scipy", method="RK45", rtol=1e-5, atol=1e-5),
}
REPEATS = 5  # reference draws: the floor and each sampler's distance are means over the same number of pairs


def draw(sde, score_model, sampler: dict, n: int, seed: int) -> torch.Tensor:
    opts = dict(sampler)
    solver = opts.pop("solver")
    result = sd.sample(sde, score_model, solver, shape=(n, 2), denoise=True, generator=torch.Generator().manual_seed(seed), **opts)
    return result.x.detach()


def train_for(trainer: Trainer, seconds: float, chunk: int = 250) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        trainer.train(trainer.step + chunk)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toys", nargs="+", default=["checkerboard", "swiss_roll", "eight_gaussians"])
    parser.add_argument("--seconds", type=float, default=240.0, help="training wall-clock budget per toy")
    parser.add_argument("--n", type=int, default=5000, help="samples compared with as many fresh data points")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--importance-sampling", action="store_true", help="t uniform in log-SNR (reweighted)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.seconds:.0f} s of training per toy, n = {args.n}")

    sde = sd.VPSDE()
    projections = metrics.random_projections(2, 512, torch.Generator().manual_seed(7))
    sw2 = lambda x, y: metrics.sliced_wasserstein(x, y, projections)  # noqa: E731
    rows, panels = [], []
    for name in args.toys:
        dataset = data.get(name, n=200_000, seed=0)
        torch.manual_seed(0)
        trainer = Trainer(
            MLP(2, width=args.width, depth=args.depth, time_embedding="fourier"), DSMLoss(sde, "eps", "sigma2", importance_sampling=args.importance_sampling), dataset,
            batch_size=args.batch, lr=args.lr, warmup_steps=500, ema_decay=0.999, grad_clip=1.0, progress=False, log_every=500,
        )
        seconds = train_for(trainer, args.seconds)
        model = trainer.score_model()
        g = torch.Generator().manual_seed(1000)
        references = [dataset.sample(args.n, g) for _ in range(REPEATS)]
        floors = torch.tensor([sw2(ref, dataset.sample(args.n, g)) for ref in references])
        floor = floors.mean().item()
        row = {"toy": name, "steps": trainer.step, "train_seconds": seconds, "final_loss": trainer.history[-1]["loss"],
               "floor": floor, "floor_sd": floors.std().item()}
        samples = {"data": references[0]}
        distance = lambda x: sum(sw2(x, ref) for ref in references) / REPEATS  # noqa: E731, B023  (called within this iteration)
        for key, sampler in SAMPLERS.items():
            model.reset_nfe()
            start = time.perf_counter()
            x = draw(sde, model, sampler, args.n, seed=3)
            row[f"{key}_seconds"], row[f"{key}_nfe"] = time.perf_counter() - start, model.nfe
            row[key] = distance(x)
            row[f"{key}_ratio"] = row[key] / floor
            samples[key] = x
        if dataset.mixture is not None:  # exact score: the samplers' own error
            exact = dataset.mixture.score_model(sde)
            for key, sampler in SAMPLERS.items():
                row[f"exact_{key}_ratio"] = distance(draw(sde, exact, sampler, args.n, seed=3).float()) / floor
        rows.append(row)
        panels.append((name, samples))
        extra = "".join(f"  exact-score {k} {row[f'exact_{k}_ratio']:.2f}x" for k in SAMPLERS if f"exact_{k}_ratio" in row)
        print(f"{name:16s} {trainer.step:6d} steps in {seconds:5.0f} s  loss {row['final_loss']:.4f}  floor {floor:.4f}±{row['floor_sd']:.4f}  "
              f"PC {row['pc']:.4f} ({row['pc_ratio']:.2f}x, {row['pc_nfe']} NFE)  PF-ODE {row['pf_ode']:.4f} "
              f"({row['pf_ode_ratio']:.2f}x, {row['pf_ode_nfe']} NFE){extra}", flush=True)

    print("\n| toy | steps | train s | SW2 floor | PC SW2 (x floor) | PF-ODE SW2 (x floor) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['toy']} | {r['steps']} | {r['train_seconds']:.0f} | {r['floor']:.4f} ± {r['floor_sd']:.4f} | "
              f"{r['pc']:.4f} ({r['pc_ratio']:.2f}x) | {r['pf_ode']:.4f} ({r['pf_ode_ratio']:.2f}x) |")
    (RESULTS / "toys.json").write_text(json.dumps(rows, indent=2))
    plot(panels, RESULTS / "toys.png")
    print(f"wrote {RESULTS / 'toys.json'} and {RESULTS / 'toys.png'}")


def plot(panels, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"data": "data", "pc": "PC sampler", "pf_ode": "PF-ODE (RK45)"}
    fig, axes = plt.subplots(len(panels), 3, figsize=(9, 3 * len(panels)), squeeze=False)
    for row, (name, samples) in zip(axes, panels, strict=True):
        for ax, key in zip(row, ("data", "pc", "pf_ode"), strict=True):
            x = samples[key].numpy()
            ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.5, color="k" if key == "data" else "C0")
            ax.set_xlim(-3.3, 3.3), ax.set_ylim(-3.3, 3.3), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{name}: {titles[key]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
