"""UniPC of order 2 against order 3 under guidance, on exact scores: is order 3 a safe default from 15 NFE?

The guided score is classifier-free guidance's combination s_w = (1 + w) s_c - w s, with s the exact score of the
8-Gaussian ring (`GaussianMixture.ring`) and s_c that of its class (the four components 0-3). For each SDE (VP, EDM),
guidance weight w and NFE budget, both orders run on the log-SNR grid with NFE - 1 steps and the final Tweedie step
(`denoise=True`). Each is measured by its relative RMS trajectory error (`metrics.relative_error`) against dopri5 at
rtol = atol = 1e-9 from the same `--samples` prior draws, which ends with the same Tweedie step. The table prints
order 2 / order 3 and their ratio. Above 1 means order 3 is worse.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/guided_orders.py [--samples 1024]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
import sde_diffusion as sd
from sde_diffusion.metrics import relative_error

WEIGHTS = (0.0, 1.0, 3.0, 7.0)
BUDGETS = (10, 15, 20, 30, 50)


def guided(sde: sd.LinearSDE, w: float) -> sd.ScoreModel:
    """s_w(x, t) = (1 + w) s_class(x, t) - w s(x, t), exact, counted by its `ScoreModel`."""
    full = sd.GaussianMixture.ring(8, radius=2.0, std=0.05)
    one_class = sd.GaussianMixture(torch.ones(4), full.means[:4], full.covs[:4])
    return sd.ScoreModel(lambda x, t: (1 + w) * one_class.score(x, t, sde) - w * full.score(x, t, sde), sde, "score")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1024)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    print("| SDE | w | " + " | ".join(f"{nfe} NFE: order 2 / order 3 (ratio)" for nfe in BUDGETS) + " |")
    print("|---|---|" + "---|" * len(BUDGETS))
    for name, sde in (("vp", sd.VPSDE()), ("edm", sd.EDMSDE())):
        x_T = sde.prior_sample((args.samples, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
        for w in WEIGHTS:
            model = guided(sde, w)
            reference = sd.sample(sde, model, "dopri5", x_T=x_T, denoise=True, rtol=1e-9, atol=1e-9).x
            cells = []
            for nfe in BUDGETS:
                two, three = (float(relative_error(sd.sample(sde, model, "unipc", order=order, x_T=x_T, steps=nfe - 1,
                                                             grid="log_snr", denoise=True).x, reference))
                              for order in (2, 3))
                cells.append(f"{two:.2e} / {three:.2e} ({three / two:.2f})")
            print(f"| {name} | {w:g} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s wall")


if __name__ == "__main__":
    main()
