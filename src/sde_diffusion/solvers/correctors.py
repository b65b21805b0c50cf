"""Langevin correctors and the predictor-corrector sampler (Song et al. 2021, Algorithms 2-5).

Langevin dynamics `dx = score dt + sqrt(2) dW` leaves p_t invariant (the seeds' "identity"); a corrector runs a
few of its steps at a fixed t to pull the sample back onto p_t after each predictor step.
"""

from __future__ import annotations

import torch

from ..registry import build
from ..tensors import append_dims
from .base import Solver, StepContext, gaussian_noise


class Corrector:
    """Base class: `correct(term, x, t, t_next, generator)` runs `steps` Langevin updates at time t."""

    name = ""

    def __init__(self, snr: float = 0.16, steps: int = 1):
        if not snr > 0:
            raise ValueError(f"snr must be positive; got {snr}")
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"corrector steps must be a non-negative integer; got {steps!r}")
        self.snr, self.steps = float(snr), steps

    def step_size(self, term, x, t, t_next, grad, noise) -> torch.Tensor:
        raise NotImplementedError

    def correct(self, term, x, t, t_next, generator):
        for _ in range(self.steps):
            grad = term.score.score(x, t)
            noise = gaussian_noise(x, generator)
            eps = append_dims(self.step_size(term, x, t, t_next, grad, noise), x.ndim)
            x = x + eps * grad + (2 * eps).sqrt() * noise
        return x

    @staticmethod
    def _alpha(term, t, t_next) -> torch.Tensor:
        # The DDPM alpha_i = 1 - beta_i of the step, in the general form (alpha(t) / alpha(t_next))^2: 1 for VE.
        sde = term.sde
        if hasattr(sde, "alpha"):
            return (sde.alpha(t) / sde.alpha(t_next)) ** 2
        return torch.ones_like(t)

    def __repr__(self):
        return f"{type(self).__name__}(snr={self.snr}, steps={self.steps})"


class Langevin(Corrector):
    """Langevin corrector (Song et al. 2021, Alg. 5): step eps = 2 alpha_i (snr ||z|| / ||score||)^2, norms averaged
    over the batch as in the reference implementation."""

    name = "langevin"

    def step_size(self, term, x, t, t_next, grad, noise):
        grad_norm = grad.reshape(len(grad), -1).norm(dim=-1).mean()
        noise_norm = noise.reshape(len(noise), -1).norm(dim=-1).mean()
        return 2 * self._alpha(term, t, t_next) * (self.snr * noise_norm / grad_norm) ** 2


class AnnealedLangevin(Corrector):
    """Annealed Langevin dynamics (Song & Ermon 2019): step eps = 2 alpha_i (snr sigma(t))^2."""

    name = "annealed_langevin"

    def step_size(self, term, x, t, t_next, grad, noise):
        return 2 * self._alpha(term, t, t_next) * (self.snr * term.sde.sigma(t)) ** 2


class NoCorrector(Corrector):
    name = "none"

    def __init__(self, snr: float = 0.16, steps: int = 0):
        super().__init__(snr, 0)


CORRECTORS: dict[str, type[Corrector]] = {c.name: c for c in (Langevin, AnnealedLangevin, NoCorrector)}


class PredictorCorrector(Solver):
    """At each grid time: `corrector.steps` Langevin updates at t, then one predictor step to t_next."""

    name = "pc"
    stochastic = True
    default_steps = 1000

    def __init__(self, predictor: Solver | str = "reverse_diffusion", corrector: Corrector | str = "langevin", snr: float = 0.16, corrector_steps: int = 1):
        from . import get  # the registry imports this module

        self.predictor = get(predictor) if isinstance(predictor, str) else predictor
        if isinstance(corrector, str):
            corrector = build("corrector", CORRECTORS, corrector, dict(snr=snr, steps=corrector_steps))
        self.corrector = corrector
        self.probability_flow = self.predictor.probability_flow
        self.order = self.predictor.order

    def step(self, term, x, t, t_next, context: StepContext, generator):
        x = self.corrector.correct(term, x, t, t_next, generator)
        return self.predictor.step(term, x, t, t_next, context, generator)
