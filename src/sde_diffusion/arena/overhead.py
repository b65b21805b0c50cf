"""Solver overhead: what a solve costs beyond its score evaluations, as a fraction of the network's own cost.

For a batch of B samples and an MLP noise-prediction network with cost `t_net` per call, a solve that spends `nfe`
evaluations in `t_solve` seconds has the overhead ratio

    (t_solve - nfe * t_net) / (nfe * t_net),

the fraction by which it is slower than its network calls alone. The difference of two close numbers would be noise
at large B, so the solve is timed with a stand-in network that does almost nothing (the exact noise prediction
of N(0, I) data, eps = sigma(t) x, timed on its own): the solver's arithmetic, the wrapper's conversions and the
Python per step are the same whatever the network is, and

    ratio = (t_solve[stand-in] - nfe * t_stand_in) / (nfe * t_net[MLP]).

`direct_check` times one solver with the MLP itself against as many bare MLP calls, in alternation, to show that
the two ways agree. Times are CPU times of this process
(`time.process_time`, one torch thread), the least over repeats, so that other processes sharing the machine do not
distort the ratio; everything runs under `torch.no_grad()` in float32, on the VP SDE.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..sampling import sample
from ..score import ScoreModel
from ..sde import VPSDE
from .contestants import Contestant, Ours


class MLPNoise(nn.Module):
    """eps_theta(x, t): an MLP on [x, Fourier features of t] with SiLU activations, the usual toy-data network."""

    freqs: torch.Tensor  # a buffer

    def __init__(self, dim: int, width: int = 256, depth: int = 3, frequencies: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), frequencies)))
        layers, size = [], dim + 2 * frequencies
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.SiLU()]
            size = width
        self.net = nn.Sequential(*layers, nn.Linear(size, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None].to(x.dtype) * self.freqs
        return self.net(torch.cat([x, angles.sin(), angles.cos()], dim=1))


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    """The least CPU time of `repeats` calls (process time: other processes on the machine do not inflate it)."""
    best = math.inf
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def measure_overhead(
    contestants: Sequence[Contestant],
    batch_sizes: Sequence[int] = (1_000, 4_000, 16_000, 64_000),
    dim: int = 2,
    width: int = 256,
    steps: int = 20,
    repeats: int = 3,
    direct_check: str | None = "ddim",
    log: Callable[[str], None] = lambda s: None,
) -> list[dict]:
    """Overhead ratios of each of our solvers (fixed-step at `steps` steps; adaptive at its defaults) per batch size."""
    sde = VPSDE()
    ours = [c for c in contestants if isinstance(c, Ours) and c.family == "ours"]
    rows = []
    torch.manual_seed(0)
    network = MLPNoise(dim, width).eval()
    stand_in = lambda x, t: x * sde.sigma(t).to(x.dtype)[:, None]  # noqa: E731  (exact eps for N(0, I) data)
    with torch.no_grad():
        for batch in batch_sizes:
            x_T = torch.randn(batch, dim, generator=torch.Generator().manual_seed(batch))
            t = torch.full((batch,), 0.5)
            calls = lambda k: [network(x_T, t) for _ in range(k)]  # noqa: E731, B023  (called within this iteration)
            calls(1)
            t_net = _best_time(lambda: calls(10), repeats) / 10  # noqa: B023  (called within this iteration)
            t_stand_in = _best_time(lambda: [stand_in(x_T, t) for _ in range(100)], repeats) / 100  # noqa: B023  (called within this iteration)
            log(f"overhead: batch {batch}: MLP {t_net * 1e3:.2f} ms per call, stand-in {t_stand_in * 1e3:.3f} ms")
            for c in ours:
                model = ScoreModel(stand_in, sde, prediction="eps")
                g = torch.Generator().manual_seed(0)

                def solve():
                    sample(sde, model, c.name, x_T=x_T, steps=steps, grid=c.grid, generator=g, **c.options)  # noqa: B023  (called within this iteration)

                try:
                    before = model.nfe
                    solve()
                    nfe = model.nfe - before
                    t_solve = _best_time(solve, repeats)
                except Exception as e:  # a solver that cannot run here is reported, not fatal
                    rows.append(dict(label=c.label, batch=batch, steps=steps, nfe=math.nan, error=f"{type(e).__name__}: {e}"[:200]))
                    continue
                overhead = t_solve - nfe * t_stand_in
                rows.append(dict(
                    label=c.label, batch=batch, steps=steps, nfe=nfe, stochastic=c.stochastic,
                    net_ms=t_net * 1e3, solve_stand_in_ms=t_solve * 1e3, overhead_ms_per_nfe=overhead / nfe * 1e3,
                    ratio=overhead / (nfe * t_net), direct_ratio=math.nan, error="",
                ))
            if direct_check:  # the same solve with the MLP, against as many bare MLP calls, timed in alternation
                check = next((r for r in rows if r["label"] == direct_check and r["batch"] == batch and not r["error"]), None)
                chosen = next((c for c in ours if c.label == direct_check), None)
                if check and chosen:
                    model = ScoreModel(network, sde, prediction="eps")
                    real, bare = math.inf, math.inf
                    for _ in range(max(repeats, 5)):
                        real = min(real, _best_time(lambda: sample(sde, model, chosen.name, x_T=x_T, steps=steps, **chosen.options), 1))  # noqa: B023  (called within this iteration)
                        bare = min(bare, _best_time(lambda: calls(check["nfe"]), 1))  # noqa: B023  (called within this iteration)
                    check["direct_ratio"] = (real - bare) / bare
    return rows


def overhead_markdown(rows: list[dict]) -> str:
    """Solvers x batch sizes table of overhead ratios (percent of the network's cost)."""
    batches = sorted({r["batch"] for r in rows})
    labels = list(dict.fromkeys(r["label"] for r in rows))
    net = {r["batch"]: r["net_ms"] for r in rows if not r.get("error")}
    out = [
        "## Overhead: solver cost beyond the network's, in % of the network's cost",
        "",
        "MLP eps-network (3 hidden layers), float32, VP SDE, one solve of "
        f"{rows[0]['steps']} steps. Network cost per call: " + ", ".join(f"{net[b]:.2f} ms at {b}" for b in batches if b in net) + ".",
        "",
        "| solver | NFE | " + " | ".join(f"B={b}" for b in batches) + " |",
        "|---|---|" + "---|" * len(batches),
    ]
    for label in labels:
        cells, nfe = [], "-"
        for b in batches:
            r = next((r for r in rows if r["label"] == label and r["batch"] == b), None)
            if r is None or r.get("error"):
                cells.append("fails" if r else "")
                continue
            nfe = f"{r['nfe']:.0f}"
            cell = f"{100 * r['ratio']:.1f}%"
            if not math.isnan(r.get("direct_ratio", math.nan)):
                cell += f" (direct {100 * r['direct_ratio']:.1f}%)"
            cells.append(cell)
        out.append(f"| {label} | {nfe} | " + " | ".join(cells) + " |")
    return "\n".join(out)
