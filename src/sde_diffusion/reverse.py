"""The reverse-time SDE and its probability-flow ODE.

Anderson (1982), in the form of Song et al. (2021) and the seeds: the forward SDE `dx = f dt + g dW` is reversed by

    dx = [f(x, t) - g(t)^2 score(x, t)] dt + g(t) dW_bar,      run from t = T down to 0,

and shares its marginals with the deterministic probability-flow ODE

    dx = [f(x, t) - g(t)^2 score(x, t) / 2] dt.

Both are written in forward time `t`; a step from `t` to `t_next < t` has `dt = t_next - t < 0`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .score import ScoreModel
from .sde import SDE
from .tensors import Time, append_dims, as_time


class ReverseSDE:
    """The reverse-time SDE of `sde` driven by a score model; `probability_flow()` gives the ODE."""

    def __init__(self, sde: SDE, score: ScoreModel | Callable, probability_flow: bool = False):
        if not isinstance(score, ScoreModel):
            score = ScoreModel(score, sde, prediction="score")
        elif score.sde is not sde:
            raise ValueError(f"the score model was built for {score.sde!r}, not for {sde!r}")
        self.sde, self.score, self.is_probability_flow = sde, score, probability_flow
        self._score_weight = 0.5 if probability_flow else 1.0

    @property
    def T(self) -> float:
        return self.sde.T

    @property
    def nfe(self) -> int:
        """The score model's evaluations so far (read by the solver loop for an NFE budget)."""
        return self.score.nfe

    def drift(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """f(x, t) - g(t)^2 score(x, t) (halved for the probability flow)."""
        t = as_time(t, x)
        g2 = append_dims(self.sde.g2(t), x.ndim)
        return self.sde.drift(x, t) - self._score_weight * g2 * self.score.score(x, t)

    def diffusion(self, t: Time) -> torch.Tensor:
        """g(t), or zero for the probability flow."""
        g = self.sde.diffusion(t)
        return torch.zeros_like(g) if self.is_probability_flow else g

    def probability_flow(self) -> ReverseSDE:
        """The ODE `dx = [f - g^2 score / 2] dt` with the same marginals."""
        return ReverseSDE(self.sde, self.score, probability_flow=True)

    def __repr__(self):
        kind = "ProbabilityFlowODE" if self.is_probability_flow else "ReverseSDE"
        return f"{kind}({self.sde!r})"
