"""Score models: a network (or any callable) plus the parameterisation of its output.

For a linear SDE, `x_t = alpha x_0 + sigma eps`, and the four usual network targets determine each other
(the score-noise equivalence of the seeds, Ho et al. 2020, Salimans & Ho 2022):

    score = -eps / sigma,          x0 = (x - sigma eps) / alpha,
    v = alpha eps - sigma x0,      eps = (alpha v + sigma x) / (alpha^2 + sigma^2),
    flow u = eps - x0,             eps = (x + alpha u) / (alpha + sigma),  x0 = (x - sigma u) / (alpha + sigma).

"v" is the velocity of Salimans & Ho (2022); "flow" is the velocity of flow matching and rectified flow (Lipman et
al. 2023; Liu et al. 2023; SD3, Flux), d x_t / dt for alpha = 1 - t, sigma = t: a different quantity.

`ScoreModel` answers any of them and counts every network evaluation (NFE): solvers never count by formula.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from .sde import SDE, LinearSDE
from .tensors import Time, append_dims, batch_time, check_time_range

Prediction = Literal["eps", "x0", "v", "score", "flow"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v", "score", "flow")
Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def eps_and_x0(raw: torch.Tensor, prediction: str, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
    """(eps, x0) implied by a network output `raw` of the given kind, from `x = alpha x0 + sigma eps`."""
    if prediction == "eps":
        return raw, (x - sigma * raw) / alpha
    if prediction == "x0":
        return (x - alpha * raw) / sigma, raw
    if prediction == "score":
        return -sigma * raw, (x + sigma**2 * raw) / alpha
    if prediction == "v":
        norm = alpha**2 + sigma**2
        return (alpha * raw + sigma * x) / norm, (alpha * x - sigma * raw) / norm
    if prediction == "flow":
        return (x + alpha * raw) / (alpha + sigma), (x - sigma * raw) / (alpha + sigma)
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")


def target_from(eps: torch.Tensor, x0: torch.Tensor, target: str, alpha: torch.Tensor, sigma: torch.Tensor):
    """The quantity `target` (eps, x0, v or score) given the noise and the clean data: also the training target."""
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    if target == "score":
        return -eps / sigma
    if target == "v":
        return alpha * eps - sigma * x0
    if target == "flow":
        return eps - x0
    raise ValueError(f"unknown prediction {target!r}; choose one of {PREDICTIONS}")


class ScoreModel:
    """Wraps `network(x, t)`, whose output is a `prediction` of eps, x0, v, the score or the flow velocity, for a
    forward SDE.

    `score`, `eps`, `x0` and `v` each make one network evaluation, counted in `nfe`. `t` is a scalar or a
    `(batch,)` tensor in `[0, T]`; the network always receives a `(batch,)` tensor.
    """

    def __init__(self, network: Network, sde: SDE, prediction: Prediction = "eps", *, check_time: bool = True):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an sde_diffusion.SDE (e.g. VPSDE()); got {type(sde).__name__} {sde!r}")
        if prediction != "score" and not isinstance(sde, LinearSDE):
            raise ValueError(
                f"prediction={prediction!r} needs a LinearSDE (alpha and sigma relate it to the score); "
                f"{type(sde).__name__} supports only prediction='score'"
            )
        if not callable(network):
            raise TypeError(f"network must be callable as network(x, t); got {type(network).__name__}")
        self.network, self.sde, self.prediction, self.check_time = network, sde, prediction, check_time
        self.nfe = 0

    def reset_nfe(self) -> None:
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """The raw network output at (x, t), validated; one function evaluation."""
        t = batch_time(t, x)
        if self.check_time:
            check_time_range(t, self.sde.T)
        out = self.network(x, t)
        self.nfe += 1
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"the network's output must have the shape of x, {tuple(x.shape)}, "
                f"to be read as a {self.prediction!r} prediction; got {got}"
            )
        return out

    def _coefficients(self, sde: LinearSDE, x: torch.Tensor, t: Time):
        t = batch_time(t, x)
        return append_dims(sde.alpha(t), x.ndim), append_dims(sde.sigma(t), x.ndim)

    def _pair(self, sde: LinearSDE, x, t):
        alpha, sigma = self._coefficients(sde, x, t)
        return eps_and_x0(self(x, t), self.prediction, x, alpha, sigma), alpha, sigma

    def _predict(self, x: torch.Tensor, t: Time, target: str) -> torch.Tensor:
        if target == self.prediction:
            return self(x, t)
        sde = self.sde
        if not isinstance(sde, LinearSDE):
            raise ValueError(f"{target!r} is defined only for a LinearSDE; this model gives only the score")
        (eps, x0), alpha, sigma = self._pair(sde, x, t)
        return target_from(eps, x0, target, alpha, sigma)

    def score(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """grad_x log p_t(x) = -eps / sigma."""
        return self._predict(x, t, "score")

    def eps(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """The noise prediction eps = -sigma score."""
        return self._predict(x, t, "eps")

    def x0(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """The denoised estimate E[x_0 | x_t] (Tweedie) = (x - sigma eps) / alpha."""
        return self._predict(x, t, "x0")

    def v(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """The velocity v = alpha eps - sigma x0."""
        return self._predict(x, t, "v")

    def flow(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """The flow-matching velocity eps - x0."""
        return self._predict(x, t, "flow")

    def __repr__(self):
        return f"ScoreModel({self.network!r}, {self.sde!r}, prediction={self.prediction!r})"
