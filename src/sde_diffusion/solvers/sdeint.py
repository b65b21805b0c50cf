"""torchsde's SDE solvers on the reverse SDE, along any of our time grids.

torchsde integrates forward in its own time with a constant step, so the reverse SDE is written in a new time
s in [0, N] that runs through the grid t_0 > t_1 > ... > t_N piecewise linearly, t(s) = t_k + (s - k) (t_{k+1} - t_k)
for s in [k, k + 1). With dt/ds = t_{k+1} - t_k < 0 on that piece, the time-changed SDE is

    dx = [f(x, t) - g(t)^2 score(x, t)] (dt/ds) ds + g(t) sqrt(|dt/ds|) dW_s,

and torchsde's unit steps land exactly on the grid times (its Euler step is then our Euler-Maruyama step), while
a higher-order method's inner stages stay inside one linear piece. The noise is diagonal and independent of x,
so Ito and Stratonovich forms coincide and every torchsde method applies. Brownian increments come from a
`BrownianInterval` seeded from the caller's generator.
"""

from __future__ import annotations

import torch

from .base import SampleResult, Solver, check_finite

STRATONOVICH_ONLY = ("reversible_heun", "heun", "midpoint", "euler_heun")
METHODS = ("euler", "milstein", "srk") + STRATONOVICH_ONLY


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


class TorchSDE(Solver):
    """`torchsde.sdeint` with `method` in euler, milstein, srk, reversible_heun, heun, midpoint, euler_heun.

    One torchsde step per grid interval, through the piecewise-linear time change above.
    """

    name = "torchsde"
    stochastic = True
    default_steps = 1000

    def __init__(self, method: str = "euler"):
        if method not in METHODS:
            raise ValueError(f"unknown torchsde method {method!r}; choose one of {METHODS}")
        self.method = method

    def integrate(self, term, x_T, times, generator=None, *, keep_trajectory=False, progress=False):
        import torchsde

        sde_type = "stratonovich" if self.method in STRATONOVICH_ONLY else "ito"
        system = _TimeChanged(term, x_T.shape, times, sde_type)
        y0 = x_T.reshape(len(x_T), -1)
        n_steps = len(times) - 1
        ts = torch.arange(n_steps + 1 if keep_trajectory else 2, dtype=x_T.dtype, device=x_T.device)
        ts[-1] = n_steps  # with a trajectory, the state at every grid time; else only the end
        entropy = None
        if generator is not None:
            entropy = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        bm = torchsde.BrownianInterval(
            t0=0.0, t1=float(n_steps), size=y0.shape, dtype=x_T.dtype, device=x_T.device, entropy=entropy,
            levy_area_approximation="space-time" if self.method == "srk" else "none",
        )
        ys = torchsde.sdeint(system, y0, ts, bm=bm, method=self.method, dt=1.0)
        x = ys[-1].reshape(x_T.shape)
        check_finite(x, self, len(times) - 2, len(times) - 1, times[-2], times[-1])
        trajectory = [y.reshape(x_T.shape) for y in ys] if keep_trajectory else None
        return SampleResult(x, 0, times, trajectory)
