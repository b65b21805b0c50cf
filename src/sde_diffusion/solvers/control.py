"""Step-size control for adaptive solvers, kept apart from the solvers that use it (as in diffrax).

An adaptive solver takes a step of size h with two methods of orders p and q < p, and hands the difference
(its error estimate) to the controller, which scales it by the mixed tolerance

    ratio = || error / (atol + rtol * max(|x_new|, |x_old|)) ||        (RMS norm, or max norm)

accepts the step when ratio <= 1, and proposes the next size h * clip(safety * ratio^(-exponent), fmin, fmax),
with exponent 1 / (q + 1) by default (Hairer, Norsett & Wanner, Solving ODEs I, II.4). The norm is taken over
the whole batch, or per sample (`per_sample=True`) so that each sample keeps its own step size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepController:
    """Integral step-size controller with a mixed relative/absolute tolerance."""

    rtol: float = 1e-3
    atol: float = 1e-3
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 5.0
    norm: str = "rms"
    per_sample: bool = False
    exponent: float | None = None

    def __post_init__(self):
        if not (self.rtol > 0 or self.atol > 0) or self.rtol < 0 or self.atol < 0:
            raise ValueError(f"tolerances must be non-negative and not both zero; got rtol={self.rtol}, atol={self.atol}")
        if self.norm not in ("rms", "max"):
            raise ValueError(f"norm must be 'rms' or 'max'; got {self.norm!r}")
        if not 0 < self.factor_min <= 1 <= self.factor_max:
            raise ValueError("need 0 < factor_min <= 1 <= factor_max")

    def error_ratio(self, error: torch.Tensor, x_new: torch.Tensor, x_old: torch.Tensor) -> torch.Tensor:
        """The scaled error norm: a scalar, or one value per sample with `per_sample`."""
        scale = self.atol + self.rtol * torch.maximum(x_new.abs(), x_old.abs())
        scaled = (error / scale).reshape(len(error), -1) if self.per_sample else (error / scale).reshape(1, -1)
        ratio = scaled.pow(2).mean(dim=1).sqrt() if self.norm == "rms" else scaled.abs().amax(dim=1)
        return ratio if self.per_sample else ratio[0]

    def propose(self, h: torch.Tensor, ratio: torch.Tensor, error_order: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(accept, h_next): accept where ratio <= 1; the next step size from the error's order q."""
        exponent = self.exponent if self.exponent is not None else 1.0 / (error_order + 1)
        factor = self.safety * ratio.clamp_min(1e-10) ** (-exponent)
        return ratio <= 1.0, h * factor.clamp(self.factor_min, self.factor_max)
