"""Langevin correctors and the predictor-corrector sampler (Song et al. 2021, Algorithms 2-5).

Langevin dynamics `dx = score dt + sqrt(2) dW` leaves p_t invariant (the seeds' "identity"); a corrector runs a
few of its steps at a fixed t to pull the sample back onto p_t after each predictor step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..noise import SeededNoise
from ..registry import build
from ..tensors import append_dims
from .base import Solver, gaussian_noise
from .problems import DiffusionProblem


class Corrector:
    """Base class: `correct(problem, x, t, t_next, generator)` runs `steps` Langevin updates at time t of the
    diffusion problem (its score, and its SDE's alpha and sigma)."""

    name = ""

    def __init__(self, snr: float = 0.16, steps: int = 1):
        if not snr > 0:
            raise ValueError(f"snr must be positive; got {snr}")
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"corrector steps must be a non-negative integer; got {steps!r}")
        self.snr, self.steps = float(snr), steps

    def step_size(self, problem, x, t, t_next, grad, noise, per_sample: bool) -> torch.Tensor:
        """The Langevin step eps: a scalar, or one per sample (`per_sample`: under per-sample noise, where no sample
        may depend on its batch mates)."""
        raise NotImplementedError

    def correct(self, problem: DiffusionProblem, x, t, t_next, generator):
        per_sample = isinstance(generator, SeededNoise)
        for _ in range(self.steps):
            grad = problem.score.score(x, t)
            noise = gaussian_noise(x, generator)
            eps = append_dims(self.step_size(problem, x, t, t_next, grad, noise, per_sample), x.ndim)
            x = x + eps * grad + (2 * eps).sqrt() * noise
        return x

    @staticmethod
    def _alpha(problem, t, t_next) -> torch.Tensor:
        # The DDPM alpha_i = 1 - beta_i of the step, in the general form (alpha(t) / alpha(t_next))^2: 1 for VE.
        return (problem.sde.alpha(t) / problem.sde.alpha(t_next)) ** 2

    def __repr__(self):
        return f"{type(self).__name__}(snr={self.snr}, steps={self.steps})"


class Langevin(Corrector):
    """Langevin corrector (Song et al. 2021, Alg. 5): step eps = 2 alpha_i (snr ||z|| / ||score||)^2. With a single
    generator the norms are averaged over the batch, as in the reference implementation (score_sde). Under
    per-sample noise (`sample(..., seeds=...)`) no sample may depend on its batch mates, and one sample's own norms
    make the step heavy-tailed in low dimension (a score near zero at a mode's centre gives a huge step: on the 2-D
    eight Gaussians with the exact score, mean log p -6.5 against the data's -1.69). So there the norms are replaced
    by their expectations, E||z||^2 = D and E||score||^2 <= D / sigma(t)^2 (score = -E[z | x_t] / sigma), which gives
    the same step for every sample, eps = 2 alpha_i (snr sigma(t))^2, at most the batch rule's on average."""

    name = "langevin"

    def step_size(self, problem, x, t, t_next, grad, noise, per_sample):
        if per_sample:
            sigma = problem.sde.sigma(t) * torch.ones(len(x), dtype=x.dtype, device=x.device)
            return 2 * self._alpha(problem, t, t_next) * (self.snr * sigma) ** 2
        grad_norm = grad.reshape(len(grad), -1).norm(dim=-1).mean()
        noise_norm = noise.reshape(len(noise), -1).norm(dim=-1).mean()
        return 2 * self._alpha(problem, t, t_next) * (self.snr * noise_norm / grad_norm) ** 2


class AnnealedLangevin(Corrector):
    """Annealed Langevin dynamics (Song & Ermon 2019): step eps = 2 alpha_i (snr sigma(t))^2."""

    name = "annealed_langevin"

    def step_size(self, problem, x, t, t_next, grad, noise, per_sample):
        return 2 * self._alpha(problem, t, t_next) * (self.snr * problem.sde.sigma(t)) ** 2


class NoCorrector(Corrector):
    name = "none"

    def __init__(self, snr: float = 0.16, steps: int = 0):
        super().__init__(snr, 0)


CORRECTORS: dict[str, type[Corrector]] = {c.name: c for c in (Langevin, AnnealedLangevin, NoCorrector)}


@dataclass
class PCState:
    """The predictor's problem (the diffusion problem, or the term it steps) and its state."""

    predictor_problem: Any
    predictor_state: Any


class PredictorCorrector(Solver):
    """At each grid time: `corrector.steps` Langevin updates at t, then one predictor step to t_next. Any fixed-step
    predictor: a diffusion solver steps the problem itself, a solver of terms the reverse SDE or probability flow."""

    name = "pc"
    needs = DiffusionProblem
    default_steps = 1000

    def __init__(self, predictor: Solver | str = "reverse_diffusion", corrector: Corrector | str = "langevin", snr: float = 0.16, corrector_steps: int = 1):
        from . import get  # the registry imports this module

        self.predictor = get(predictor) if isinstance(predictor, str) else predictor
        if self.predictor.adaptive:
            raise ValueError(f"the predictor must be a fixed-step solver; {self.predictor.name} chooses its own steps")
        self.corrector: Corrector = (
            build("corrector", CORRECTORS, corrector, dict(snr=snr, steps=corrector_steps)) if isinstance(corrector, str) else corrector
        )

    @property
    def order(self) -> float:  # type: ignore[override]  # a read-only flag (see Solver)
        return self.predictor.order

    @property
    def stochastic(self) -> bool:  # type: ignore[override]  # a read-only flag (see Solver)
        return self.corrector.steps > 0 or self.predictor.stochastic

    def init(self, problem, x, times):
        predictor_problem = self.predictor.problem(problem.sde, problem.score)
        return PCState(predictor_problem, self.predictor.init(predictor_problem, x, times))

    def step(self, problem, x, t, t_next, state: PCState, generator):
        x = self.corrector.correct(problem, x, t, t_next, generator)
        x, _, state.predictor_state = self.predictor.step(state.predictor_problem, x, t, t_next, state.predictor_state, generator)
        return x, None, state
