"""The solver interface.

A solver integrates the reverse SDE (or its probability flow) of a score model from `x_T` along a decreasing
time grid. Fixed-grid solvers write one `step`; the shared loop in `Solver.integrate` walks the grid with any
term (drift and diffusion), checks every step for NaN/inf and keeps the trajectory; `Solver.solve` builds the
term from a score model and reads the NFE off its wrapper. Adaptive solvers, which choose their own times,
override `integrate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..reverse import ReverseSDE
from ..score import ScoreModel


class NonFiniteError(FloatingPointError):
    """NaN or inf appeared in the state while sampling."""


@dataclass
class SampleResult:
    """What a solve returns: the sample, the NFE the wrapper counted, the times visited, optional trajectory."""

    x: torch.Tensor
    nfe: int
    times: torch.Tensor
    trajectory: list[torch.Tensor] | None = None
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepContext:
    """Per-solve information a step may read: its index, the whole grid, and room for a multistep history."""

    index: int
    times: torch.Tensor
    history: dict[str, Any] = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return len(self.times) - 1

    @property
    def is_last(self) -> bool:
        return self.index == self.n_steps - 1


class Solver:
    """Base class. Subclasses set `name`, `order`, `stochastic`, and implement `step` (or override `solve`).

    `probability_flow = True` makes the shared loop hand `step` the probability-flow ODE instead of the SDE.
    """

    name: ClassVar[str] = ""
    order: ClassVar[float] = 1.0
    stochastic: ClassVar[bool] = False
    probability_flow: ClassVar[bool] = False
    default_grid: ClassVar[str | None] = None  # None: the SDE's own default_grid
    default_steps: ClassVar[int] = 100
    adaptive: ClassVar[bool] = False  # chooses its own steps between the grid's endpoints

    def step(
        self,
        term: ReverseSDE,
        x: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        context: StepContext,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Advance x from t to t_next < t."""
        raise NotImplementedError(f"{type(self).__name__} must implement step() or override solve()")

    def solve(
        self,
        score: ScoreModel,
        x_T: torch.Tensor,
        times: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        keep_trajectory: bool = False,
        progress: bool = False,
    ) -> SampleResult:
        """Integrate the reverse SDE (or probability flow) of `score` along `times`; NFE read off the wrapper."""
        term = ReverseSDE(score.sde, score, probability_flow=self.probability_flow)
        nfe_start = score.nfe
        result = self.integrate(term, x_T, times, generator, keep_trajectory=keep_trajectory, progress=progress)
        result.nfe = score.nfe - nfe_start
        return result

    def integrate(
        self,
        term,
        x: torch.Tensor,
        times: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        keep_trajectory: bool = False,
        progress: bool = False,
    ) -> SampleResult:
        """Walk the grid `times` (its first entry the time of `x`) with any term that has `drift(x, t)` and
        `diffusion(t)`: a ReverseSDE, its probability flow, or an augmented ODE such as the likelihood's.
        Adaptive solvers use only the endpoints. `nfe` is left at 0: `solve` fills in what the wrapper counted."""
        context = StepContext(0, times)
        trajectory = [x] if keep_trajectory else None
        steps = range(len(times) - 1)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=self.name or type(self).__name__, leave=False)
        for i in steps:
            context.index = i
            x = self.step(term, x, times[i], times[i + 1], context, generator)
            check_finite(x, self, i, len(times) - 1, times[i], times[i + 1])
            if keep_trajectory:
                trajectory.append(x)
        return SampleResult(x, 0, times, trajectory)

    def options(self) -> dict[str, Any]:
        """The solver's options, as given to its constructor (for logs and configs)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def check_finite(x: torch.Tensor, solver: Solver, index: int, n_steps: int, t, t_next) -> None:
    """Raise NonFiniteError naming the step and times when x holds NaN or inf."""
    if not torch.isfinite(x).all():
        raise NonFiniteError(
            f"{solver.name or type(solver).__name__}: NaN or inf after step {index + 1} of {n_steps} "
            f"(t = {float(t):.6g} -> {float(t_next):.6g}). Check the score network's output at that time, "
            "use more steps, or stop earlier (a larger t_min)."
        )


def gaussian_noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn from `generator`."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
