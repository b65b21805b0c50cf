"""What a solver integrates: a generic term, or the diffusion problem; and the variable it integrates in.

Two problem types (diffrax's "terms", specialised to diffusion models):

- a **term**: anything with `drift(x, t)` and `diffusion(t)`, the SDE `dx = drift dt + diffusion dW` (an ODE when
  the diffusion is zero). `ReverseSDE` and its probability flow are terms, and so is the likelihood's augmented ODE.
  Solvers that read nothing else (Euler, Heun, RK4, the embedded pairs, Euler-Maruyama, torchsde, scipy, the
  adaptive SDE solver) integrate any term, on any SDE.
- the **diffusion problem**: a `LinearSDE` with a `ScoreModel`. The exponential integrators, EDM's samplers, the
  ancestral and reverse-diffusion steps and the correctors read its coefficients (alpha, sigma, log-SNR) and the
  model's predictions directly; its `reverse_sde` and `probability_flow` are the terms built from it.

Every solver declares the problem type it needs (`Solver.needs`); `Solver.problem(sde, score)` builds it, and a
diffusion solver on an SDE that is not linear fails there, before any work, with one message.

A **chart** maps the sampling time t and state x to the variable s and state y a solver integrates in. It is the
identity for almost every solver; the embedded Runge-Kutta pairs and adaptive DPM-Solver step in the log-SNR
lambda, and the loop converts once at the start and once at the end.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ..reverse import ReverseSDE
from ..score import ScoreModel
from ..sde import SDE, LinearSDE
from ..tensors import Time, append_dims


@runtime_checkable
class Term(Protocol):
    """A generic SDE or ODE `dx = drift(x, t) dt + diffusion(t) dW`, in its own time variable.

    Optional attributes read by the loop: `chart` (the variable it is written in; identity if absent) and `nfe`
    (function evaluations so far, for an NFE budget).
    """

    def drift(self, x: torch.Tensor, t: Time) -> torch.Tensor: ...

    def diffusion(self, t: Time) -> torch.Tensor: ...


class DiffusionProblem:
    """A `LinearSDE` with a `ScoreModel`: what the solvers that read alpha, sigma, log-SNR and the model's
    predictions need. `reverse_sde` and `probability_flow` are the terms with the same score, built once.
    `denoise` is True when the solve ends with Tweedie's denoising evaluation at its last time (`sample(...,
    denoise=True)` sets it), which a multistep solver with `count_denoise` counts as its final, first-order step.
    """

    def __init__(self, sde: SDE, score: ScoreModel, solver: str = "this solver", chart: Chart | None = None):
        if not isinstance(sde, LinearSDE):
            raise ValueError(
                f"{solver} needs a LinearSDE (it reads alpha, sigma and log_snr); got {type(sde).__name__}. On any "
                "SDE use a solver of generic terms: euler_maruyama, euler, heun, rk4, torchsde, scipy, adaptive_sde, "
                "or bosh3 / dopri5 / tsit5 with variable='t'"
            )
        if score.sde is not sde:
            raise ValueError(f"the score model was built for {score.sde!r}, not for {sde!r}")
        self.sde, self.score, self.chart = sde, score, chart or IDENTITY
        self.denoise = False
        self.reverse_sde = ReverseSDE(sde, score)
        self.probability_flow = self.reverse_sde.probability_flow()

    @property
    def nfe(self) -> int:
        return self.score.nfe

    def __repr__(self):
        return f"DiffusionProblem({self.sde!r}, {self.score!r})"


class Chart:
    """The identity chart: a solver integrates in t itself, with y = x."""

    def variable(self, t: torch.Tensor) -> torch.Tensor:
        """s(t)."""
        return t

    def time(self, s: torch.Tensor) -> torch.Tensor:
        """t(s), the inverse of `variable`."""
        return s

    def state(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """y(x, t)."""
        return x

    def sample(self, y: torch.Tensor, s: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """x(y, s); `t`, when known exactly (the end of the solve), saves the round trip t(s)."""
        return y


IDENTITY = Chart()


class LogSNRChart(Chart):
    """s = lambda = log_snr(t), increasing as t decreases. With `normalise`, y = x / sqrt(alpha^2 + sigma^2): the state
    of the variance-preserving process with the same log-SNR (x itself for VP), which stays O(1) at every noise
    level for unit-scale data."""

    def __init__(self, sde: LinearSDE, normalise: bool = False):
        self.sde, self.normalise = sde, normalise

    def variable(self, t):
        return self.sde.log_snr(t)

    def time(self, s):
        return self.sde.t_of_log_snr(s).to(s.dtype).clamp(0.0, self.sde.T)

    def _scale(self, t: torch.Tensor) -> torch.Tensor:
        return (self.sde.alpha(t) ** 2 + self.sde.sigma(t) ** 2).sqrt()

    def state(self, x, t):
        return x / append_dims(self._scale(t.to(x.dtype)), x.ndim) if self.normalise else x

    def sample(self, y, s, t=None):
        if not self.normalise:
            return y
        t = self.time(s) if t is None else t
        return append_dims(self._scale(t.to(y.dtype)), y.ndim) * y


def chart_of(problem) -> Chart:
    """The chart a problem is written in (the identity unless it says otherwise)."""
    return getattr(problem, "chart", IDENTITY)
