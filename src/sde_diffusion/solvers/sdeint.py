"""torchsde's SDE solvers on the reverse SDE, along any of our time grids.

torchsde integrates forward in its own time with a constant step, so the reverse SDE is written in a new time
s in [0, N] that runs through the grid t_0 > t_1 > ... > t_N piecewise linearly, t(s) = t_k + (s - k) (t_{k+1} - t_k)
for s in [k, k + 1). With dt/ds = t_{k+1} - t_k < 0 on that piece, the time-changed SDE is

    dx = [f(x, t) - g(t)^2 score(x, t)] (dt/ds) ds + g(t) sqrt(|dt/ds|) dW_s,

and torchsde's unit steps land exactly on the grid times (its Euler step is then our Euler-Maruyama step), while
a higher-order method's inner stages stay inside one linear piece. The noise is diagonal and independent of x,
so Ito and Stratonovich forms coincide and every torchsde method applies. Brownian increments come from a
`BrownianInterval` seeded from the caller's generator (or, under per-sample noise, one per sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..noise import SeededNoise
from .base import GridState, Solver

STRATONOVICH_ONLY = ("reversible_heun", "heun", "midpoint", "euler_heun")
METHODS = ("euler", "milstein", "srk", *STRATONOVICH_ONLY)


class _TimeChanged(torch.nn.Module):
    noise_type = "diagonal"

    def __init__(self, term, shape: torch.Size, times: torch.Tensor, sde_type: str):
        super().__init__()
        self.term, self.shape, self.sde_type = term, shape, sde_type
        self.times, self.dt_ds = times, times[1:] - times[:-1]

    def _time(self, s: torch.Tensor):
        k = int(torch.clamp(torch.floor(s), 0, len(self.dt_ds) - 1))
        return self.times[k] + (s - k) * self.dt_ds[k], self.dt_ds[k]

    def f(self, s, y):
        t, dt_ds = self._time(s)
        return (self.term.drift(y.reshape(self.shape), t) * dt_ds).reshape(y.shape)

    def g(self, s, y):
        t, dt_ds = self._time(s)
        return self.term.diffusion(t) * (-dt_ds).sqrt() * torch.ones_like(y)


class PerSampleBrownian:
    """Brownian motions of one sample each, stacked into the batch torchsde asks for: row i's increments are those
    of path i alone (torchsde's `BaseBrownian` interface: `bm(ta, tb, return_U, return_A)`)."""

    def __init__(self, paths):
        self.paths = paths
        first = paths[0]
        self.dtype, self.device, self.levy_area_approximation = first.dtype, first.device, first.levy_area_approximation
        self.shape = torch.Size((len(paths), *first.shape[1:]))

    def size(self):
        return self.shape

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        parts = [path(ta, tb, return_U=return_U, return_A=return_A) for path in self.paths]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(column) for column in zip(*parts, strict=True))
        return torch.cat(parts)

    def __repr__(self):
        return f"PerSampleBrownian({len(self.paths)} paths)"


@dataclass
class TorchSDEState(GridState):
    """torchsde's solver object on the time-changed SDE, and its own state between steps."""

    solver: Any = None
    extra: Any = None
    s: torch.Tensor | None = None  # torchsde's own time: the grid index


class TorchSDE(Solver):
    """torchsde's SDE solvers (`method` in euler, milstein, srk, reversible_heun, heun, midpoint, euler_heun) as our
    steps: one torchsde step per grid interval, through the piecewise-linear time change above, with torchsde's own
    solver object and its extra state carried between steps (as `sdeint` does internally).
    """

    name = "torchsde"
    stochastic = True
    default_steps = 1000

    def __init__(self, method: str = "euler"):
        if method not in METHODS:
            raise ValueError(f"unknown torchsde method {method!r}; choose one of {METHODS}")
        self.method = method

    def init(self, term, x, times):
        return TorchSDEState(times)

    def start(self, term, x, times, generator):
        """torchsde's solver and its first extra state, with a Brownian interval seeded from `generator`."""
        import torchsde
        from torchsde._core import methods
        from torchsde._core.sdeint import check_contract

        sde_type = "stratonovich" if self.method in STRATONOVICH_ONLY else "ito"
        y0 = x.reshape(len(x), -1)
        n_steps = len(times) - 1
        ts = torch.arange(n_steps + 1, dtype=x.dtype, device=x.device)
        levy = "space-time" if self.method == "srk" else "none"

        def interval(size, entropy):
            return torchsde.BrownianInterval(t0=0.0, t1=float(n_steps), size=size, dtype=x.dtype, device=x.device,
                                             entropy=entropy, levy_area_approximation=levy)

        if isinstance(generator, SeededNoise):  # one Brownian path per sample, seeded from its own generator
            bm = PerSampleBrownian([interval((1, y0.shape[1]), e) for e in generator.integers()])
        else:
            entropy = None
            if generator is not None:
                entropy = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
            bm = interval(y0.shape, entropy)
        sde, y0, ts, bm, method, options = check_contract(_TimeChanged(term, x.shape, times, sde_type), y0, ts, bm,
                                                          self.method, False, {}, None, False)
        solver = methods.select(method=method, sde_type=sde.sde_type)(
            sde=sde, bm=bm, dt=1.0, adaptive=False, rtol=1e-5, atol=1e-4, dt_min=1e-5, options=options
        )
        return solver, solver.init_extra_solver_state(ts[0], y0), ts

    def step(self, term, x, t, t_next, state: TorchSDEState, generator):
        if state.solver is None:  # the Brownian interval is seeded from the first step's generator
            state.solver, state.extra, state.s = self.start(term, x, state.times, generator)
        assert state.s is not None  # set with the solver, on the first step
        i = state.index
        y, state.extra = state.solver.step(state.s[i], state.s[i + 1], x.reshape(len(x), -1), state.extra)
        state.index += 1
        return y.reshape(x.shape), None, state
