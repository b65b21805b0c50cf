"""torchsde's SDE solvers on the reverse SDE.

torchsde integrates forward in its time variable, so time is reversed by the substitution s = -t:
`dx = -[f(x, -s) - g(-s)^2 score(x, -s)] ds + g(-s) dW_s` on s in [-T, -t_min], where W_s is the reverse-time
Brownian motion. The noise is diagonal and independent of x, so Ito and Stratonovich forms coincide and every
torchsde method applies. Brownian increments come from a `BrownianInterval` seeded from the caller's generator.
"""

from __future__ import annotations

import torch

from ..reverse import ReverseSDE
from .base import SampleResult, Solver, check_finite

STRATONOVICH_ONLY = ("reversible_heun", "heun", "midpoint", "euler_heun")
METHODS = ("euler", "milstein", "srk") + STRATONOVICH_ONLY


class _TimeReversed(torch.nn.Module):
    noise_type = "diagonal"

    def __init__(self, term: ReverseSDE, shape: torch.Size, sde_type: str):
        super().__init__()
        self.term, self.shape, self.sde_type = term, shape, sde_type

    def f(self, s, y):
        x = y.reshape(self.shape)
        return -self.term.drift(x, -s).reshape(y.shape)

    def g(self, s, y):
        return self.term.diffusion(-s) * torch.ones_like(y)


class TorchSDE(Solver):
    """`torchsde.sdeint` with `method` in euler, milstein, srk, reversible_heun, heun, midpoint, euler_heun.

    Steps are uniform, `(t_max - t_min) / steps` (torchsde's constant `dt`); only the grid's endpoints are used.
    """

    name = "torchsde"
    stochastic = True
    default_steps = 1000

    def __init__(self, method: str = "euler"):
        if method not in METHODS:
            raise ValueError(f"unknown torchsde method {method!r}; choose one of {METHODS}")
        self.method = method

    def solve(self, score, x_T, times, generator=None, *, keep_trajectory=False, progress=False):
        import torchsde

        term = ReverseSDE(score.sde, score)
        sde_type = "stratonovich" if self.method in STRATONOVICH_ONLY else "ito"
        system = _TimeReversed(term, x_T.shape, sde_type)
        y0 = x_T.reshape(len(x_T), -1)
        s0, s1 = -float(times[0]), -float(times[-1])
        ts = torch.tensor([s0, s1], dtype=x_T.dtype, device=x_T.device)
        entropy = None
        if generator is not None:
            entropy = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        bm = torchsde.BrownianInterval(
            t0=s0, t1=s1, size=y0.shape, dtype=x_T.dtype, device=x_T.device, entropy=entropy,
            levy_area_approximation="space-time" if self.method == "srk" else "none",
        )
        nfe_start = score.nfe
        dt = (s1 - s0) / (len(times) - 1)
        ys = torchsde.sdeint(system, y0, ts, bm=bm, method=self.method, dt=dt)
        x = ys[-1].reshape(x_T.shape)
        check_finite(x, self, len(times) - 2, len(times) - 1, times[-2], times[-1])
        return SampleResult(x, score.nfe - nfe_start, times, [x_T, x] if keep_trajectory else None)
