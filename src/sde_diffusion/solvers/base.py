"""The solver interface: a solver is a step (after diffrax's `AbstractSolver`).

    state = solver.init(problem, y0, times)
    y_next, error, state = solver.step(problem, y, s, s_next, state, generator)

`problem` is what the solver declared it needs (`needs`: a generic `Term` or the `DiffusionProblem`, see
`problems.py`), built by `solver.problem(sde, score)`. `times` is the grid for a fixed-step solve, or the two end
points for an adaptive one, in the solver's variable s (t itself unless the problem's chart says otherwise). `s` and
`s_next` are 0-dim tensors, or `(n,)` tensors when an adaptive controller gives each sample its own step; then `y`
and the state hold only the n samples being stepped. `error` is None, or for a solver with an embedded estimate the
difference of its two solutions, which the step-size controller judges.

The state is a small dataclass per solver (multistep history, a cached evaluation, the grid's coefficients), or
None. The returned state is the one to continue from if the step is accepted; after a rejection the loop continues
from the state it passed in, so a step may fill caches in that state that stay true of the current point (the drift
there, the Brownian path ahead) and a retry does not pay for them again. Solvers without an error estimate are
never rejected and may update their state in place.

Choosing the times is not the solver's business (`control.py`), nor is walking them (`loop.py`).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..noise import SeededNoise
from ..reverse import ReverseSDE
from ..score import ScoreModel
from ..sde import SDE
from .grids import TimeGrid
from .loop import NonFiniteError, SampleResult, check_finite, integrate  # noqa: F401  (the loop's names, re-exported)
from .problems import DiffusionProblem, Term


def per_sample(**kwargs):
    """A dataclass field with one row per sample: it follows its samples when only some of them are stepped."""
    return field(metadata={"per_sample": True}, **kwargs)


@dataclass
class SolverState:
    """Base of the states of adaptive solvers: fields declared with `per_sample()` (tensors of batch rows, or
    objects with the same `select` / `where` / `merge` methods) are subset and written back by the loop when a
    controller steps only some samples."""

    def _per_sample_fields(self):
        return [f.name for f in dataclasses.fields(self) if f.metadata.get("per_sample")]

    def select(self, idx: torch.Tensor) -> SolverState:
        """The state of the samples `idx`."""
        rows = {}
        for name in self._per_sample_fields():
            value = getattr(self, name)
            rows[name] = value[idx] if isinstance(value, torch.Tensor) else (None if value is None else value.select(idx))
        return dataclasses.replace(self, **rows)

    def where(self, keep: torch.Tensor, other: SolverState) -> SolverState:
        """This state for the samples where `keep`, `other` elsewhere (both of the same samples)."""
        rows = {}
        for name in self._per_sample_fields():
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is None:
                continue
            if isinstance(mine, torch.Tensor):
                rows[name] = torch.where(keep.reshape(keep.shape + (1,) * (mine.ndim - 1)), mine, theirs)
            else:
                rows[name] = mine.where(keep, theirs)
        return dataclasses.replace(self, **rows)

    def merge(self, idx: torch.Tensor, part: SolverState) -> SolverState:
        """This state with the samples `idx` replaced by `part`."""
        rows = {}
        for name in self._per_sample_fields():
            mine, theirs = getattr(self, name), getattr(part, name)
            if theirs is None:
                rows[name] = mine
            elif isinstance(theirs, torch.Tensor):
                mine = mine.clone()
                mine[idx] = theirs
                rows[name] = mine
            else:
                rows[name] = mine.merge(idx, theirs)
        return dataclasses.replace(self, **rows)

    def stats(self) -> dict[str, Any]:
        """What the solver reports in `SampleResult.stats` beyond the loop's own counts."""
        return {}


@dataclass
class GridState:
    """The state of a fixed-step solver that needs to know where it is on the grid: the step index and the grid."""

    times: torch.Tensor
    index: int = 0

    @property
    def n_steps(self) -> int:
        return len(self.times) - 1

    @property
    def is_last(self) -> bool:
        return self.index == self.n_steps - 1


class Solver:
    """Base class. Subclasses set `name`, their flags, and implement `step` (and `init` when they keep a state).

    Flags (class attributes, or read-only properties where an option decides them; mypy cannot express a read-only
    class attribute, so those properties carry `# type: ignore[override]`):
    `order` (of convergence), `stochastic` (draws noise), `adaptive` (returns an error estimate and chooses its own
    steps with `controller()`: only the grid's end points are used), `needs` (the problem type: `Term` or
    `DiffusionProblem`). `default_grid` and `default_steps` are what `sample` uses when the call names none.
    """

    name: ClassVar[str] = ""
    order: float = 1.0  # a class attribute, or set per instance where an option decides it
    stochastic: ClassVar[bool] = False
    adaptive: ClassVar[bool] = False
    needs: ClassVar[type] = Term
    default_grid: ClassVar[str | TimeGrid | None] = None  # None: the SDE's own default_grid
    default_steps: ClassVar[int] = 100
    # False when a step couples the samples of a batch beyond a per-sample controller (one system for the batch,
    # or a state that cannot follow single samples): `sample(..., seeds=...)` then solves each sample alone.
    separable: ClassVar[bool] = True

    @property
    def probability_flow(self) -> bool:
        """True when the solver integrates the probability-flow ODE (deterministic), False for the reverse SDE."""
        return not self.stochastic

    def problem(self, sde: SDE, score: ScoreModel):
        """What `step` integrates for `score` on `sde`: the diffusion problem, or the term the solver steps (the
        reverse SDE when stochastic, else its probability flow). Fails here, before any work, when the SDE does
        not support it."""
        if self.needs is DiffusionProblem:
            return DiffusionProblem(sde, score, self.name or type(self).__name__)
        return ReverseSDE(sde, score, probability_flow=not self.stochastic)

    def init(self, problem, y0: torch.Tensor, times: torch.Tensor):
        """The state before the first step (None for a stateless solver)."""
        return None

    def step(self, problem, y: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor, state, generator: torch.Generator | None):
        """Advance y from s to s_next: (y_next, error estimate or None, state)."""
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    def controller(self, times: torch.Tensor):
        """The step-size controller `sample` uses with this solver: the fixed grid `times`; an adaptive solver's own
        controller (built from its options) between the grid's end points."""
        from .control import FixedGrid

        return FixedGrid(times)

    # Adaptive solvers also declare the order of their error estimate and what an attempt costs, for the controller.
    error_order: ClassVar[float | None] = None
    evaluations_per_step: ClassVar[int] = 1

    def attempt_cost(self, state) -> int:
        """Function evaluations the next attempt from `state` will make (fewer than `evaluations_per_step` when the
        state caches one); the NFE budget counts with it."""
        return self.evaluations_per_step

    def error_scale(self, y: torch.Tensor, y_next: torch.Tensor, state, state_next) -> tuple[torch.Tensor, torch.Tensor]:
        """The two states whose size scales the error tolerance, rtol max(|a|, |b|): the step's end and start."""
        return y_next, y

    def solve(self, score: ScoreModel, x_T: torch.Tensor, times: torch.Tensor, generator: torch.Generator | None = None,
              *, keep_trajectory: bool = False, progress: bool = False) -> SampleResult:
        """Integrate the problem of `score` from x_T along `times` (the grid, or its end points for an adaptive
        solver) with this solver's own controller: `sample` without its defaults and checks."""
        return integrate(self, self.problem(score.sde, score), x_T, self.controller(times), generator,
                         keep_trajectory=keep_trajectory, progress=progress)

    def options(self) -> dict[str, Any]:
        """The solver's options, as given to its constructor (for logs and configs)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p not in ("self", "args", "kwargs")]
        return {p: getattr(self, p) for p in names if hasattr(self, p)}

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def gaussian_noise(x: torch.Tensor, generator: torch.Generator | SeededNoise | None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn from `generator`: one stream for the batch, or with a `SeededNoise`
    row i from sample i's own generator. `rows` (a boolean mask) names the samples that use the draw: per-sample
    noise draws only for those (zeros elsewhere); a single generator draws for all rows, as it always has."""
    if isinstance(generator, SeededNoise):
        return generator.randn(x.shape, dtype=x.dtype, device=x.device, rows=rows)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return value
